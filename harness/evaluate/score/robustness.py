"""Robustness block: the headline metric under each test-time scenario, over its rates.

Each curve carries its normalised area (1.0: no degradation at any rate) with a percentile CI
from the same shared resamples as the clean scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.evaluate.score.accuracy import Scored, check_runs, clean
from harness.metrics.bootstrap import Resamples, bootstrap_metric, percentile_ci
from harness.metrics.registry import METRICS


def normalised_area(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised areas of sorted curves ``v`` (..., rates) over rates ``x`` (NaN: undefined)."""
    at_clean = v[..., np.flatnonzero(x == 0)[0]] if np.any(x == 0) else v[..., 0]
    width = x[-1] - x[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.trapezoid(v, x, axis=-1) / (width * at_clean)
    bad = ~np.isfinite(at_clean) | (at_clean == 0) | np.isnan(v).any(axis=-1) | (width <= 0)
    return np.where(bad, np.nan, auc)


def robustness_curve(
    rates: Sequence[float],
    values: Sequence[float],
    metric: str,
    boot: np.ndarray | None = None,
) -> dict[str, Any]:
    """A degradation curve and its normalised area.

    ``auc_normalised`` = trapezoidal area under (rate, value) divided by the area of a flat curve
    at the clean value (rate 0, else the first rate): 1.0 means no degradation at any rate.
    With ``boot`` (resamples x rates, columns in the order of ``rates``: the metric on the shared
    resamples), the area is computed on every resample and its percentile CI added.
    """
    x = np.asarray(rates, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(x)
    x, v = x[order], v[order]
    auc = float(normalised_area(x, v))
    curve: dict[str, Any] = {
        "metric": metric,
        "rates": [float(a) for a in x],
        "values": [clean(a) for a in v],
        "auc_normalised": clean(auc),
    }
    if boot is not None:
        low, high = percentile_ci(normalised_area(x, np.asarray(boot, np.float64)[:, order]))
        curve["ci_low"], curve["ci_high"] = clean(low), clean(high)
    return curve


def _at_rate(
    main: str, y: np.ndarray, runs: list[np.ndarray], r: Resamples
) -> tuple[float, np.ndarray]:
    """The headline metric's seed-mean point value and per-resample values at one rate."""
    metric = METRICS.get(main)
    point = float(np.mean([metric(y, p) for p in runs]))
    return point, np.mean([bootstrap_metric(main, y, p, r) for p in runs], axis=0)


def scenario_curve(
    scenario: str,
    by_rate: Mapping[float, Sequence[np.ndarray]],
    main: str,
    clean_probs: Sequence[np.ndarray],
    clean_score: Scored,
    y: np.ndarray,
    shape: tuple,
    r: Resamples,
) -> dict[str, Any]:
    """One scenario's curve of ``main``; the rate holding the clean predictions (the very
    ``clean_probs`` object, rate 0) reuses their scores instead of resampling them again."""
    rates = sorted(by_rate)
    values, boot = [], []
    for rate in rates:
        if by_rate[rate] is clean_probs:
            point, point_boot = clean_score.point, clean_score.boot
        else:
            point, point_boot = _at_rate(main, y, check_runs(scenario, by_rate[rate], shape), r)
        values.append(point)
        boot.append(point_boot)
    return robustness_curve(rates, values, main, boot=np.stack(boot, axis=1))


def robustness_block(
    scenario_probs: Mapping[str, Mapping[float, Sequence[np.ndarray]]],
    main: str,
    clean_probs: Sequence[np.ndarray],
    clean_score: Scored,
    y: np.ndarray,
    shape: tuple,
    r: Resamples,
) -> dict[str, dict[str, Any]]:
    """Scenario -> curve of the headline metric ``main`` over the scenario's rates."""
    return {
        scenario: scenario_curve(scenario, by_rate, main, clean_probs, clean_score, y, shape, r)
        for scenario, by_rate in scenario_probs.items()
    }
