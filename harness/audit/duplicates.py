"""Duplicate images across splits: exact copies by content hash, near copies by embedding.

Near duplicates are pairs whose image embeddings have an inner product of at least a threshold
after centring (the mean embedding of the audited images removed) and L2 normalisation. Centring
matters: features of ImageNet-style encoders are non-negative, so two unrelated chest X-rays have
a plain cosine above 0.95; centred, distinct images of the default data stay below 0.95 while a
re-saved or slightly brightened copy stays above 0.98. The search is faiss's range search:
exact (``IndexFlatIP``) up to :data:`EXACT_LIMIT` images, an inverted-file index
(``IndexIVFFlat``, ``nlist ~ 4 sqrt(n)``, ``nprobe`` lists visited) beyond. An encoder whose
typical nearest neighbour is itself above the threshold cannot tell images apart: the check then
says so instead of flagging every pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.audit.checks import FAILED, MAX_PRIVATE, PASSED, SKIPPED, Check, pairs_by_split

#: Centred inner product at or above which two images are near duplicates.
NEAR_THRESHOLD = 0.97
#: Up to this many images the range search is exact; above it an IVF index is used.
EXACT_LIMIT = 50_000
#: Inverted lists an IVF search visits.
NPROBE = 16


def centred_unit(emb: np.ndarray) -> np.ndarray:
    """Embeddings minus their mean, scaled to unit length (float32, C-contiguous for faiss)."""
    x = np.asarray(emb, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def _upper_pairs(lims: np.ndarray, dist: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(i, j, similarity) rows with i < j from a faiss range-search result."""
    bounds = np.asarray(lims, dtype=np.int64)
    counts: np.ndarray = bounds[1:] - bounds[:-1]
    rows = np.repeat(np.arange(len(bounds) - 1), counts)
    idx = idx.astype(np.int64)
    keep = rows < idx
    return np.column_stack([rows[keep], idx[keep], dist[keep]])


