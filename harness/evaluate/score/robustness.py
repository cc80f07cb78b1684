"""Robustness block: the headline metric under each test-time scenario, over its rates, and the
modality-reliance table drawn from the two scenarios that remove a modality entirely.

Each curve carries its absolute values with a percentile CI at every rate, its area above
chance (the mean height of the curve over the metric's chance level, with CI), its normalised
area (1.0: no degradation at any rate; a secondary figure: a model that barely uses the image
loses nothing and scores 1) and, for the scenarios that remove images, the paired difference to
the EHR-only and best unimodal references at every rate, degraded the same way, with the rate
up to which the entry beats them all (``helps_up_to``). Every CI comes from the shared
resamples of the clean scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.evaluate.score.accuracy import Scored, check_runs, clean
from harness.metrics.bootstrap import Resamples, bootstrap_metric, paired_delta, percentile_ci
from harness.metrics.registry import CHANCE_LEVEL, HIGHER_IS_BETTER, METRICS

#: Scenario families compared with the references at every rate (the image removed: the
#: EHR-only reference is the model a clinician would use instead).
VERSUS_FAMILIES = ("cxr_missing",)


def normalised_area(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised areas of sorted curves ``v`` (..., rates) over rates ``x`` (NaN: undefined)."""
    at_clean = v[..., np.flatnonzero(x == 0)[0]] if np.any(x == 0) else v[..., 0]
    width = x[-1] - x[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.trapezoid(v, x, axis=-1) / (width * at_clean)
    bad = ~np.isfinite(at_clean) | (at_clean == 0) | np.isnan(v).any(axis=-1) | (width <= 0)
    return np.where(bad, np.nan, auc)


def area_above_chance(x: np.ndarray, v: np.ndarray, chance: float) -> np.ndarray:
    """Mean height of sorted curves ``v`` (..., rates) above ``chance`` over rates ``x``: the
    trapezoidal area of ``v - chance`` divided by the width of the rates (NaN: undefined).

    0 for a model at chance at every rate; the clean value minus chance for a flat curve.
    """
    width = x[-1] - x[0]
    if width <= 0:
        return np.full(v.shape[:-1], np.nan)
    area = np.trapezoid(v - chance, x, axis=-1) / width
    return np.where(np.isnan(v).any(axis=-1), np.nan, area)


def robustness_curve(
    rates: Sequence[float],
    values: Sequence[float],
    metric: str,
    boot: np.ndarray | None = None,
) -> dict[str, Any]:
    """A degradation curve, its normalised area and its area above chance.

    ``auc_normalised`` = trapezoidal area under (rate, value) divided by the area of a flat curve
    at the clean value (rate 0, else the first rate): 1.0 means no degradation at any rate.
    ``area_above_chance`` = the mean of (value - chance) over the rates, where the metric has a
    chance level (:data:`~harness.metrics.registry.CHANCE_LEVEL`), else null. With ``boot``
    (resamples x rates, columns in the order of ``rates``: the metric on the shared resamples),
    each value and both areas get percentile CIs.
    """
    x = np.asarray(rates, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(x)
    x, v = x[order], v[order]
    chance = CHANCE_LEVEL.get(metric)
    curve: dict[str, Any] = {
        "metric": metric,
        "rates": [float(a) for a in x],
        "values": [clean(a) for a in v],
        "auc_normalised": clean(float(normalised_area(x, v))),
        "chance": chance,
        "area_above_chance": (
            None if chance is None else clean(float(area_above_chance(x, v, chance)))
        ),
    }
    if boot is not None:
        b = np.asarray(boot, np.float64)[:, order]
        low, high = percentile_ci(normalised_area(x, b))
        curve["ci_low"], curve["ci_high"] = clean(low), clean(high)
        bounds = [percentile_ci(b[:, j]) for j in range(b.shape[1])]
        curve["values_ci_low"] = [clean(lo) for lo, _ in bounds]
        curve["values_ci_high"] = [clean(hi) for _, hi in bounds]
        if chance is not None:
            low, high = percentile_ci(area_above_chance(x, b, chance))
            curve["area_above_chance_ci"] = [clean(low), clean(high)]
    return curve


@dataclass(frozen=True)
class Point:
    """The headline metric's seed-mean value and its values on the shared resamples."""

    value: float
    boot: np.ndarray


def _same_runs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    if a is b:
        return True
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


class _Scorer:
    """The headline metric on sets of per-seed predictions, each distinct set scored once.

    A scenario that changes nothing a model reads (the image removed from an EHR-only model,
    the rate-0 point of every curve) hands back the clean predictions themselves; those get
    the clean score, bit for bit, so a modality the model does not use costs it exactly 0.
    """

    def __init__(self, main: str, y: np.ndarray, shape: tuple, r: Resamples) -> None:
        self.main, self.y, self.shape, self.r = main, y, shape, r
        self._seen: list[tuple[Sequence[np.ndarray], Point]] = []

    def known(self, runs: Sequence[np.ndarray], point: Point) -> None:
        self._seen.append((runs, point))

    def __call__(self, name: str, runs: Sequence[np.ndarray]) -> Point:
        for seen, point in self._seen:
            if _same_runs(seen, runs):
                return point
        checked = check_runs(name, runs, self.shape)
        metric = METRICS.get(self.main)
        value = float(np.mean([metric(self.y, p) for p in checked]))
        boot = np.mean([bootstrap_metric(self.main, self.y, p, self.r) for p in checked], axis=0)
        point = Point(value, boot)
        self._seen.append((runs, point))
        return point


def _versus(
    rates: Sequence[float],
    mine: Sequence[Point],
    reference: Mapping[float, Sequence[np.ndarray]],
    score: _Scorer,
    name: str,
) -> dict[str, Any] | None:
    """Paired deltas of the entry minus one reference at every rate (None: a rate is missing)."""
    if any(rate not in reference for rate in rates):
        return None
    out: dict[str, list[float | None]] = {"delta": [], "ci_low": [], "ci_high": [], "p_value": []}
    for rate, point in zip(rates, mine, strict=True):
        ref = score(f"{name} at rate {rate}", reference[rate])
        d = paired_delta(point.value, ref.value, point.boot, ref.boot).to_dict()
        for key in out:
            out[key].append(d[key])
    return out


def helps_up_to(rates: Sequence[float], versus: Mapping[str, Mapping[str, Any]], main: str):
    """The largest rate up to which the entry is significantly better than every reference at
    every rate (the CI of each paired delta above 0, below 0 for a lower-is-better metric);
    None when it is not even on clean data or there is no reference to beat."""
    if not versus:
        return None
    higher = HIGHER_IS_BETTER.get(main, True)
    best = None
    for j, rate in enumerate(rates):
        ok = True
        for d in versus.values():
            low, high = d["ci_low"][j], d["ci_high"][j]
            ok &= (low is not None and low > 0) if higher else (high is not None and high < 0)
        if not ok:
            break
        best = float(rate)
    return best


def scenario_curve(
    scenario: str,
    by_rate: Mapping[float, Sequence[np.ndarray]],
    score: _Scorer,
    references: Mapping[str, Mapping[float, Sequence[np.ndarray]]] | None = None,
) -> tuple[dict[str, Any], dict[float, Point]]:
    """One scenario's curve of the headline metric (and its points by rate); with
    ``references`` (name -> rate -> per-seed predictions under the same scenario), the paired
    difference to each at every rate."""
    rates = sorted(by_rate)
    points = [score(f"{scenario} at rate {rate}", by_rate[rate]) for rate in rates]
    boot = np.stack([p.boot for p in points], axis=1)
    curve = robustness_curve(rates, [p.value for p in points], score.main, boot=boot)
    if references:
        versus = {
            ref: v
            for ref, runs in references.items()
            if (v := _versus(rates, points, runs, score, f"reference {ref} under {scenario}"))
        }
        if versus:
            curve["versus"] = versus
            curve["helps_up_to"] = helps_up_to(rates, versus, score.main)
    return curve, dict(zip(rates, points, strict=True))


def _reliance_drop(full: Point, without: Point, higher: bool) -> tuple[dict[str, Any], np.ndarray]:
    """How much the headline metric falls when a modality is removed (positive: it was used)."""
    sign = 1.0 if higher else -1.0
    d = paired_delta(sign * full.value, sign * without.value, sign * full.boot, sign * without.boot)
    return d.to_dict(), sign * (full.boot - without.boot)


def imbalance_index(drop_ehr: np.ndarray, drop_cxr: np.ndarray) -> np.ndarray:
    """Share of the total drop caused by removing the EHR: max(d_ehr, 0) / (max(d_ehr, 0) +
    max(d_cxr, 0)); 1 for a model that does not use the image, 0 for one that does not use the
    EHR, NaN when removing either changes nothing (or helps)."""
    e = np.clip(np.asarray(drop_ehr, np.float64), 0.0, None)
    c = np.clip(np.asarray(drop_cxr, np.float64), 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(e + c > 0, e / (e + c), np.nan)


#: Imbalance index CI entirely above this: EHR-dominant; entirely below: image-dominant.
BALANCED = 0.5


def dominant_modality(
    index: float | None,
    index_low: float | None,
    index_high: float | None,
    drop_ehr_low: float | None,
    drop_cxr_low: float | None,
) -> str:
    """``neither`` when removing neither modality significantly hurts (both drops' CIs reach
    0); ``ehr`` when the index's CI lies above 0.5 and removing the EHR significantly hurts;
    ``cxr`` when it lies below 0.5 and removing the image significantly hurts; else
    ``balanced``. (The index's CI leaves out resamples where no removal hurts, so it alone
    could call an entry dominant on a drop that is not significant.)"""
    ehr_hurts = drop_ehr_low is not None and drop_ehr_low > 0
    cxr_hurts = drop_cxr_low is not None and drop_cxr_low > 0
    if index is None or not (ehr_hurts or cxr_hurts):
        return "neither"
    if ehr_hurts and index_low is not None and index_low > BALANCED:
        return "ehr"
    if cxr_hurts and index_high is not None and index_high < BALANCED:
        return "cxr"
    return "balanced"


def reliance_block(
    full: Point, without_cxr: Point, without_ehr: Point, main: str
) -> dict[str, Any]:
    """The modality-reliance table of one (task, cohort): the headline metric with both
    modalities, without the image (every image removed) and without the EHR (every EHR value
    unobserved), the drops with paired CIs, and the imbalance index (see
    :func:`imbalance_index`) with its CI and the dominant modality (:func:`dominant_modality`).
    """
    higher = HIGHER_IS_BETTER.get(main, True)
    drop_cxr, boot_cxr = _reliance_drop(full, without_cxr, higher)
    drop_ehr, boot_ehr = _reliance_drop(full, without_ehr, higher)
    point = float(imbalance_index(np.array([drop_ehr["delta"] or 0.0]),
                                  np.array([drop_cxr["delta"] or 0.0]))[0])  # fmt: skip
    low, high = percentile_ci(imbalance_index(boot_ehr, boot_cxr))
    index = {"value": clean(point), "ci_low": clean(low), "ci_high": clean(high)}
    dominant = dominant_modality(
        index["value"], index["ci_low"], index["ci_high"], drop_ehr["ci_low"], drop_cxr["ci_low"]
    )

    def estimate(p: Point) -> dict[str, float | None]:
        lo, hi = percentile_ci(p.boot)
        return {"value": clean(p.value), "ci_low": clean(lo), "ci_high": clean(hi)}

    return {
        "metric": main,
        "full": estimate(full),
        "without_cxr": estimate(without_cxr),
        "without_ehr": estimate(without_ehr),
        "drop_without_cxr": drop_cxr,
        "drop_without_ehr": drop_ehr,
        "imbalance_index": index,
        "dominant": dominant,
    }


def robustness_block(
    scenario_probs: Mapping[str, Mapping[float, Sequence[np.ndarray]]],
    main: str,
    clean_probs: Sequence[np.ndarray],
    clean_score: Scored,
    y: np.ndarray,
    shape: tuple,
    r: Resamples,
    reference_scenarios: Mapping[str, Mapping[str, Mapping[float, Sequence[np.ndarray]]]]
    | None = None,
    on_scenario: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Scenario -> curve of the headline metric ``main`` over the scenario's rates, and the
    modality-reliance table (None unless both modality-removing scenarios were run).

    ``reference_scenarios``: reference name -> scenario -> rate -> per-seed predictions; the
    curves of the :data:`VERSUS_FAMILIES` scenarios are compared with them rate by rate.
    ``on_scenario(name)``: called once each scenario's curve is done (progress).
    """
    from harness.evaluate.scenarios import SCENARIOS, WITHOUT_CXR, WITHOUT_EHR

    score = _Scorer(main, y, shape, r)
    full = Point(clean_score.point, clean_score.boot)
    score.known(clean_probs, full)
    curves, points = {}, {}
    for scenario, by_rate in scenario_probs.items():
        family = SCENARIOS.get(scenario).family if scenario in SCENARIOS else None
        refs = None
        if family in VERSUS_FAMILIES and reference_scenarios:
            refs = {n: s[scenario] for n, s in reference_scenarios.items() if scenario in s}
        curves[scenario], points[scenario] = scenario_curve(scenario, by_rate, score, refs)
        if on_scenario is not None:
            on_scenario(scenario)
    reliance = None
    if 1.0 in points.get(WITHOUT_CXR, {}) and 1.0 in points.get(WITHOUT_EHR, {}):
        reliance = reliance_block(full, points[WITHOUT_CXR][1.0], points[WITHOUT_EHR][1.0], main)
    return curves, reliance
