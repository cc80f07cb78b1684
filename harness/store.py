"""The Zarr feature store: content-addressed keys, crash-safe chunked CXR writes, EHR groups.

Layout under ``features_dir()``:

- ``cxr/<encoder key>.zarr``: rows addressed by ``dicom_id``; arrays ``embedding`` (rows x d),
  ``dicom_id``, ``status``, ``reason`` and ``committed`` (one marker per row chunk). Rows are
  planned in whole chunks (the row count is a multiple of the chunk size; unused rows have an empty
  ``dicom_id``), each chunk's data is written once and only then its marker is set, so a committed
  chunk never changes and a reader ignores any chunk whose marker is not set.
- ``ehr/<cohort fingerprint>-<variable-set hash>.zarr``: ``stay_id``, ``values`` (n x 48 x F),
  ``observed``, ``summary``; written whole into a temporary directory and renamed.

Every row block carries a sha256 per array in the group attribute ``chunk_checksums`` (CXR: per
chunk, the ``dicom_id`` digest recorded when the rows are planned, the others just before the
commit marker is set; EHR: per block of ``chunk_rows`` rows, at write time). Readers verify every
block they read against it: a missing chunk (which Zarr would silently read as its fill value) or
a damaged one raises :class:`InputError` naming the store, the array and the rows, with the fix
``harness encode --repair``. Stores written before checksums existed get weaker checks (a
committed chunk with ids but no statuses, or usable rows with an all-zero embedding block) and a
warning; ``--repair`` records their checksums.

Writers hold an exclusive ``fcntl.flock`` on ``<store>.lock``; readers need no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import __version__
from harness.config import features_dir
from harness.errors import InputError
from harness.io import atomic_directory

if TYPE_CHECKING:  # pragma: no cover
    import zarr

    from harness.cohort.load import Cohort

log = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1
#: Rows per chunk of the CXR store (and per commit). Fixed when a store is created.
CXR_CHUNK_ROWS = 256
#: Version of the EHR tensor/summary recipe; part of the EHR store key.
EHR_RECIPE_VERSION = 1

STATUS_OK = "ok"
STATUS_MISSING_FILE = "missing_file"
STATUS_DECODE_ERROR = "decode_error"
STATUS_NOT_ENCODED = "not_encoded"
STATUS_NO_IMAGE = "no_image"
STATUS_VALUES = {
    STATUS_OK: "encoded",
    STATUS_MISSING_FILE: "the image file does not exist under the cohort's cxr_root",
    STATUS_DECODE_ERROR: "the file exists but could not be decoded or preprocessed",
    STATUS_NOT_ENCODED: "(reader only) the image is not in this store or its chunk is uncommitted",
    STATUS_NO_IMAGE: "(reader only) the stay has no linked image",
}


#: Group attribute with the per-block sha256 of every array (see the module docstring).
CHECKSUMS_ATTR = "chunk_checksums"
#: Arrays of a CXR chunk covered by its checksum record.
CXR_ARRAYS = ("dicom_id", "embedding", "status", "reason")
REPAIR_FIX = (
    "run `harness encode --repair` for the cohort (with the same --encoder): it re-encodes the "
    "damaged rows"
)


def _repair_fix(attrs: dict[str, Any]) -> str:
    encoder = attrs.get("encoder")
    if not encoder:
        return REPAIR_FIX
    return (
        f"run `harness encode --repair --encoder {encoder}` for the cohort that uses these images: "
        "it re-encodes the damaged rows"
    )


EHR_REPAIR_FIX = "run `harness encode --repair` for this cohort: it rewrites its EHR features"
_legacy_warned: set[str] = set()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cxr_store_path(key: str) -> Path:
    return features_dir() / "cxr" / f"{key}.zarr"


def variable_set_hash(variables: Sequence[str]) -> str:
    payload = json.dumps({"recipe": EHR_RECIPE_VERSION, "variables": list(variables)})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ehr_store_key(cohort: Cohort) -> str:
    """Store key of a cohort's EHR features: its fingerprint and the variable-set hash."""
    return f"{str(cohort.fingerprint)[:16]}-{variable_set_hash(cohort.variables)}"


def ehr_store_path(cohort: Cohort | str) -> Path:
    """Directory of the EHR group of ``cohort`` (a loaded cohort or a cohort name)."""
    return features_dir() / "ehr" / f"{ehr_store_key(_as_cohort(cohort))}.zarr"


def _as_cohort(cohort: Cohort | str) -> Cohort:
    """A loaded cohort: ``cohort`` itself, or the newest build of the cohort it names."""
    if isinstance(cohort, str):
        from harness.cohort import load_cohort

        return load_cohort(cohort)
    return cohort


