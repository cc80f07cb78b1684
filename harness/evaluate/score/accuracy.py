"""Accuracy block: every metric of the task kind with its CI, per label, and per resample.

The point value of a metric is the mean over seeds of the metric on the pooled out-of-fold
predictions; its 95% CI is the percentile interval of the same seed-mean over the shared
patient-level resamples; ``mean``/``sd`` are over folds x seeds units (sd with ddof=1). Every
summary records ``undefined_fraction``, the share of resamples on which the metric is undefined
(one class present) and left out of the CI, and ``unstable`` when it exceeds 1 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import InputError
from harness.metrics.bootstrap import (
    UNSTABLE_FRACTION,
    Resamples,
    bootstrap_metric,
    percentile_ci,
    undefined_fraction,
)
from harness.metrics.registry import METRICS, PER_LABEL_METRICS

#: Decimals of the stored per-resample headline values (``main_resamples``).
RESAMPLE_DECIMALS = 6


def clean(x: Any) -> float | None:
    """A JSON-safe number: None for None, NaN or infinity."""
    return None if x is None or not np.isfinite(x) else float(x)


def check_runs(name: str, runs: Sequence[np.ndarray], shape: tuple) -> list[np.ndarray]:
    """One float array per seed, each of ``shape`` and holding probabilities; else InputError."""
    if isinstance(runs, np.ndarray):
        raise InputError(
            f"{name} must be a list with one pooled probability array per seed, got one array",
            fix=f"pass [{name}] for a single seed",
        )
    out = [np.asarray(r, dtype=np.float64) for r in runs]
    if not out:
        raise InputError(f"{name} is empty", fix="pass at least one seed's pooled predictions")
    for r in out:
        if r.shape != shape:
            raise InputError(
                f"{name} has an array of shape {r.shape}, expected {shape}",
                fix="pool every fold's test predictions into one array per seed, "
                "rows aligned with y_true",
            )
        if not np.all(np.isfinite(r)) or r.min() < 0 or r.max() > 1:
            raise InputError(
                f"{name} holds values outside [0, 1] or NaN; scores must be probabilities",
                fix="apply the task's link function (sigmoid / softmax) before scoring",
            )
    return out


@dataclass(frozen=True)
class Scored:
    """One metric on pooled predictions: its summary for result.json, its seed-mean value on
    every shared resample (``boot``) and its seed-mean point value."""

    summary: dict[str, Any]
    boot: np.ndarray
    point: float


def _unit_values(
    name: str, y: np.ndarray, runs: list[np.ndarray], fold: np.ndarray | None
) -> np.ndarray:
    """The metric per unit (fold x seed; per seed without folds), undefined units dropped."""
    metric = METRICS.get(name)
    units = []
    for p in runs:
        if fold is None:
            units.append(metric(y, p))
        else:
            units.extend(metric(y[fold == k], p[fold == k]) for k in np.unique(fold))
    values = np.asarray(units, dtype=np.float64)
    return values[~np.isnan(values)]


def score_metric(
    name: str, y: np.ndarray, runs: list[np.ndarray], fold: np.ndarray | None, r: Resamples
) -> Scored:
    """Summary of metric ``name`` (value, mean, sd, CI, units, undefined share)."""
    metric = METRICS.get(name)
    point = float(np.mean([metric(y, p) for p in runs]))
    boot = np.mean([bootstrap_metric(name, y, p, r) for p in runs], axis=0)
    units = _unit_values(name, y, runs, fold)
    low, high = percentile_ci(boot)
    undefined = undefined_fraction(boot)
    summary = {
        "value": clean(point),
        "mean": clean(units.mean()) if units.size else None,
        "sd": clean(units.std(ddof=1)) if units.size > 1 else None,
        "ci_low": clean(low),
        "ci_high": clean(high),
        "n_units": int(units.size),
        "undefined_fraction": undefined,
        "unstable": undefined > UNSTABLE_FRACTION,
    }
    return Scored(summary, boot, point)


def score_metrics(
    names: Sequence[str],
    y: np.ndarray,
    runs: list[np.ndarray],
    fold: np.ndarray | None,
    r: Resamples,
) -> dict[str, Scored]:
    """Every metric in ``names`` on the same predictions and resamples."""
    return {name: score_metric(name, y, runs, fold, r) for name in names}


def resample_values(boot: np.ndarray) -> list[float | None]:
    """``main_resamples``: the headline metric on every shared resample (seed mean, rounded to
    :data:`RESAMPLE_DECIMALS`, null where undefined), what the leaderboard tests entries against
    the leader on, paired; checked but never published."""
    return [None if not np.isfinite(v) else round(float(v), RESAMPLE_DECIMALS) for v in boot]


def multilabel_names(names: Sequence[str] | None, y: np.ndarray) -> list[str]:
    """The multilabel task's label names (``label_<j>`` when none are given)."""
    labels = list(names) if names is not None else [f"label_{j}" for j in range(y.shape[1])]
    if len(labels) != y.shape[1]:
        raise InputError(f"{len(labels)} label names for {y.shape[1]} label columns")
    return labels


def per_label(
    labels: Sequence[str],
    y: np.ndarray,
    runs: list[np.ndarray],
    fold: np.ndarray | None,
    r: Resamples,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Label -> :data:`PER_LABEL_METRICS` summaries of a multilabel task."""
    return {
        label: {
            m: score_metric(m, y[:, j], [p[:, j] for p in runs], fold, r).summary
            for m in PER_LABEL_METRICS
        }
        for j, label in enumerate(labels)
    }
