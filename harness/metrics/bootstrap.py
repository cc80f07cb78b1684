"""Patient-level bootstrap with fixed, shared resamples: CIs and paired deltas with p-values.

Subjects (patients), not stays, are resampled: every stay of a drawn subject comes along, as
many times as the subject was drawn. Draws are made on the *sorted unique* subject ids with a
fixed default seed, so every submission scored on the same cohort gets the same resamples,
whatever the row order, and comparisons between submissions are paired.

Resamples are stored as multiplicities (resamples x stays) rather than index lists; a metric with
integer sample weights equals the metric on the repeated rows (see :mod:`harness.metrics.registry`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.metrics.registry import batched_metric

#: Fixed seed of the shared resamples; changing it changes every published CI.
DEFAULT_BOOTSTRAP_SEED = 20260601
DEFAULT_N_RESAMPLES = 1000
CI_LEVEL = 0.95
#: How paired-delta p-values are computed (recorded in result.json, see :func:`normal_p_value`).
P_VALUE_METHOD = "normal_bootstrap_se"
#: A metric (or label) whose value is undefined (one class present) on more than this share of
#: the resamples is marked ``unstable``: its CI comes from the resamples that happen to hold both
#: classes, so it describes a conditional distribution (about 5 positive subjects or fewer).
UNSTABLE_FRACTION = 0.01


@dataclass(frozen=True)
class Resamples:
    """Bootstrap multiplicities: ``counts[b, i]`` = copies of stay ``i`` in resample ``b``."""

    counts: np.ndarray
    seed: int
    n_subjects: int
    key: str

    @property
    def n_resamples(self) -> int:
        return int(self.counts.shape[0])

    def indices(self, b: int) -> np.ndarray:
        """Row indices of resample ``b`` (each stay repeated by its multiplicity)."""
        return np.repeat(np.arange(self.counts.shape[1]), self.counts[b])

    def head(self, n: int) -> Resamples:
        """The first ``n`` resamples (still shared and paired; used where 1,000 are too slow)."""
        return Resamples(self.counts[:n], self.seed, self.n_subjects, f"{self.key}:{n}")

    def describe(self) -> dict:
        """JSON-safe description recorded in result.json (no ids, only their digest)."""
        return {
            "unit": "subject",
            "seed": self.seed,
            "n_resamples": self.n_resamples,
            "n_subjects": self.n_subjects,
            "key": self.key,
        }


def bootstrap_indices(
    subject_ids: Sequence | np.ndarray,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> Resamples:
    """Draw ``n_resamples`` patient-level bootstrap resamples for stays with these subject ids.

    Each resample draws ``n_subjects`` subjects with replacement from the sorted unique ids; a
    stay's multiplicity is its subject's draw count. The result depends only on the set of
    subject ids (not on row order), ``n_resamples`` and ``seed``; ``key`` is a digest of those.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    ids = np.asarray(subject_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("subject_ids must be a non-empty 1-D array")
    unique, inverse = np.unique(ids, return_inverse=True)
    n_subj = unique.size
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_subj, size=(n_resamples, n_subj))
    offsets = (np.arange(n_resamples) * n_subj)[:, None]
    subject_counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_subj)
    subject_counts = subject_counts.reshape(n_resamples, n_subj)
    dtype = np.uint8 if subject_counts.max() <= np.iinfo(np.uint8).max else np.uint32
    counts = subject_counts.astype(dtype)[:, inverse]
    digest = hashlib.sha256()
    digest.update(np.asarray(unique.astype(str), dtype="U").tobytes())
    digest.update(f"|{n_resamples}|{seed}".encode())
    return Resamples(counts, int(seed), int(n_subj), digest.hexdigest()[:16])


