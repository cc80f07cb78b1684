"""Subject-level fold assignment by a stable hash, and the fold-k train/validation/test masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

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


#: Partition codes of an (n, n_folds) partition table; :data:`ABSENT` = not in that fold.
PARTITION_CODES = {"train": 0, "val": 1, "test": 2}
ABSENT = -1


def rule_partitions(folds: np.ndarray, n_folds: int) -> np.ndarray:
    """The (n, n_folds) partition table of the harness rule (:func:`split_masks`) for each fold."""
    folds = np.asarray(folds)
    out = np.full((len(folds), n_folds), ABSENT, dtype=np.int8)
    for k in range(1, n_folds + 1):
        for name, mask in zip(PARTITION_CODES, split_masks(folds, k, n_folds), strict=True):
            out[mask, k - 1] = PARTITION_CODES[name]
    return out


def given_partitions(cohort_path: Path, stay_ids: np.ndarray) -> np.ndarray | None:
    """The cohort's own (n, n_folds) partition table when its source fixed one, else None.

    A CareBench build ships ``carebench_splits.parquet`` (fold, stay_id, partition); rows follow
    ``stay_ids``, fold k is column k-1 and a stay absent from fold k is :data:`ABSENT` there.

    Raises:
        InputError: the table names an unknown partition or fold, or lists a stay twice in a fold.
    """
    import pandas as pd

    from harness.cohort.carebench import SPLITS_FILE
    from harness.errors import InputError

    path = Path(cohort_path) / SPLITS_FILE
    if not path.is_file():
        return None
    table = pd.read_parquet(path, columns=["fold", "stay_id", "partition"])
    unknown = sorted(set(table["partition"]) - set(PARTITION_CODES))
    if unknown or table.empty or int(table["fold"].min()) < 1:
        raise InputError(
            f"bad partition table ({'partitions ' + str(unknown) if unknown else 'folds'})",
            path=path,
            fix="rebuild the cohort with `harness cohort build --carebench DIR`",
        )
    if table.duplicated(["fold", "stay_id"]).any():
        raise InputError("a stay is listed twice in one fold", path=path, fix="fix the split files")
    n_folds = int(table["fold"].max())
    out = np.full((len(stay_ids), n_folds), ABSENT, dtype=np.int8)
    rows = pd.Index(stay_ids).get_indexer(table["stay_id"].to_numpy())
    keep = rows >= 0
    codes = table["partition"].map(PARTITION_CODES).to_numpy(np.int8)
    out[rows[keep], table["fold"].to_numpy()[keep] - 1] = codes[keep]
    return out