def _array(group: zarr.Group, name: str, path: Path) -> zarr.Array:
    """Member ``name`` of a store group, which the store layout says is an array.

    Raises:
        InputError: it is a sub-group (the directory was not written by the harness).
    """
    import zarr

    member = group[name]
    if not isinstance(member, zarr.Array):
        raise InputError(f"{name!r} is a group, not an array", path=path, fix=REPAIR_FIX)
    return member


@contextlib.contextmanager
def store_lock(store: Path, *, wait_log_after: float = 0.0) -> Iterator[None]:
    """Exclusive inter-process lock for writing ``store`` (a sibling ``.lock`` file)."""
    from harness.io import exclusive_lock

    def waiting(target: Path) -> None:
        log.warning("%s is being written by another process; waiting for it", target)

    with exclusive_lock(store, log_wait=waiting):
        yield


# --------------------------------------------------------------------------------------------
# Integrity: per-block checksums
# --------------------------------------------------------------------------------------------


def block_digest(block: Any) -> str:
    """sha256 of one block of an array as read back: strings as a JSON list, numbers as
    little-endian C-order bytes (so a block read from the store hashes like the one written)."""
    arr = np.asarray(block)
    if arr.dtype.kind in "OUST":
        payload = json.dumps([str(x) for x in arr.reshape(-1)], ensure_ascii=False).encode()
    else:
        payload = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class ChunkProblem:
    """One block of one array that is missing, unreadable or fails its checksum."""

    array: str
    chunk: int
    start: int
    stop: int
    what: str

    def describe(self) -> str:
        return (
            f"array {self.array!r} rows {self.start}-{self.stop - 1} (chunk {self.chunk}): "
            f"{self.what}"
        )


def _chunk_file(store: Path, array: str, k: int, ndim: int) -> Path:
    """File of row chunk ``k`` (default Zarr v3 key encoding, one chunk across other axes)."""
    return store / array / "c" / str(k) / Path(*(["0"] * (ndim - 1)))


def integrity_error(store: Path, problems: Sequence[ChunkProblem], *, fix: str) -> InputError:
    """The error readers raise for damaged blocks: store, arrays and rows, at most six listed."""
    shown = "; ".join(p.describe() for p in problems[:6])
    more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
    return InputError(
        f"feature store damaged: {len(problems)} block(s) missing or failing verification: "
        f"{shown}{more}",
        path=store,
        fix=fix,
    )


def _warn_legacy(store: Path, checked: str) -> None:
    if str(store) not in _legacy_warned:
        _legacy_warned.add(str(store))
        log.warning(
            "%s was written before chunk checksums existed: %s; run `harness encode --repair` "
            "once to give it checksums",
            store,
            checked,
        )