def percentile_ci(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap values, ignoring NaN resamples (NaN if none defined)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(v, [alpha, 1.0 - alpha])
    return float(low), float(high)


def undefined_fraction(values: np.ndarray) -> float:
    """Share of bootstrap values that are NaN (resamples on which the metric is undefined)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.mean(np.isnan(v))) if v.size else 0.0


def bootstrap_metric(
    name: str, y_true: np.ndarray, y_score: np.ndarray, resamples: Resamples
) -> np.ndarray:
    """Metric ``name`` on every resample (length ``n_resamples``; NaN where undefined)."""
    return batched_metric(name, y_true, y_score, resamples.counts)


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a zero difference.

    p = min(1, 2 * min((1 + #{d <= 0}) / (1 + B), (1 + #{d >= 0}) / (1 + B))) over the B defined
    resamples; the +1 keeps p away from an impossible 0 with a finite number of resamples.
    """
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    b = d.size
    low = (1 + np.count_nonzero(d <= 0)) / (1 + b)
    high = (1 + np.count_nonzero(d >= 0)) / (1 + b)
    return float(min(1.0, 2.0 * min(low, high)))


def normal_p_value(delta: float, deltas: np.ndarray) -> float:
    """Two-sided p-value of a zero difference: z = delta / SE, SE the sd of the paired bootstrap
    deltas (a Wald test with a bootstrap standard error), p = erfc(|z| / sqrt 2).

    Counting resamples (:func:`bootstrap_p_value`) cannot go below 2 / (B + 1), 0.002 with 1,000
    resamples, so Benjamini-Hochberg over 25 labels could barely reach q < 0.05; the normal
    approximation resolves small p-values from the same resamples at no extra cost. NaN when
    ``delta`` or every resample is undefined; with a zero SE, 1 for a zero delta, else the
    counted p-value; never 0 (floored at the smallest normal double where erfc underflows).
    """
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0 or not np.isfinite(delta):
        return float("nan")
    se = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    if se <= 0:
        return 1.0 if delta == 0 else bootstrap_p_value(d)
    p = math.erfc(abs(delta) / se / math.sqrt(2.0))
    return float(min(1.0, max(p, np.finfo(np.float64).tiny)))


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap percentile CI."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {
            "value": _clean(self.value),
            "ci_low": _clean(self.ci_low),
            "ci_high": _clean(self.ci_high),
        }


@dataclass(frozen=True)
class PairedDelta:
    """Submission minus reference on shared resamples: delta, CI and two-sided p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict:
        return {
            "delta": _clean(self.delta),
            "ci_low": _clean(self.ci_low),
            "ci_high": _clean(self.ci_high),
            "p_value": _clean(self.p_value),
        }


def _clean(x: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if x is None or not np.isfinite(x) else float(x)


def estimate(point: float, boot: np.ndarray, level: float = CI_LEVEL) -> Estimate:
    low, high = percentile_ci(boot, level)
    return Estimate(float(point), low, high)


def paired_delta(
    point_a: float, point_b: float, boot_a: np.ndarray, boot_b: np.ndarray, level: float = CI_LEVEL
) -> PairedDelta:
    """Delta ``a - b`` from point values and bootstrap values computed on the *same* resamples.

    The CI is the percentile interval of the paired bootstrap deltas; the p-value is
    :func:`normal_p_value` (its method is :data:`P_VALUE_METHOD`).
    """
    d = np.asarray(boot_a, dtype=np.float64) - np.asarray(boot_b, dtype=np.float64)
    low, high = percentile_ci(d, level)
    delta = float(point_a - point_b)
    return PairedDelta(delta, low, high, normal_p_value(delta, d))


def paired_metric_delta(
    name: str,
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    resamples: Resamples,
) -> PairedDelta:
    """Paired delta of metric ``name`` between two prediction sets for the same stays."""
    from harness.metrics.registry import METRICS

    metric = METRICS.get(name)
    return paired_delta(
        metric(y_true, score_a),
        metric(y_true, score_b),
        bootstrap_metric(name, y_true, score_a, resamples),
        bootstrap_metric(name, y_true, score_b, resamples),
    )
