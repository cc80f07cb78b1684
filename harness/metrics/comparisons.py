"""Multiple-comparison control and per-label fusion gain built on the shared bootstrap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from harness.metrics.bootstrap import (
    UNSTABLE_FRACTION,
    Resamples,
    bootstrap_metric,
    paired_delta,
    undefined_fraction,
)
from harness.metrics.registry import METRICS

DEFAULT_ALPHA = 0.05
#: The family Benjamini-Hochberg adjusts over in result.json (``fusion_gain*.bh_family``): the
#: labels of one entry against one reference on one task and cohort. Leaderboard summary tables
#: also adjust over the whole table (every entry x label), BH and Benjamini-Yekutieli.
BH_FAMILY = "labels within one entry x reference x task x cohort"


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted.

    q_(i) = min over j >= i of p_(j) * m / j for the sorted p-values, capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    m = defined.size
    if m == 0:
        return q
    order = defined[np.argsort(p[defined], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def benjamini_yekutieli(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values: BH times c(m) = sum_{i<=m} 1/i, capped at 1.

    Controls the FDR under any dependence between the tests (BH needs positive dependence);
    entries compared on the same labels, references and resamples are dependent.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = int(np.count_nonzero(~np.isnan(p)))
    c_m = float(np.sum(1.0 / np.arange(1, m + 1))) if m else 1.0
    return np.minimum(1.0, benjamini_hochberg(p) * c_m)


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str = "bh") -> np.ndarray:
    """q-values by ``bh`` (Benjamini-Hochberg) or ``by`` (Benjamini-Yekutieli); NaN stays NaN."""
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "by":
        return benjamini_yekutieli(p_values)
    raise ValueError(f"unknown p-value adjustment {method!r} (bh or by)")


def fusion_gain(
    label_names: Sequence[str],
    y_true: np.ndarray,
    score: Sequence[np.ndarray],
    reference: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]],
    resamples: Resamples,
    *,
    metric: str = "auroc",
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, dict]:
    """Per-label paired gain of a submission over a reference on the shared resamples.

    ``score`` and ``reference`` hold one (n, L) probability matrix per seed; a label's value is
    the mean over seeds of the binary ``metric`` on that label, on the full data (point) and on
    each resample. ``reference`` may also map names to such runs: each label is then compared
    with the reference that scores best on that label (point estimate), e.g. the better of an
    EHR-only and a CXR-only model, and its name is recorded as ``reference``. Choosing the best
    of several references by its point value favours the reference, so the test is conservative.
    p-values are Benjamini-Hochberg adjusted across labels (the family :data:`BH_FAMILY`);
    ``significant`` means q < ``alpha`` and a positive delta (the submission beats the reference
    on that label). ``unstable`` marks labels whose delta is undefined (one class) on more than
    :data:`~harness.metrics.bootstrap.UNSTABLE_FRACTION` of the resamples.
    """
    y = np.asarray(y_true)
    fn = METRICS.get(metric)
    named = dict(reference) if isinstance(reference, Mapping) else {"": reference}
    rows = {}
    for j, label in enumerate(label_names):
        point_a = np.mean([fn(y[:, j], s[:, j]) for s in score])
        points = {n: np.mean([fn(y[:, j], s[:, j]) for s in runs]) for n, runs in named.items()}
        finite = {n: v for n, v in points.items() if np.isfinite(v)}
        chosen = max(finite, key=finite.__getitem__) if finite else next(iter(named))
        point_b = points[chosen]
        boot_a = np.mean([bootstrap_metric(metric, y[:, j], s[:, j], resamples) for s in score], 0)
        boot_b = np.mean(
            [bootstrap_metric(metric, y[:, j], s[:, j], resamples) for s in named[chosen]], 0
        )
        rows[label] = paired_delta(float(point_a), float(point_b), boot_a, boot_b).to_dict()
        rows[label]["unstable"] = undefined_fraction(boot_a - boot_b) > UNSTABLE_FRACTION
        if chosen:
            rows[label]["reference"] = chosen
    q = benjamini_hochberg(
        [np.nan if r["p_value"] is None else r["p_value"] for r in rows.values()]
    )
    for row, q_value in zip(rows.values(), q, strict=True):
        row["q_value"] = None if np.isnan(q_value) else float(q_value)
        row["significant"] = bool(
            row["q_value"] is not None and row["q_value"] < alpha and (row["delta"] or 0) > 0
        )
    return rows