class _Chunks:
    """Verified block reads of a CXR group (reader and writer share it)."""

    def __init__(self, group: Any, path: Path):
        self.g = group
        self.path = path
        attrs = dict(group.attrs)
        self.c = int(attrs["chunk_rows"])
        self.planned = int(attrs["planned_rows"])
        self.n_chunks = self.planned // self.c
        self.sums: dict[str, dict[str, str]] = dict(attrs.get(CHECKSUMS_ATTR) or {})

    def problem(self, array: str, k: int, what: str) -> ChunkProblem:
        return ChunkProblem(array, k, k * self.c, (k + 1) * self.c, what)

    def expected(self, array: str, k: int) -> str | None:
        return (self.sums.get(str(k)) or {}).get(array)

    def has_sums(self, k: int) -> bool:
        entry = self.sums.get(str(k)) or {}
        return all(a in entry for a in CXR_ARRAYS)

    def _read(self, array: str, ks: Sequence[int]) -> tuple[dict[int, np.ndarray], list]:
        """Whole chunks ``ks`` of ``array`` (one read; chunk by chunk when one is unreadable)."""
        arr = self.g[array]
        c = self.c
        out: dict[int, np.ndarray] = {}
        problems: list[ChunkProblem] = []
        if not len(ks):
            return out, problems
        try:
            if list(ks) == list(range(ks[0], ks[-1] + 1)):
                data = np.asarray(arr[ks[0] * c : (ks[-1] + 1) * c])
            else:
                rows = np.concatenate([np.arange(k * c, (k + 1) * c) for k in ks])
                sel = (rows,) + (slice(None),) * (arr.ndim - 1)
                data = np.asarray(arr.get_orthogonal_selection(sel))
            for i, k in enumerate(ks):
                out[k] = data[i * c : (i + 1) * c]
            return out, problems
        except Exception:  # a damaged chunk somewhere: find which
            pass
        for k in ks:
            try:
                out[k] = np.asarray(arr[k * c : (k + 1) * c])
            except Exception as exc:  # undecodable bytes
                problems.append(self.problem(array, k, f"unreadable ({type(exc).__name__}: {exc})"))
        return out, problems

    def check(self, array: str, k: int, block: np.ndarray) -> ChunkProblem | None:
        """The problem of a block read back, or None (no checksum recorded: None)."""
        expected = self.expected(array, k)
        if expected is None or block_digest(block) == expected:
            return None
        ndim = self.g[array].ndim
        absent = not _chunk_file(self.path, array, k, ndim).exists()
        return self.problem(
            array, k, "missing (chunk file absent)" if absent else "checksum mismatch"
        )

    def markers(self) -> tuple[np.ndarray, list[ChunkProblem]]:
        """Commit markers (True = committed); unreadable ones are False and reported."""
        if not self.n_chunks:
            return np.zeros(0, bool), []
        m = self.g["committed"]
        try:
            return np.asarray(m[: self.n_chunks]) == 1, []
        except Exception:
            pass
        done = np.zeros(self.n_chunks, bool)
        problems = []
        for k in range(self.n_chunks):
            try:
                done[k] = int(np.asarray(m[k])) == 1
            except Exception as exc:
                problems.append(
                    ChunkProblem(
                        "committed",
                        k,
                        k * self.c,
                        (k + 1) * self.c,
                        f"unreadable commit marker ({type(exc).__name__})",
                    )
                )
        return done, problems

    def ids(self) -> tuple[np.ndarray, dict[int, ChunkProblem]]:
        """The planned ``dicom_id`` column ('' where a chunk is unreadable or fails its digest)
        and the problem of each such chunk."""
        blocks, problems = self._read("dicom_id", list(range(self.n_chunks)))
        bad = {p.chunk: p for p in problems}
        out = np.full(self.planned, "", dtype=object)
        for k, block in blocks.items():
            block = np.asarray([str(x) for x in block], dtype=object)
            p = self.check("dicom_id", k, block)
            if p is None and self.expected("dicom_id", k) is None and not any(block):
                p = self.problem("dicom_id", k, "missing (no image id in the chunk)")
            if p is not None:
                bad[k] = p
                continue
            out[k * self.c : (k + 1) * self.c] = block
        return out, bad

    def verify_chunk(self, k: int, ids: np.ndarray | None, arrays: Sequence[str]):
        """Read and verify chunk ``k`` of ``arrays``; returns (blocks, problems)."""
        blocks: dict[str, np.ndarray] = {}
        problems: list[ChunkProblem] = []
        for array in arrays:
            got, bad = self._read(array, [k])
            problems += bad
            if k in got:
                blocks[array] = got[k]
                p = self.check(array, k, got[k])
                if p is not None:
                    problems.append(p)
        if not self.has_sums(k) and ids is not None:
            problems += self._legacy_problems(k, ids[k * self.c : (k + 1) * self.c], blocks)
        return blocks, problems

    def _legacy_problems(self, k: int, ids: np.ndarray, blocks: dict[str, np.ndarray]) -> list:
        """Checks of a chunk without checksums: what a missing chunk file reads back as."""
        problems = []
        status = blocks.get("status")
        used = np.asarray([bool(d) for d in ids])
        if status is not None:
            st = np.asarray([str(x) for x in status], dtype=object)
            if (used & (st == "")).any():
                problems.append(
                    self.problem("status", k, "missing (rows with an image id have no status)")
                )
            emb = blocks.get("embedding")
            if emb is not None and (st == STATUS_OK).any() and not np.any(emb):
                problems.append(self.problem("embedding", k, "missing (encoded rows are all zero)"))
        return problems


# --------------------------------------------------------------------------------------------
# CXR store
# --------------------------------------------------------------------------------------------


@dataclass
class CXRFeatures:
    """Image features for a list of image ids, aligned with the request (zeros where not ok)."""

    embedding: np.ndarray
    ok: np.ndarray
    status: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RepairResult:
    """What :meth:`CXRStoreWriter.repair` found and did (chunk indices)."""

    checked: int = 0
    damaged: list[ChunkProblem] = field(default_factory=list)
    reencode: list[int] = field(default_factory=list)
    restored_ids: list[int] = field(default_factory=list)
    restored_markers: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    left_owners: dict[int, list[str]] = field(default_factory=dict)
    adopted: int = 0


