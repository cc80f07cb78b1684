"""The Zarr feature store: content-addressed keys, crash-safe chunked CXR writes, EHR groups.

Layout under ``features_dir()``:

- ``cxr/<encoder key>.zarr``: rows addressed by ``dicom_id``; arrays ``embedding`` (rows x d),
  ``dicom_id``, ``status``, ``reason`` and ``committed`` (one marker per row chunk). Rows are
  planned in whole chunks (the row count is a multiple of the chunk size; unused rows have an empty
  ``dicom_id``), each chunk's data is written once and only then its marker is set, so a committed
  chunk never changes and a reader ignores any chunk whose marker is not set.
- ``ehr/<cohort fingerprint>-<variable-set hash>.zarr``: ``stay_id``, ``values`` (n x 48 x F),
  ``observed``, ``summary``; written whole into a temporary directory and renamed.

Writers hold an exclusive ``fcntl.flock`` on ``<store>.lock``; readers need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.config import features_dir
from harness.errors import InputError
from harness.io import atomic_directory

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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cxr_store_path(key: str) -> Path:
    return features_dir() / "cxr" / f"{key}.zarr"


def variable_set_hash(variables: Sequence[str]) -> str:
    payload = json.dumps({"recipe": EHR_RECIPE_VERSION, "variables": list(variables)})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ehr_store_key(cohort: Any) -> str:
    return f"{str(cohort.fingerprint)[:16]}-{variable_set_hash(cohort.variables)}"


def ehr_store_path(cohort: Any) -> Path:
    return features_dir() / "ehr" / f"{ehr_store_key(_as_cohort(cohort))}.zarr"


def _as_cohort(cohort: Any) -> Any:
    if isinstance(cohort, str):
        from harness.cohort import load_cohort

        return load_cohort(cohort)
    return cohort


def encoder_key_for(name: str) -> str:
    """Store key of encoder ``name`` (loads its weights to digest them; runs no forward pass)."""
    from harness.encode.registry import encoder_key, get_encoder

    return encoder_key(get_encoder(name))


@contextlib.contextmanager
def store_lock(store: Path, *, wait_log_after: float = 0.0) -> Iterator[None]:
    """Exclusive inter-process lock for writing ``store`` (a sibling ``.lock`` file)."""
    lock_path = store.with_name(store.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s is being written by another process; waiting for it", store)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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

    def __exit__(self, *exc: object) -> None:
        assert self._lock is not None
        self._lock.__exit__(*exc)

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
        attrs = dict(g.attrs)
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
            arr = g[name]
            if arr.shape[0] != planned:
                log.info("%s: discarding an unfinished plan for %s", self.path, name)
                arr.resize((planned, *arr.shape[1:]))
        markers = g["committed"]
        if markers.shape[0] != planned // self.chunk_rows:
            markers.resize((planned // self.chunk_rows,))
        for partial in self.path.rglob("*.partial"):  # temp files of a write cut short
            partial.unlink(missing_ok=True)

    # -- planning --------------------------------------------------------------------------
    @property
    def planned_rows(self) -> int:
        return int(self.group.attrs["planned_rows"])

    def dicom_ids(self) -> np.ndarray:
        n = self.planned_rows
        return np.asarray(self.group["dicom_id"][:n], dtype=object) if n else np.array([], object)

    def committed(self) -> np.ndarray:
        m = self.group["committed"]
        return (np.asarray(m[:]) == 1) if m.shape[0] else np.zeros(0, bool)

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
        # The plan becomes real only when planned_rows is updated (one atomic metadata write).
        g.attrs.update({"planned_rows": end, "sources": sources})
        return len(new)

    def pending_chunks(self) -> list[tuple[int, list[str]]]:
        """Uncommitted chunks and the ids of their rows (empty string = unused row)."""
        ids = self.dicom_ids()
        done = self.committed()
        c = self.chunk_rows
        return [
            (k, [str(x) for x in ids[k * c : (k + 1) * c]]) for k in np.flatnonzero(~done).tolist()
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
        g["embedding"][rows] = np.ascontiguousarray(embedding, dtype=np.float32)
        g["status"][rows] = np.asarray(status, dtype=str)
        g["reason"][rows] = np.asarray(reason, dtype=str)
        g["committed"][k] = 1

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

    Raises:
        InputError: the store for ``encoder_key`` does not exist (run ``harness encode``).
    """
    g = _open_cxr_group(encoder_key)
    attrs = dict(g.attrs)
    c = int(attrs["chunk_rows"])
    planned = int(attrs["planned_rows"])
    # Markers first: a chunk committed after this read is simply reported as not encoded.
    done = np.asarray(g["committed"][:]) == 1 if planned else np.zeros(0, bool)
    stored_ids = np.asarray(g["dicom_id"][:planned], dtype=object) if planned else []
    row_of = {str(d): i for i, d in enumerate(stored_ids) if d}
    n = len(dicom_ids)
    dim = int(attrs["dim"])
    status = np.full(n, STATUS_NOT_ENCODED, dtype=object)
    rows = np.full(n, -1, dtype=np.int64)
    for i, d in enumerate(dicom_ids):
        if d is None or (isinstance(d, float) and np.isnan(d)) or d == "":
            status[i] = STATUS_NO_IMAGE
            continue
        r = row_of.get(str(d))
        if r is not None and done[r // c]:
            rows[i] = r
    have = rows >= 0
    embedding = np.zeros((n, dim), dtype=np.float32)
    if have.any():
        uniq, inverse = np.unique(rows[have], return_inverse=True)
        stat = np.asarray(g["status"].get_orthogonal_selection(uniq), dtype=object)
        status[have] = stat[inverse]
        emb = np.asarray(g["embedding"].get_orthogonal_selection((uniq, slice(None))))
        embedding[have] = emb[inverse]
    ok = status == STATUS_OK
    embedding[~ok] = 0.0
    return CXRFeatures(
        embedding=embedding, ok=ok, status=status.astype(str), attrs={**attrs, "key": encoder_key}
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


def ehr_store_exists(cohort: Any) -> bool:
    return (ehr_store_path(cohort) / "zarr.json").is_file()


def write_ehr(cohort: Any, features: EHRFeatures, attrs: dict[str, Any]) -> Path:
    """Write the EHR group for ``cohort`` atomically (no-op if another writer finished first)."""
    import zarr

    path = ehr_store_path(cohort)
    with store_lock(path):
        if (path / "zarr.json").is_file():
            return path
        with atomic_directory(path) as tmp:
            g = zarr.open_group(str(tmp), mode="w")
            n, t, f = features.values.shape
            rows = max(1, min(n, 1024))
            g.create_array("stay_id", data=features.stay_id.astype(np.int64), chunks=(rows,))
            g.create_array(
                "values", data=features.values.astype(np.float32), chunks=(rows, t, max(f, 1))
            )
            g.create_array(
                "observed", data=features.observed.astype(bool), chunks=(rows, t, max(f, 1))
            )
            g.create_array(
                "summary",
                data=features.summary.astype(np.float32),
                chunks=(rows, max(features.summary.shape[1], 1)),
            )
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
                }
            )
    return path


def read_ehr(cohort: Any) -> EHRFeatures:
    """Load the EHR features of ``cohort`` (a loaded cohort or a cohort name).

    Raises:
        InputError: the features were not computed yet (run ``harness encode``).
    """
    import zarr

    cohort = _as_cohort(cohort)
    path = ehr_store_path(cohort)
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"no EHR features for cohort {getattr(cohort, 'name', '?')!r} "
            f"(fingerprint {str(cohort.fingerprint)[:16]})",
            path=path,
            fix="run `harness encode` for this cohort first",
        )
    t0 = time.perf_counter()
    g = zarr.open_group(str(path), mode="r")
    attrs = dict(g.attrs)
    out = EHRFeatures(
        stay_id=np.asarray(g["stay_id"][:], dtype=np.int64),
        values=np.asarray(g["values"][:], dtype=np.float32),
        observed=np.asarray(g["observed"][:], dtype=bool),
        summary=np.asarray(g["summary"][:], dtype=np.float32),
        variables=list(attrs["variables"]),
        summary_names=list(attrs["summary_names"]),
        key=str(attrs["key"]),
        attrs=attrs,
    )
    log.info("read EHR features %s in %.2fs", path.name, time.perf_counter() - t0)
    return out
