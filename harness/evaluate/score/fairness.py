"""Fairness block: per-group metrics of the seed-mean predictions, per attribute.

One decision per stay: groups are scored on the mean over seeds of the pooled probabilities, at
the decision threshold(s) chosen on validation (binary; per label for a multilabel task, on the
single attributes only). Multiclass tasks report threshold-free group metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.fairness import binary_fairness, multiclass_fairness


def label_threshold(thr: np.ndarray, j: int, n_labels: int) -> float | np.ndarray:
    """Threshold(s) of label ``j``: scalar, per label (L,), per row and label (n, L), per row."""
    if thr.ndim == 0:
        return thr
    if thr.ndim == 2:
        return thr[:, j]
    if thr.shape == (n_labels,):
        return thr[j]
    return thr


def multilabel_fairness(
    y: np.ndarray,
    mean_prob: np.ndarray,
    groups: pd.DataFrame,
    threshold: float | np.ndarray,
    labels: Sequence[str],
    min_group_size: int,
) -> dict[str, Any]:
    """``{"labels": {label: binary report}}`` on the single attributes (no intersections)."""
    single = groups[[c for c in groups.columns if "*" not in c]]
    thr = np.asarray(threshold, dtype=np.float64)
    return {
        "labels": {
            label: binary_fairness(
                y[:, j],
                mean_prob[:, j],
                single,
                threshold=label_threshold(thr, j, len(labels)),
                min_group_size=min_group_size,
            )  # fmt: skip
            for j, label in enumerate(labels)
        }
    }


def fairness_block(
    kind: str,
    y: np.ndarray,
    runs: list[np.ndarray],
    groups: pd.DataFrame,
    *,
    threshold: float | np.ndarray,
    labels: Sequence[str] | None,
    min_group_size: int,
) -> dict[str, Any]:
    """The fairness report of a task of ``kind`` on the seed-mean predictions."""
    mean_prob = np.mean(runs, axis=0)
    if kind == "binary":
        return binary_fairness(
            y, mean_prob, groups, threshold=threshold, min_group_size=min_group_size
        )
    if kind == "multiclass":
        return multiclass_fairness(y, mean_prob, groups, min_group_size=min_group_size)
    return multilabel_fairness(y, mean_prob, groups, threshold, labels or [], min_group_size)