def _restore_ids(view: _Chunks, k: int, ids: np.ndarray, pool: list[str]) -> np.ndarray | None:
    """The ids of chunk ``k`` rebuilt from candidate ids, accepted only if they match the digest
    recorded at planning time. A plan stores its new ids sorted, so the chunk holds a run of
    consecutive candidates between the last id of the chunk before and the first of the next."""
    expected = view.expected("dicom_id", k)
    c = view.c
    if expected is None or not pool:
        return None
    prev = [d for d in ids[(k - 1) * c : k * c] if d] if k > 0 else []
    nxt = [d for d in ids[(k + 1) * c : (k + 2) * c] if d]
    lo, hi = (max(prev) if prev else None), (min(nxt) if nxt else None)
    bounded = [d for d in pool if (lo is None or d > lo) and (hi is None or d < hi)]
    for cands in (bounded, pool):
        if not cands or len(cands) > 64 * c:
            continue
        trials = [cands[i : i + c] for i in range(max(1, len(cands) - c + 1))]
        trials += [cands[:m] for m in range(1, min(c, len(cands)) + 1)]
        for t in trials:
            block = np.array([*t, *([""] * (c - len(t)))], dtype=object)
            if block_digest(block) == expected:
                return block
    return None


class CXRStoreWriter:
    """Writes one encoder's CXR group. Use as a context manager: it holds the store lock."""

    def __init__(
        self,
        key: str,
        *,
        dim: int,
        attrs: dict[str, Any],
        chunk_rows: int = CXR_CHUNK_ROWS,
        path: Path | None = None,
    ):
        self.key = key
        self.path = path or cxr_store_path(key)
        self.dim = int(dim)
        self.init_attrs = attrs
        self.chunk_rows = int(chunk_rows)
        self._lock: contextlib.AbstractContextManager[None] | None = None
        self.group: Any = None

    def __enter__(self) -> CXRStoreWriter:
        self._lock = store_lock(self.path)
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lock is not None
        self._lock.__exit__(exc_type, exc, tb)

    # -- opening and recovery ------------------------------------------------------------
    def _create(self) -> None:
        import zarr

        with atomic_directory(self.path) as tmp:
            g = zarr.open_group(str(tmp), mode="w")
            c = self.chunk_rows
            g.create_array("embedding", shape=(0, self.dim), chunks=(c, self.dim), dtype="float32")
            g.create_array("dicom_id", shape=(0,), chunks=(c,), dtype=str, fill_value="")
            g.create_array("status", shape=(0,), chunks=(c,), dtype=str, fill_value="")
            g.create_array("reason", shape=(0,), chunks=(c,), dtype=str, fill_value="")
            g.create_array("committed", shape=(0,), chunks=(1,), dtype="uint8", fill_value=0)
            g.attrs.update(
                {
                    **self.init_attrs,
                    "format": "harness.cxr_features",
                    "format_version": STORE_FORMAT_VERSION,
                    "harness_version": __version__,
                    "dim": self.dim,
                    "chunk_rows": c,
                    "planned_rows": 0,
                    "status_values": STATUS_VALUES,
                    "created_at": _now(),
                    "sources": [],
                }
            )

    def _open(self) -> None:
        import zarr

        if not (self.path / "zarr.json").is_file():
            self._create()
        g = zarr.open_group(str(self.path), mode="r+")
        attrs: dict[str, Any] = dict(g.attrs)
        if attrs.get("format") != "harness.cxr_features" or int(attrs.get("dim", -1)) != self.dim:
            raise InputError(
                f"not a CXR feature store for dim {self.dim} (attrs: format="
                f"{attrs.get('format')!r}, dim={attrs.get('dim')!r})",
                path=self.path,
                fix="delete this directory; it will be re-encoded",
            )
        self.chunk_rows = int(attrs["chunk_rows"])
        self.group = g
        planned = int(attrs["planned_rows"])
        # A run killed while planning leaves arrays longer than the recorded plan: drop the tail
        # (whole chunks, so no stale bytes survive) and plan again.
        for name in ("embedding", "dicom_id", "status", "reason"):
            arr = _array(g, name, self.path)
            if arr.shape[0] != planned:
                log.info("%s: discarding an unfinished plan for %s", self.path, name)
                arr.resize((planned, *arr.shape[1:]))
        markers = _array(g, "committed", self.path)
        if markers.shape[0] != planned // self.chunk_rows:
            markers.resize((planned // self.chunk_rows,))
        for partial in self.path.rglob("*.partial"):  # temp files of a write cut short
            partial.unlink(missing_ok=True)

    # -- planning --------------------------------------------------------------------------
    @property
    def planned_rows(self) -> int:
        return int(self.group.attrs["planned_rows"])

    def _view(self) -> _Chunks:
        return _Chunks(self.group, self.path)

    def dicom_ids(self) -> np.ndarray:
        """The planned ids ('' for unused rows and for chunks whose ids fail verification)."""
        return self._view().ids()[0] if self.planned_rows else np.array([], object)

    def committed(self) -> np.ndarray:
        return self._view().markers()[0]

    def _checksums(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in (self.group.attrs.get(CHECKSUMS_ATTR) or {}).items()}

    def plan(self, ids: Sequence[str], *, source: dict[str, Any] | None = None) -> int:
        """Reserve rows for the ids not yet planned (sorted, appended in whole chunks)."""
        known = set(self.dicom_ids().tolist())
        new = sorted({str(i) for i in ids if i} - known)
        if not new:
            return 0
        c = self.chunk_rows
        start = self.planned_rows
        n_chunks = -(-len(new) // c)
        end = start + n_chunks * c
        g = self.group
        for name in ("embedding", "dicom_id", "status", "reason"):
            g[name].resize((end, *g[name].shape[1:]))
        block = np.full(end - start, "", dtype=object)
        block[: len(new)] = new
        g["dicom_id"][start:end] = block.astype(str)
        g["committed"].resize((end // c,))
        sources = list(g.attrs.get("sources", []))
        if source:
            sources.append({**source, "rows": [start, start + len(new)], "planned_at": _now()})
        sums = self._checksums()
        for j in range(n_chunks):
            sums[str(start // c + j)] = {"dicom_id": block_digest(block[j * c : (j + 1) * c])}
        # The plan becomes real only when planned_rows is updated (one atomic metadata write).
        g.attrs.update({"planned_rows": end, "sources": sources, CHECKSUMS_ATTR: sums})
        return len(new)

    def pending_chunks(self) -> list[tuple[int, list[str]]]:
        """Uncommitted chunks and the ids of their rows (empty string = unused row); a chunk
        whose ids fail verification is left out (``repair`` restores or retires it)."""
        if not self.planned_rows:
            return []
        ids, bad = self._view().ids()
        done = self.committed()
        c = self.chunk_rows
        for k in sorted(set(bad) & set(np.flatnonzero(~done).tolist())):
            log.warning("%s: pending chunk %d has unreadable ids: skipped", self.path, k)
        return [
            (k, [str(x) for x in ids[k * c : (k + 1) * c]])
            for k in np.flatnonzero(~done).tolist()
            if k not in bad
        ]

    # -- committing --------------------------------------------------------------------------
    def write_chunk(
        self, k: int, embedding: np.ndarray, status: Sequence[str], reason: Sequence[str]
    ) -> None:
        """Write chunk ``k`` in full, then set its commit marker."""
        c = self.chunk_rows
        if embedding.shape != (c, self.dim):
            raise ValueError(f"chunk {k}: embedding shape {embedding.shape} != {(c, self.dim)}")
        rows = slice(k * c, (k + 1) * c)
        g = self.group
        emb = np.ascontiguousarray(embedding, dtype=np.float32)
        st, rs = np.asarray(status, dtype=str), np.asarray(reason, dtype=str)
        g["embedding"][rows] = emb
        g["status"][rows] = st
        g["reason"][rows] = rs
        # Checksums before the marker: a committed chunk always has them.
        sums = self._checksums()
        entry = sums.setdefault(str(k), {})
        if "dicom_id" not in entry:  # planned by a version without checksums
            entry["dicom_id"] = block_digest(g["dicom_id"][rows])
        entry.update(embedding=block_digest(emb), status=block_digest(st), reason=block_digest(rs))
        g.attrs.update({CHECKSUMS_ATTR: sums})
        g["committed"][k] = 1

    # -- verification and repair -------------------------------------------------------------
    def check(self, ids: Sequence[str]) -> None:
        """Verify the chunks holding ``ids`` (and every id chunk) like a reader would.

        Raises:
            InputError: a chunk is missing or damaged (the fix is ``harness encode --repair``).
        """
        if self.planned_rows:
            _read_verified(self.group, self.path, list(ids), key=self.key)

    def planned_by(self, k: int) -> list[str]:
        """``dataset/cohort`` of the runs whose plans put rows in chunk ``k``."""
        c = self.chunk_rows
        out = []
        for src in self.group.attrs.get("sources", []):
            a, b = src.get("rows", (0, 0))
            if a < (k + 1) * c and b > k * c:
                out.append(f"{src.get('dataset', '?')}/{src.get('cohort', '?')}")
        return sorted(set(out))

    def repair(self, known: set[str]) -> RepairResult:
        """Verify every chunk; make the damaged ones whose images are all in ``known`` pending
        again (the encode run then re-encodes them in place, giving the bytes of a clean run).

        Chunks whose ids cannot be read back get them back from ``known`` when a candidate list
        matches the recorded ids digest; otherwise the chunk is retired (its rows become unused
        and its images are planned again at the end). Damaged chunks holding images not in
        ``known`` are left as they are and reported. Chunks of a store written before checksums
        existed that pass the weaker checks get their checksums recorded.
        """
        g, c = self.group, self.chunk_rows
        res = RepairResult()
        view = self._view()
        done, marker_problems = view.markers()
        ids, id_problems = view.ids()
        res.damaged += marker_problems
        good = {str(d) for d in ids if d}
        for k, problem in sorted(id_problems.items()):
            res.damaged.append(problem)
            block = _restore_ids(view, k, ids, sorted(known - good))
            rows = slice(k * c, (k + 1) * c)
            if block is not None:
                g["dicom_id"][rows] = block.astype(str)
                ids[rows] = block
                good |= {d for d in block if d}
                res.restored_ids.append(k)
                done[k] = False  # re-encode below if its data fails too; else restore marker
            else:
                g["committed"][k] = 0
                empty = np.full(c, "", dtype=object)
                g["dicom_id"][rows] = empty.astype(str)
                sums = self._checksums()
                sums[str(k)] = {"dicom_id": block_digest(empty)}
                g.attrs.update({CHECKSUMS_ATTR: sums})
                ids[rows] = empty
                self.write_chunk(k, np.zeros((c, self.dim), np.float32), [""] * c, [""] * c)
                res.retired.append(k)
        view = self._view()
        sums = self._checksums()
        unreadable_markers = {p.chunk for p in marker_problems}
        for k in range(view.n_chunks):
            if k in res.retired:
                continue
            if not done[k] and not view.has_sums(k):
                if k in unreadable_markers:
                    g["committed"][k] = 0
                continue  # planned, never committed: the encode run does it
            res.checked += 1
            blocks, problems = view.verify_chunk(k, ids, ("embedding", "status", "reason"))
            if not done[k]:
                if not problems:  # data complete and verified: only its marker was lost
                    g["committed"][k] = 1
                    if k not in res.restored_ids:
                        res.restored_markers.append(k)
                    continue
                g["committed"][k] = 0
            if not problems:
                if not view.has_sums(k):
                    entry = {"dicom_id": block_digest(ids[k * c : (k + 1) * c])}
                    entry.update({a: block_digest(blocks[a]) for a in CXR_ARRAYS[1:]})
                    sums[str(k)] = entry
                    res.adopted += 1
                continue
            res.damaged += problems
            chunk_ids = [d for d in ids[k * c : (k + 1) * c] if d]
            if all(d in known for d in chunk_ids):
                g["committed"][k] = 0
                sums[str(k)] = {"dicom_id": block_digest(ids[k * c : (k + 1) * c])}
                res.reencode.append(k)
            else:
                res.left.append(k)
                res.left_owners[k] = self.planned_by(k)
        g.attrs.update({CHECKSUMS_ATTR: sums})
        return res

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> None:
        status = np.asarray(self.group["status"][: self.planned_rows], dtype=object)
        done = np.repeat(self.committed(), self.chunk_rows)[: len(status)]
        values, counts = np.unique(status[done & (status != "")], return_counts=True)
        self.group.attrs.update(
            {
                "status_counts": {str(v): int(n) for v, n in zip(values, counts, strict=True)},
                "updated_at": _now(),
                **(extra_attrs or {}),
            }
        )


def _open_cxr_group(key: str) -> Any:
    import zarr

    path = cxr_store_path(key)
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"no CXR features for encoder key {key!r}",
            path=path,
            fix="run `harness encode` (with the same --encoder) first",
        )
    return zarr.open_group(str(path), mode="r")


def read_cxr(encoder_key: str, dicom_ids: Sequence[str | None]) -> CXRFeatures:
    """Embeddings for ``dicom_ids`` (None / NaN = stay without image), aligned with the request.

    Every chunk read is verified against its checksum.

    Raises:
        InputError: the store for ``encoder_key`` does not exist (run ``harness encode``), or a
            chunk holding requested rows is missing or damaged (run ``harness encode --repair``).
    """
    g = _open_cxr_group(encoder_key)
    return _read_verified(g, cxr_store_path(encoder_key), dicom_ids, key=encoder_key)


def _is_no_image(d: Any) -> bool:
    return d is None or (isinstance(d, float) and np.isnan(d)) or d == ""


def _read_verified(
    g: Any, path: Path, dicom_ids: Sequence[str | None], *, key: str = ""
) -> CXRFeatures:
    attrs = dict(g.attrs)
    view = _Chunks(g, path)
    c = view.c
    # Markers first: a chunk committed after this read is simply reported as not encoded.
    done, marker_problems = view.markers()
    fix = _repair_fix(attrs)
    if marker_problems:
        raise integrity_error(path, marker_problems, fix=fix)
    stored_ids, id_problems = view.ids()
    row_of = {str(d): i for i, d in enumerate(stored_ids) if d}
    n = len(dicom_ids)
    dim = int(attrs["dim"])
    status = np.full(n, STATUS_NOT_ENCODED, dtype=object)
    rows = np.full(n, -1, dtype=np.int64)
    unknown = False
    for i, d in enumerate(dicom_ids):
        if _is_no_image(d):
            status[i] = STATUS_NO_IMAGE
            continue
        r = row_of.get(str(d))
        if r is None:
            unknown = True
        elif done[r // c]:
            rows[i] = r
    # An id not found may sit in a chunk whose ids cannot be read back.
    if id_problems and unknown:
        raise integrity_error(path, [p for _, p in sorted(id_problems.items())], fix=fix)
    have = rows >= 0
    embedding = np.zeros((n, dim), dtype=np.float32)
    touched = sorted({int(r) // c for r in rows[have]})
    if any(str(k) in view.sums and not view.has_sums(k) for k in touched):
        # committed after this reader loaded the attributes: take the checksums written since
        import zarr

        fresh: dict[str, Any] = dict(zarr.open_group(str(path), mode="r").attrs)
        view.sums = dict(fresh.get(CHECKSUMS_ATTR) or {})
    if touched:
        st_blocks, problems = view._read("status", touched)
        emb_blocks, bad = view._read("embedding", touched)
        problems += bad
        legacy = False
        for k in touched:
            for array, blocks in (("status", st_blocks), ("embedding", emb_blocks)):
                if k in blocks and (p := view.check(array, k, blocks[k])):
                    problems.append(p)
            if not view.has_sums(k):
                legacy = True
                if k in st_blocks and k in emb_blocks:
                    problems += view._legacy_problems(
                        k,
                        stored_ids[k * c : (k + 1) * c],
                        {"status": st_blocks[k], "embedding": emb_blocks[k]},
                    )
        if problems:
            raise integrity_error(path, problems, fix=fix)
        if legacy:
            _warn_legacy(path, "only chunks read back as empty can be detected")
        pos = {k: i for i, k in enumerate(touched)}
        st_all = np.concatenate(
            [np.asarray([str(x) for x in st_blocks[k]], object) for k in touched]
        )
        emb_all = np.concatenate([np.asarray(emb_blocks[k], np.float32) for k in touched])
        flat = np.asarray([pos[int(r) // c] * c + int(r) % c for r in rows[have]], dtype=np.int64)
        status[have] = st_all[flat]
        embedding[have] = emb_all[flat]
    ok = status == STATUS_OK
    embedding[~ok] = 0.0
    return CXRFeatures(
        embedding=embedding, ok=ok, status=status.astype(str), attrs={**attrs, "key": key}
    )


# --------------------------------------------------------------------------------------------
# EHR store
# --------------------------------------------------------------------------------------------


@dataclass
class EHRFeatures:
    """Dense hourly EHR tensors and per-variable summaries for every stay of a cohort."""

    stay_id: np.ndarray
    values: np.ndarray
    observed: np.ndarray
    summary: np.ndarray
    variables: list[str]
    summary_names: list[str]
    key: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


def ehr_store_exists(cohort: Cohort | str) -> bool:
    return (ehr_store_path(cohort) / "zarr.json").is_file()


def _row_blocks(data: np.ndarray, rows: int) -> list[str]:
    return [block_digest(data[i : i + rows]) for i in range(0, data.shape[0], rows)]


def write_ehr(
    cohort: Cohort, features: EHRFeatures, attrs: dict[str, Any], *, replace: bool = False
) -> Path:
    """Write the EHR group for ``cohort`` atomically (no-op if another writer finished first,
    unless ``replace``: then a damaged group is swapped for the new one)."""
    import zarr

    path = ehr_store_path(cohort)
    with store_lock(path):
        if (path / "zarr.json").is_file() and not replace:
            return path
        with atomic_directory(path, overwrite=replace) as tmp:
            g = zarr.open_group(str(tmp), mode="w")
            n, t, f = features.values.shape
            rows = max(1, min(n, 1024))
            arrays: dict[str, np.ndarray] = {
                "stay_id": features.stay_id.astype(np.int64),
                "values": features.values.astype(np.float32),
                "observed": features.observed.astype(bool),
                "summary": features.summary.astype(np.float32),
            }
            chunks = {
                "stay_id": (rows,),
                "values": (rows, t, max(f, 1)),
                "observed": (rows, t, max(f, 1)),
                "summary": (rows, max(features.summary.shape[1], 1)),
            }
            for name, data in arrays.items():
                g.create_array(name, data=data, chunks=chunks[name])
            g.attrs.update(
                {
                    **attrs,
                    "format": "harness.ehr_features",
                    "format_version": STORE_FORMAT_VERSION,
                    "recipe_version": EHR_RECIPE_VERSION,
                    "harness_version": __version__,
                    "variables": list(features.variables),
                    "summary_names": list(features.summary_names),
                    "key": ehr_store_key(cohort),
                    "created_at": _now(),
                    "chunk_rows": rows,
                    CHECKSUMS_ATTR: {k: _row_blocks(v, rows) for k, v in arrays.items()},
                }
            )
    return path


_EHR_ARRAYS = {"stay_id": np.int64, "values": np.float32, "observed": bool, "summary": np.float32}


def _read_ehr_group(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], list | None]:
    """The EHR arrays and attrs, with the problems found (None: the group has no checksums)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    attrs: dict[str, Any] = dict(g.attrs)
    sums = attrs.get(CHECKSUMS_ATTR)
    rows = int(attrs.get("chunk_rows") or 1024)
    problems: list[ChunkProblem] = []
    out: dict[str, np.ndarray] = {}
    for name, dtype in _EHR_ARRAYS.items():
        arr = _array(g, name, path)
        try:
            data = np.asarray(arr[:], dtype=dtype)
        except Exception:  # find the unreadable blocks
            data = np.zeros(arr.shape, dtype=dtype)
            for b, i in enumerate(range(0, arr.shape[0], rows)):
                try:
                    data[i : i + rows] = np.asarray(arr[i : i + rows], dtype=dtype)
                except Exception as exc:
                    stop = min(i + rows, arr.shape[0])
                    what = f"unreadable ({type(exc).__name__}: {exc})"
                    problems.append(ChunkProblem(name, b, i, stop, what))
        out[name] = data
        if sums is None:
            continue
        bad = {p.chunk for p in problems if p.array == name}
        for b, (expected, got) in enumerate(
            zip(sums.get(name, []), _row_blocks(data, rows), strict=False)
        ):
            if b not in bad and expected != got:
                i, stop = b * rows, min((b + 1) * rows, arr.shape[0])
                absent = not _chunk_file(path, name, b, arr.ndim).exists()
                what = "missing (chunk file absent)" if absent else "checksum mismatch"
                problems.append(ChunkProblem(name, b, i, stop, what))
        if len(sums.get(name, [])) != len(range(0, arr.shape[0], rows)):
            problems.append(ChunkProblem(name, 0, 0, arr.shape[0], "row count changed"))
    return out, attrs, (problems if sums is not None else None)


def verify_ehr(cohort: Cohort | str) -> list[ChunkProblem] | None:
    """Problems of the cohort's EHR group (empty: verified; None: written without checksums)."""
    return _read_ehr_group(ehr_store_path(_as_cohort(cohort)))[2]


def read_ehr(cohort: Cohort | str) -> EHRFeatures:
    """Load the EHR features of ``cohort`` (a loaded cohort or a cohort name), verified.

    Raises:
        InputError: the features were not computed yet (run ``harness encode``), or a block is
            missing or damaged (run ``harness encode --repair``).
    """
    cohort = _as_cohort(cohort)
    path = ehr_store_path(cohort)
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"no EHR features for cohort {cohort.name!r} "
            f"(fingerprint {str(cohort.fingerprint)[:16]})",
            path=path,
            fix="run `harness encode` for this cohort first",
        )
    t0 = time.perf_counter()
    arrays, attrs, problems = _read_ehr_group(path)
    if problems:
        raise integrity_error(path, problems, fix=EHR_REPAIR_FIX)
    if problems is None:
        _warn_legacy(path, "it cannot be verified")
    out = EHRFeatures(
        stay_id=arrays["stay_id"],
        values=arrays["values"],
        observed=arrays["observed"],
        summary=arrays["summary"],
        variables=list(attrs["variables"]),
        summary_names=list(attrs["summary_names"]),
        key=str(attrs["key"]),
        attrs=attrs,
    )
    log.info("read EHR features %s in %.2fs", path.name, time.perf_counter() - t0)
    return out
