"""The encode stage: encode every distinct linked image of a cohort into the CXR store and the
cohort's hourly EHR frame into the EHR store, resuming and reusing whatever is already committed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.config import resolve_device
from harness.errors import InputError
from harness.progress import bar, display
from harness.store import (
    CXR_CHUNK_ROWS,
    EHR_REPAIR_FIX,
    STATUS_OK,
    CXRStoreWriter,
    RepairResult,
    ehr_store_exists,
    ehr_store_key,
    ehr_store_path,
    integrity_error,
    read_cxr,
    verify_ehr,
    write_ehr,
)

if TYPE_CHECKING:  # pragma: no cover
    from harness.cohort.load import Cohort
    from harness.encode.encoders import Encoder

log = logging.getLogger(__name__)


@dataclass
class EncodeReport:
    """What one ``encode`` call did. ``forward_calls == 0`` means nothing was recomputed."""

    cxr_key: str
    ehr_key: str
    n_images: int
    n_encoded: int
    n_reused: int
    n_failed: int
    failures_by_reason: dict[str, int]
    seconds: float
    images_per_s: float
    forward_calls: int
    ehr_reused: bool = False
    n_pending_elsewhere: int = 0
    device: str = "cpu"
    encoder: str = ""
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    repair: RepairResult | None = None
    ehr_repaired: bool = False


@dataclass
class ImageRunStats:
    n_images: int
    n_encoded: int
    n_reused: int
    forward_calls: int
    seconds: float
    n_pending_elsewhere: int
    repair: RepairResult | None = None


def default_num_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class _ImageDataset:
    """Rows to encode: decode (reduced-size JPEG), gray -> RGB, transform; failures as data."""

    def __init__(self, items: list[tuple[int, Path | None]], transform: Any, min_size: int):
        self.items = items
        self.transform = transform
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, str, str]:
        from harness.data.images import (
            DECODE_ERROR,
            MISSING_FILE,
            ImageReadError,
            load_image,
            to_rgb,
        )

        row, path = self.items[i]
        if path is None:
            return row, None, MISSING_FILE, "no image path (cohort has no cxr_root)"
        try:
            img = to_rgb(load_image(path, min_size=self.min_size))
            return row, self.transform(img), STATUS_OK, ""
        except ImageReadError as exc:
            return row, None, exc.reason, str(exc).splitlines()[0]
        except Exception as exc:  # a transform failing on a degenerate image
            return row, None, DECODE_ERROR, f"{path}: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, Any, str, str]]) -> tuple[list[tuple[int, str, str]], Any]:
    import torch

    meta = [(row, status, reason) for row, _, status, reason in items]
    tensors = [x for _, x, _, _ in items if x is not None]
    return meta, (torch.stack(tensors) if tensors else None)


def _batches(
    loader: Any, encoder: Encoder, device: str
) -> Iterator[tuple[list[tuple[int, str, str]], np.ndarray | None]]:
    import torch

    cuda = device.startswith("cuda")
    for meta, x in loader:
        if x is None:
            yield meta, None
            continue
        x = x.to(device, non_blocking=cuda)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = encoder.forward(x)
        out = out.float().flatten(1).cpu().numpy()
        if out.shape[1] != encoder.dim:
            raise RuntimeError(
                f"encoder {encoder.name} returned dim {out.shape[1]} != {encoder.dim}"
            )
        yield meta, out


@dataclass(frozen=True)
class RayEncode:
    """``harness encode --executor ray``: Ray Data decodes on CPU tasks and encodes on a pool
    of ``concurrency`` actors with ``gpus`` each (fractions share a GPU); ``address`` as for
    :func:`harness.cluster.connect`."""

    address: str | None = None
    concurrency: int = 1
    gpus: float = 0.0


def _decode_batch(row: dict[str, Any], transform: Any, min_size: int) -> dict[str, Any]:
    """Ray Data's CPU stage: one batch of images decoded and transformed (failures as data)."""
    items = list(zip(row["rows"], row["paths"], strict=True))
    ds = _ImageDataset([(int(r), Path(p) if p else None) for r, p in items], transform, min_size)
    meta, x = _collate([ds[i] for i in range(len(ds))])
    buffer = io.BytesIO()  # as bytes: a batch whose images all failed has no tensor shape
    if x is not None:
        np.save(buffer, x.numpy(), allow_pickle=False)
    return {
        "rows": np.asarray([m[0] for m in meta], np.int64),
        "status": [m[1] for m in meta],
        "reason": [m[2] for m in meta],
        "x": buffer.getvalue(),
    }


