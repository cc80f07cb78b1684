"""Subject-level fold assignment by a stable hash, and the fold-k train/validation/test masks."""

from __future__ import annotations

import hashlib

import numpy as np

N_FOLDS = 5


def fold_of_subject(subject_id: int, n_folds: int = N_FOLDS) -> int:
    """Fold (1..n_folds) of a subject: sha256 of the decimal id, mod n_folds, plus one.

    Depends on the id only, so a subject keeps its fold when other rows are added or removed.
    """
    digest = hashlib.sha256(str(int(subject_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_folds + 1


def assign_folds(subject_ids: np.ndarray, n_folds: int = N_FOLDS) -> np.ndarray:
    """Folds (int8, 1..n_folds) for an array of subject ids (one hash per distinct subject)."""
    subject_ids = np.asarray(subject_ids, dtype=np.int64)
    uniq, inverse = np.unique(subject_ids, return_inverse=True)
    per_subject = np.fromiter((fold_of_subject(s, n_folds) for s in uniq), np.int8, len(uniq))
    return per_subject[inverse]


def split_masks(
    folds: np.ndarray, k: int, n_folds: int = N_FOLDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (train, val, test) masks for fold k: test = k, val = k+1 (cyclic), train = rest."""
    if not 1 <= k <= n_folds:
        raise ValueError(f"fold k must be in 1..{n_folds}, got {k}")
    folds = np.asarray(folds)
    val_fold = k % n_folds + 1
    test = folds == k
    val = folds == val_fold
    return ~(test | val), val, test