def near_pairs_faiss(
    x: np.ndarray, threshold: float, *, exact_limit: int = EXACT_LIMIT, nprobe: int = NPROBE
) -> np.ndarray:
    """Pairs (i < j) of unit rows of ``x`` with inner product >= ``threshold``: an (m, 3) array
    of i, j, similarity. Exact below ``exact_limit`` rows, IVF (approximate) above."""
    import faiss

    n, d = x.shape
    if n < 2:
        return np.zeros((0, 3))
    index: Any
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = x[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = nprobe
    index.add(x)
    lims, dist, idx = index.range_search(x, float(threshold))
    return _upper_pairs(lims, dist, idx)


def near_pairs_numpy(x: np.ndarray, threshold: float, *, block: int = 2048) -> np.ndarray:
    """The same pairs by brute force (blocks of the full similarity matrix): the reference."""
    n = len(x)
    out = []
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        i, j = np.nonzero(sims >= threshold)
        i = i + start
        keep = i < j
        out.append(np.column_stack([i[keep], j[keep], sims[i[keep] - start, j[keep]]]))
    return np.concatenate(out) if out else np.zeros((0, 3))


def nearest_similarity(x: np.ndarray) -> np.ndarray:
    """Each row's similarity to its nearest other row (exact, faiss)."""
    import faiss

    if len(x) < 2:
        return np.zeros(len(x))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    dist, idx = index.search(x, 2)
    own = idx[:, 0] == np.arange(len(x))
    return np.where(own, dist[:, 1], dist[:, 0])


def content_hashes(paths: Sequence[Path | None]) -> list[str | None]:
    """sha256 of each file's bytes (None where there is no path or the file is missing)."""
    out: list[str | None] = []
    for p in paths:
        if p is None or not Path(p).is_file():
            out.append(None)
            continue
        with open(p, "rb") as fh:
            out.append(hashlib.file_digest(fh, "sha256").hexdigest())
    return out


def _exact_pairs(hashes: Sequence[str | None], dicom: Sequence[str]) -> np.ndarray:
    """Pairs (i < j) of rows with the same content hash or the same image id."""
    groups: dict[Any, list[int]] = {}
    for i, (h, d) in enumerate(zip(hashes, dicom, strict=True)):
        groups.setdefault(("id", d), []).append(i)
        if h is not None:
            groups.setdefault(("sha", h), []).append(i)
    pairs = {
        (a, b)
        for members in groups.values()
        if len(members) > 1
        for ai, a in enumerate(members)
        for b in members[ai + 1 :]
    }
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def duplicate_images(
    dicom_id: np.ndarray,
    partitions: np.ndarray,
    fold: np.ndarray,
    *,
    hashes: Sequence[str | None] | None = None,
    embedding: np.ndarray | None = None,
    embedded: np.ndarray | None = None,
    threshold: float = NEAR_THRESHOLD,
    no_embedding: str = "no image embeddings to compare",
) -> Check:
    """Images shared across splits (rows: the cohort's stays with a linked image).

    Exact: the same file content (sha256) or the same image id on two stays. Near: centred
    embeddings at or above ``threshold`` (see the module docstring), among the rows ``embedded``
    (a mask; default all) that ``embedding`` holds in order. A pair is a leak when its two stays
    sit in different partitions (train, val, test) of some fold.
    """
    dicom = [str(d) for d in dicom_id]
    fold = np.asarray(fold)
    details: dict[str, Any] = {"n_images": len(dicom), "near_threshold": threshold}
    private: dict[str, Any] = {}
    problems = []
    exact = _exact_pairs(hashes if hashes is not None else [None] * len(dicom), dicom)
    per_fold, by_pair, crossing = pairs_by_split(exact[:, 0], exact[:, 1], partitions, fold)
    details["exact"] = {
        "hashed": 0 if hashes is None else sum(h is not None for h in hashes),
        "pairs": int(len(exact)),
        "across_splits": int(crossing.sum()),
        "per_fold": per_fold,
        "by_fold_pair": by_pair,
    }
    private["exact_pairs"] = [[dicom[a], dicom[b]] for a, b in exact[crossing]][:MAX_PRIVATE]
    if crossing.any():
        problems.append(f"{int(crossing.sum())} identical image pair(s) across splits")
    if embedding is None or len(embedding) < 3:
        details["near"] = {"status": SKIPPED, "reason": no_embedding}
    else:
        sub = np.flatnonzero(np.ones(len(dicom), bool) if embedded is None else embedded)
        if len(sub) != len(embedding):
            raise ValueError(f"{len(embedding)} embeddings for {len(sub)} embedded rows")
        x = centred_unit(embedding)
        nn = nearest_similarity(x)
        median_nn = float(np.median(nn))
        details["nearest_neighbour_similarity"] = {
            "median": round(median_nn, 4),
            "p99": round(float(np.percentile(nn, 99)), 4),
            "max": round(float(nn.max()), 4),
        }
        if median_nn >= threshold:
            details["near"] = {
                "status": SKIPPED,
                "reason": (
                    f"the encoder does not separate images: the median nearest-neighbour "
                    f"similarity {median_nn:.4f} is above the threshold {threshold:g} "
                    "(audit with an encoder that does, --encoder)"
                ),
            }
        else:
            pairs = near_pairs_faiss(x, threshold)
            a, b = sub[pairs[:, 0].astype(np.int64)], sub[pairs[:, 1].astype(np.int64)]
            nf, nb, cross = pairs_by_split(a, b, partitions, fold)
            details["near"] = {
                "status": FAILED if cross.any() else PASSED,
                "index": "IndexFlatIP"
                if len(x) <= EXACT_LIMIT
                else f"IndexIVFFlat nprobe={NPROBE}",
                "pairs": int(len(pairs)),
                "across_splits": int(cross.sum()),
                "per_fold": nf,
                "by_fold_pair": nb,
            }
            private["near_pairs"] = [
                [dicom[i], dicom[j], round(float(s), 4)]
                for i, j, s in zip(a[cross], b[cross], pairs[cross, 2], strict=True)
            ][:MAX_PRIVATE]
            if cross.any():
                problems.append(f"{int(cross.sum())} near-duplicate pair(s) across splits")
    near_ran = details["near"]["status"] != SKIPPED
    hashed = int(details["exact"]["hashed"])
    if not len(dicom):
        status = SKIPPED
    elif problems:
        status = FAILED
    else:
        status = PASSED if (hashed or near_ran) else SKIPPED
    what = [f"{hashed} of {len(dicom)} files hashed"]
    if near_ran:
        what.append(f"embeddings compared at {threshold:g}")
    else:
        what.append(f"near-duplicate search not run: {details['near']['reason']}")
    details["partial"] = bool(len(dicom)) and not (near_ran and hashed == len(dicom))
    return Check(
        name="duplicate_images",
        status=status,
        threshold=(
            f"0 image pairs across splits that are identical (sha256 or image id) or whose "
            f"centred embedding similarity is >= {threshold:g}"
        ),
        summary=(
            "; ".join(problems)
            if problems
            else (
                f"no duplicate image across splits ({', '.join(what)})"
                if len(dicom)
                else "the cohort has no linked images"
            )
        ),
        details=details,
        private=private,
    )