class _EncodeActor:
    """Ray Data's encode stage: holds the encoder on its device, encodes one batch a call."""

    def __init__(self, encoder: Encoder, device: str | None, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.encoder, self.device = encoder, resolve_device(device)
        self.encoder.to(self.device)
        self.encoder.module.eval()
        if self.device.startswith("cuda"):
            self.encoder.module.to(memory_format=torch.channels_last)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import torch

        meta = list(zip(row["rows"].tolist(), row["status"], row["reason"], strict=True))
        raw = bytes(row["x"])
        x = torch.from_numpy(np.load(io.BytesIO(raw), allow_pickle=False)) if raw else None
        ((_, out),) = list(_batches([(meta, x)], self.encoder, self.device))
        if out is None:
            out = np.zeros((0, self.encoder.dim), np.float32)
        return {"rows": row["rows"], "status": row["status"], "reason": row["reason"], "out": out}


def _ray_batches(
    items: list[tuple[int, Path | None]],
    batches: list[list[int]],
    encoder: Encoder,
    device: str | None,
    ray_options: RayEncode,
) -> Iterator[tuple[list[tuple[int, str, str]], np.ndarray | None]]:
    """The same batches as the local DataLoader, decoded and encoded through Ray Data, in the
    order they finish (each carries its rows: the chunk buffers do not depend on the order)."""
    from harness.cluster import connect

    ray = connect(ray_options.address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the harness draws its own bar
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = [
        {"rows": [items[i][0] for i in b], "paths": [str(items[i][1] or "") for i in b]}
        for b in batches
    ]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map(_decode_batch, fn_kwargs={"transform": encoder.transform,
                                          "min_size": encoder.input_size}, num_cpus=1)  # fmt: skip
    threads = 1  # each actor reserves one CPU: more actors (--concurrency) for more cores
    ds = ds.map(
        _EncodeActor, fn_constructor_args=(encoder, device, threads),
        concurrency=ray_options.concurrency, num_gpus=ray_options.gpus or None,
        num_cpus=None if ray_options.gpus else 1,
    )  # fmt: skip
    from harness.data.images import MISSING_FILE

    paths = dict(items)
    for row in ds.iter_rows():
        meta = list(zip(np.asarray(row["rows"]).tolist(), row["status"], row["reason"],
                        strict=True))  # fmt: skip
        for r, status, _ in meta:  # never commit, for good, a file only the worker cannot see
            path = paths.get(r)
            if status == MISSING_FILE and path is not None and Path(path).is_file():
                raise InputError(
                    f"{path} exists here but not on the Ray node that decoded it",
                    fix="make the image tree visible at the same path on every node (a shared "
                    "file system), or encode with --executor local",
                )
        out = np.asarray(row["out"], np.float32)
        yield meta, (out if len(out) else None)
        encoder.forward_calls += int(len(out) > 0)


def encode_images(
    images: Mapping[str, Path | None],
    encoder: Encoder,
    *,
    key: str,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = False,
    chunk_rows: int = CXR_CHUNK_ROWS,
    source: dict[str, Any] | None = None,
    repair: bool = False,
    ray: RayEncode | None = None,
) -> ImageRunStats:
    """Encode the images (``dicom_id -> path``) not yet committed in store ``key``.

    The chunks holding these images are verified first: a missing or damaged one raises
    :class:`InputError` unless ``repair``, which re-encodes such chunks in place (see
    :meth:`CXRStoreWriter.repair`). With ``ray``, the same batches are decoded and encoded on
    a Ray cluster (:class:`RayEncode`) and written here through the same commit protocol.
    """
    import torch
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    device = resolve_device(device)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    attrs = {
        "encoder": encoder.name,
        "weights_digest": encoder.weights_digest,
        "preprocess_config": encoder.preprocess_config,
        "encoder_key": key,
    }
    forward_before = encoder.forward_calls
    with CXRStoreWriter(key, dim=encoder.dim, attrs=attrs, chunk_rows=chunk_rows) as store:
        repaired = None
        if repair:
            repaired = store.repair(set(images))
            _log_repair(store.path, repaired)
        else:
            store.check(list(images))
        committed_before = _committed_ids(store)
        n_reused = sum(1 for d in images if d in committed_before)
        store.plan(list(images), source=source)
        c = store.chunk_rows
        runnable: list[tuple[int, list[str]]] = []
        n_elsewhere = 0
        for k, ids in store.pending_chunks():
            if all(d == "" or d in images for d in ids):
                runnable.append((k, ids))
            else:  # planned by an interrupted run of another cohort; its paths are unknown here
                n_elsewhere += sum(1 for d in ids if d)
        if n_elsewhere:
            log.warning(
                "%d images planned by an interrupted run of another cohort remain pending; "
                "rerun `harness encode` for that cohort to finish them",
                n_elsewhere,
            )
        items = [
            (k * c + j, images[d]) for k, ids in runnable for j, d in enumerate(ids) if d != ""
        ]
        n_todo = len(items)
        if n_todo:
            log.info("encoding %d images with %s on %s", n_todo, encoder.name, device)
            batches: Iterator[tuple[list[tuple[int, str, str]], np.ndarray | None]]
            if ray is not None:
                batches = _ray_batches(
                    items, _chunk_batches(runnable, batch_size), encoder, device, ray
                )
            else:
                encoder.to(device)
                encoder.module.eval()
                if device.startswith("cuda"):
                    encoder.module.to(memory_format=torch.channels_last)
                ds = _ImageDataset(items, encoder.transform, encoder.input_size)
                loader: DataLoader[tuple[int, Any, str, str]] = DataLoader(
                    ds,  # type: ignore[arg-type]
                    batch_sampler=_chunk_batches(runnable, batch_size),
                    num_workers=workers,
                    collate_fn=_collate,
                    pin_memory=device.startswith("cuda"),
                    persistent_workers=False,
                    prefetch_factor=4 if workers else None,
                )
                batches = _batches(loader, encoder, device)
            remaining = {k: sum(1 for d in ids if d) for k, ids in runnable}
            buffers: dict[int, tuple[np.ndarray, list[str], list[str]]] = {}
            for k, _ in runnable:
                if remaining[k] == 0:
                    store.write_chunk(k, np.zeros((c, encoder.dim), np.float32), [""] * c, [""] * c)
            with _progress(progress, n_todo, encoder.name) as advance:
                for meta, out in batches:
                    j = 0
                    for row, status, reason in meta:
                        k, r = divmod(row, c)
                        emb, st, rs = buffers.setdefault(
                            k, (np.zeros((c, encoder.dim), np.float32), [""] * c, [""] * c)
                        )
                        if status == STATUS_OK:
                            assert out is not None
                            emb[r] = out[j]
                            j += 1
                        st[r], rs[r] = status, reason
                        remaining[k] -= 1
                        if remaining[k] == 0:
                            store.write_chunk(k, *buffers.pop(k))
                    advance(len(meta))
        store.finish()
    return ImageRunStats(
        n_images=len(images),
        n_encoded=sum(1 for _, ids in runnable for d in ids if d in images),
        n_reused=n_reused,
        forward_calls=encoder.forward_calls - forward_before,
        seconds=time.perf_counter() - t0,
        n_pending_elsewhere=n_elsewhere,
        repair=repaired,
    )


def _log_repair(path: Path, res: RepairResult) -> None:
    if not res.damaged:
        log.info("%s: %d committed chunks verified, none damaged", path, res.checked)
    for k in res.retired:
        log.warning(
            "%s: chunk %d had unrecoverable image ids: retired, its images re-planned", path, k
        )
    for k in res.left:
        owners = ", ".join(res.left_owners.get(k, [])) or "another cohort"
        log.warning(
            "%s: damaged chunk %d holds images of %s, not of this cohort: run "
            "`harness encode --repair` for that cohort",
            path,
            k,
            owners,
        )


def _chunk_batches(runnable: list[tuple[int, list[str]]], batch_size: int) -> list[list[int]]:
    """Batches of item positions that never span two chunks and start at each chunk's first
    image: a chunk is always encoded in the same batches (a clean run, a resumed one or a
    repair), so its bytes do not depend on which other chunks were encoded with it."""
    out: list[list[int]] = []
    pos = 0
    for _, ids in runnable:
        n = sum(1 for d in ids if d)
        out += [list(range(pos + i, pos + min(i + batch_size, n))) for i in range(0, n, batch_size)]
        pos += n
    return out


def _committed_ids(store: CXRStoreWriter) -> set[str]:
    ids = store.dicom_ids()
    if not len(ids):
        return set()
    done = np.repeat(store.committed(), store.chunk_rows)[: len(ids)]
    return {str(d) for d in ids[done] if d}


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` of the images bar (:mod:`harness.progress`): drawn in the display of the
    caller (the demo), or with ``enabled`` in one of its own (on stderr, on a terminal)."""
    with (
        display() if enabled else contextlib.nullcontext(),
        bar(f"encode {label}", total, unit="image") as images,
    ):
        yield images.advance


def cohort_images(cohort: Cohort) -> dict[str, Path | None]:
    """Distinct linked images of a cohort: ``dicom_id -> absolute path`` (None without cxr_root)."""
    stays: pd.DataFrame = cohort.stays
    if "dicom_id" not in stays.columns:
        raise InputError(
            "stays table has no 'dicom_id' column",
            path=cohort.path,
            fix="rebuild the cohort with `harness cohort build`",
        )
    linked = stays[stays["dicom_id"].notna() & (stays["dicom_id"].astype(str) != "")]
    if linked.empty:
        return {}
    if "cxr_path" not in linked.columns:
        raise InputError(
            "stays table has linked images but no 'cxr_path' column",
            path=cohort.path,
            fix="rebuild the cohort with `harness cohort build`",
        )
    root = cohort.cxr_root
    out: dict[str, Path | None] = {}
    for d, rel in zip(linked["dicom_id"].astype(str), linked["cxr_path"], strict=True):
        if d in out:
            continue
        out[d] = (Path(root) / str(rel)) if root is not None and isinstance(rel, str) else None
    return out


def encode_ehr(cohort: Cohort, *, repair: bool = False) -> tuple[str, bool]:
    """Write the cohort's EHR store unless it exists and verifies; returns (key, reused).

    A damaged existing store raises :class:`InputError` unless ``repair``, which rewrites it (as
    it does a store written before checksums existed).
    """
    from harness.encode.ehr import build_ehr_tensors

    key = ehr_store_key(cohort)
    replace = False
    if ehr_store_exists(cohort):
        problems = verify_ehr(cohort)
        if problems is not None and not problems:
            return key, True
        if not repair:
            if problems is None:  # no checksums: nothing more to check
                return key, True
            raise integrity_error(ehr_store_path(cohort), problems, fix=EHR_REPAIR_FIX)
        log.warning(
            "rewriting the EHR features %s (%s)", key, "damaged" if problems else "no checksums"
        )
        replace = True
    with bar(f"encode EHR {cohort.name}", 3) as steps:
        steps.doing("reading the hourly series")
        hourly = cohort.hourly()
        steps.advance()
        steps.doing("tensors and summaries")
        feats = build_ehr_tensors(
            hourly,
            cohort.stays["stay_id"].to_numpy(np.int64),
            cohort.variables,
            source=str(cohort.path),
        )
        steps.advance()
        steps.doing("writing")
        write_ehr(
            cohort,
            feats,
            {
                "cohort": cohort.name,
                "dataset": cohort.dataset,
                "cohort_fingerprint": str(cohort.fingerprint),
                "n_stays": int(len(feats.stay_id)),
            },
            replace=replace,
        )
        steps.advance()
        steps.doing(None)
    return key, False


def encode_cohort(
    cohort: Cohort,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = False,
    chunk_rows: int = CXR_CHUNK_ROWS,
    repair: bool = False,
    ray: RayEncode | None = None,
) -> EncodeReport:
    """Encode a loaded cohort with a built encoder (images, then EHR); ``repair`` re-encodes
    what is missing or damaged in the stores instead of raising."""
    from harness.encode.registry import encoder_key

    t0 = time.perf_counter()
    key = encoder_key(encoder)
    images = cohort_images(cohort)
    source = {
        "cohort": cohort.name,
        "dataset": cohort.dataset,
        "cohort_fingerprint": str(cohort.fingerprint),
    }
    stats = encode_images(
        images,
        encoder,
        key=key,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        chunk_rows=chunk_rows,
        source=source,
        repair=repair,
        ray=ray,
    )
    return _report(cohort, key, images, stats, device, encoder.name, repair=repair, t0=t0)


def _report(
    cohort: Cohort,
    key: str,
    images: Mapping[str, Path | None],
    stats: ImageRunStats,
    device: str | None,
    encoder_name: str,
    *,
    repair: bool,
    t0: float,
    feats: Any = None,
) -> EncodeReport:
    """Encode the cohort's EHR store if needed, read the image statuses back, and report."""
    ehr_existed = ehr_store_exists(cohort)
    ehr_key, ehr_reused = encode_ehr(cohort, repair=repair)
    ids = sorted(images)
    if feats is None:
        feats = read_cxr(key, ids) if ids else None
    failures: list[tuple[str, str, str]] = []
    counts: Counter[str] = Counter()
    if feats is not None:
        bad = np.flatnonzero(~feats.ok)
        counts.update(str(feats.status[i]) for i in bad)
        failures = [(ids[i], str(feats.status[i]), str(images[ids[i]])) for i in bad[:20]]
    seconds = time.perf_counter() - t0
    if stats.forward_calls == 0:
        log.info("all %d images already encoded under %s: no forward pass run", len(ids), key)
    return EncodeReport(
        cxr_key=key,
        ehr_key=ehr_key,
        n_images=len(ids),
        n_encoded=stats.n_encoded,
        n_reused=stats.n_reused,
        n_failed=sum(counts.values()),
        failures_by_reason=dict(counts),
        seconds=seconds,
        images_per_s=stats.n_encoded / stats.seconds if stats.n_encoded else 0.0,
        forward_calls=stats.forward_calls,
        ehr_reused=ehr_reused,
        n_pending_elsewhere=stats.n_pending_elsewhere,
        device=resolve_device(device) if stats.forward_calls else (device or "none"),
        encoder=encoder_name,
        failures=failures,
        repair=stats.repair,
        ehr_repaired=ehr_existed and not ehr_reused,
    )


def _nothing_to_encode(cohort: Cohort, encoder: str, device: str | None) -> EncodeReport | None:
    """The report of a run with nothing to encode, found without building the encoder (no
    torch import, no weights loaded): every linked image has a committed row (encoded or
    recorded as a failure) in verified chunks. None when anything is left (or the store cannot
    be read: the full run reports why)."""
    from harness.encode.registry import encoder_key_for
    from harness.store import STATUS_NOT_ENCODED

    t0 = time.perf_counter()
    key = encoder_key_for(encoder)
    images = cohort_images(cohort)
    ids = sorted(images)
    try:  # the store must exist even for a cohort without images (readers open it)
        feats = read_cxr(key, ids)
    except InputError:
        return None
    if bool((feats.status == STATUS_NOT_ENCODED).any()):
        return None
    stats = ImageRunStats(len(images), 0, len(images), 0, 0.0, 0)
    return _report(
        cohort, key, images, stats, device, encoder, repair=False, t0=t0,
        feats=feats if ids else None,
    )  # fmt: skip


def encode(
    cohort: str = "base",
    dataset: str | None = None,
    encoder: str = "default",
    *,
    cohort_path: Path | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | None = None,
    progress: bool = False,
    chunk_rows: int = CXR_CHUNK_ROWS,
    repair: bool = False,
    ray: RayEncode | None = None,
) -> EncodeReport:
    """Encode every distinct linked image of a cohort (CXR store) and its EHR store.

    Idempotent: images already committed under the encoder's key are reused without any forward
    pass; an interrupted run resumes at the first uncommitted chunk. Stored chunks are verified
    first; ``repair`` re-encodes missing or damaged ones instead of raising.
    """
    from harness.cohort import load_cohort
    from harness.encode.registry import get_encoder

    coh = load_cohort(cohort=cohort, dataset=dataset, path=cohort_path)
    if not repair and (done := _nothing_to_encode(coh, encoder, device)) is not None:
        return done
    enc = get_encoder(encoder)
    return encode_cohort(
        coh,
        enc,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        chunk_rows=chunk_rows,
        repair=repair,
        ray=ray,
    )
