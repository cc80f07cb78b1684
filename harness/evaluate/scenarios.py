"""Registered test-time robustness scenarios: degrade the raw test data, never retrain.

A scenario takes the raw `FeatureSet` of a cohort, the test rows and a rate in [0, 1] (the
fraction of eligible test stays affected) and returns a degraded copy; the trained model then
predicts it through the same normalisation as the clean data. Which stays are affected depends
only on the scenario, the rate, the fold and the stays themselves — never on the submission — so
every submission is scored on identical degraded data (paired comparisons). Affected sets are
nested: a stay degraded at rate 0.25 is also degraded at 0.5.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.registry import Registry

#: Rates of every scenario curve: fraction of eligible test stays degraded.
RATES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Attribute whose observed CXR availability pattern drives the `cxr_missing_subgroup` scenario.
SUBGROUP_ATTRIBUTE = "race_group"
#: Hours kept by the window-truncation scenario.
TRUNCATE_HOURS = 24

ApplyFn = Callable[["object", np.ndarray, float, np.random.Generator], "object"]


@dataclass(frozen=True)
class Scenario:
    name: str
    family: str  # "cxr_missing" | "ehr_degradation" | "ehr_missing"
    description: str
    apply: ApplyFn
    rates: tuple[float, ...] = RATES

    def rng(self, fold: int) -> np.random.Generator:
        """The scenario's generator for one fold: independent of the submission and the rate."""
        digest = hashlib.sha256(f"{self.name}|fold{fold}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def degrade(self, fs, test_idx: np.ndarray, rate: float, fold: int):
        """The degraded copy of ``fs`` (only rows ``test_idx`` change)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        if rate == 0.0:
            return fs
        return self.apply(fs, np.asarray(test_idx), rate, self.rng(fold))


SCENARIOS: Registry[Scenario] = Registry("scenario")


def _register(scenario: Scenario) -> Scenario:
    SCENARIOS.add(scenario.name, scenario)
    return scenario


def _take_by_priority(eligible: np.ndarray, keys: np.ndarray, rate: float) -> np.ndarray:
    """The ``round(rate * n)`` eligible rows with the largest keys (nested across rates)."""
    n = int(round(rate * eligible.size))
    if n == 0:
        return eligible[:0]
    order = np.argsort(-keys, kind="stable")
    return eligible[order[:n]]


def _weighted_keys(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Efraimidis-Spirakis keys: taking the top k samples without replacement ∝ ``weights``."""
    u = rng.random(weights.size)
    w = np.clip(weights.astype(np.float64), 1e-12, None)
    return np.log(u) / w


def _drop_cxr(fs, rows: np.ndarray):
    has = fs.has_cxr.copy()
    cxr = fs.cxr.copy()
    t = fs.cxr_time_hours.copy()
    has[rows] = False
    cxr[rows] = 0.0
    t[rows] = np.nan
    changes = {"has_cxr": has, "cxr": cxr, "cxr_time_hours": t}
    if getattr(fs, "cxr_pixels", None) is not None:
        import torch

        pixels = fs.cxr_pixels.clone()
        pixels[torch.as_tensor(rows, dtype=torch.long)] = 0
        changes["cxr_pixels"] = pixels
    return fs.replace(**changes)


def _with_cxr(fs, test_idx: np.ndarray) -> np.ndarray:
    return test_idx[np.asarray(fs.has_cxr, dtype=bool)[test_idx]]


def severity_proxy(fs) -> np.ndarray:
    """Acuity score per stay from the raw 48-hour series (no labels, no model).

    The fraction of observed hours with a deranged vital sign (heart rate > 110 bpm,
    respiratory rate > 25 /min, SpO2 < 92 %, systolic BP < 90 mmHg, lactate > 2 mmol/L), summed
    over those variables; variables absent from the feature set are skipped.
    """
    rules = {
        "heart_rate": lambda v: v > 110,
        "resp_rate": lambda v: v > 25,
        "spo2": lambda v: v < 92,
        "sbp": lambda v: v < 90,
        "lactate": lambda v: v > 2,
    }
    score = np.zeros(len(fs.stay_id), dtype=np.float64)
    for name, rule in rules.items():
        if name not in fs.variables:
            continue
        j = fs.variables.index(name)
        vals = fs.ehr_values[:, :, j]
        obs = fs.ehr_observed[:, :, j] & np.isfinite(vals)
        hits = (rule(np.where(obs, vals, 0.0)) & obs).sum(axis=1)
        score += hits / np.maximum(obs.sum(axis=1), 1)
    return score


def _mcar(fs, test_idx, rate, rng):
    eligible = _with_cxr(fs, test_idx)
    return _drop_cxr(fs, _take_by_priority(eligible, rng.random(eligible.size), rate))


def _acuity(fs, test_idx, rate, rng):
    eligible = _with_cxr(fs, test_idx)
    sev = severity_proxy(fs)[eligible]
    # Weights 1..5 by percentile rank (ties share their average rank): the sickest stay is
    # five times as likely to lose its image as the least sick.
    from scipy.stats import rankdata

    ranks = rankdata(sev, method="average") - 1
    weights = 1.0 + 4.0 * ranks / max(eligible.size - 1, 1)
    return _drop_cxr(fs, _take_by_priority(eligible, _weighted_keys(weights, rng), rate))


#: Where a FeatureSet carries the CXR availability per group of the reference population.
AVAILABILITY_KEY = "cxr_availability_reference"
#: The cohort whose observed availability drives `cxr_missing_subgroup` in every cohort.
AVAILABILITY_COHORT = "base"


def with_availability_reference(fs, stays, cohort: str = AVAILABILITY_COHORT):
    """``fs`` carrying each group's observed CXR availability in ``stays`` (the ``base`` cohort).

    `cxr_missing_subgroup` weights a group by how often it lacks an image in this reference
    population. On ``matched`` (every stay has an image by construction) its own availability
    is 100 % in every group, which would turn the scenario into MCAR.
    """
    if SUBGROUP_ATTRIBUTE not in stays.columns or "has_cxr" not in stays.columns:
        return fs
    group = stays[SUBGROUP_ATTRIBUTE].astype(str).to_numpy()
    has = np.asarray(stays["has_cxr"].fillna(False), dtype=float)
    availability = {str(g): float(has[group == g].mean()) for g in np.unique(group)}
    reference = {"cohort": cohort, "attribute": SUBGROUP_ATTRIBUTE, "availability": availability}
    return fs.replace(provenance={**fs.provenance, AVAILABILITY_KEY: reference})


def test_population(fs, test_idx: np.ndarray):
    """The test rows of ``fs`` as a set of their own, degraded by every scenario exactly as
    ``fs`` would be on those rows (every scenario reads only the rows it may change, except
    `cxr_missing_subgroup` without a reference population, which reads the availability of the
    whole set: that is attached first as the reference). Degrading the test rows alone spares
    copying the training rows for every scenario and rate."""
    reference = (getattr(fs, "provenance", None) or {}).get(AVAILABILITY_KEY)
    demo = fs.demographics
    if reference is None and SUBGROUP_ATTRIBUTE in demo.columns:
        group = demo[SUBGROUP_ATTRIBUTE].astype(str).to_numpy()
        has = np.asarray(fs.has_cxr, dtype=bool)
        availability = {str(g): float(has[group == g].mean()) for g in np.unique(group)}
        own = {"cohort": "self", "attribute": SUBGROUP_ATTRIBUTE, "availability": availability}
        fs = fs.replace(provenance={**fs.provenance, AVAILABILITY_KEY: own})
    return fs.subset(np.asarray(test_idx))


def _subgroup(fs, test_idx, rate, rng):
    eligible = _with_cxr(fs, test_idx)
    demo = fs.demographics
    if SUBGROUP_ATTRIBUTE not in demo.columns:
        return _mcar(fs, test_idx, rate, rng)
    group = demo[SUBGROUP_ATTRIBUTE].astype(str).to_numpy()
    reference = (getattr(fs, "provenance", None) or {}).get(AVAILABILITY_KEY)
    if reference is not None:  # each group's availability in the reference cohort (base)
        availability = reference["availability"]
        overall = float(np.mean(list(availability.values()))) if availability else 1.0
        missing_rate = {g: 1.0 - availability.get(g, overall) for g in np.unique(group)}
    else:  # no reference given: the set is its own population (e.g. base itself)
        has = np.asarray(fs.has_cxr, dtype=bool)
        missing_rate = {g: 1.0 - has[group == g].mean() for g in np.unique(group)}
    weights = np.array([missing_rate[g] for g in group[eligible]]) + 0.05
    return _drop_cxr(fs, _take_by_priority(eligible, _weighted_keys(weights, rng), rate))


def _mask_features(fs, rows: np.ndarray, hours: slice, features: np.ndarray):
    """Unobserve ``features`` in ``hours`` of ``rows`` and recompute those rows' summaries.

    The summary is recomputed with the recipe the feature cache stored it with
    (`harness.models.data.summarise_ehr`); a stored summary of another width cannot be updated
    and raises rather than leaving the degraded stays' summaries intact.
    """
    from harness.models.data import summarise_ehr

    values = fs.ehr_values.copy()
    observed = fs.ehr_observed.copy()
    block = np.ix_(rows, np.arange(values.shape[1])[hours], features)
    values[block] = np.nan
    observed[block] = False
    summary = fs.ehr_summary.copy()
    if rows.size and summary.shape[1]:  # a set without summary features has none to update
        new_summary, _ = summarise_ehr(values[rows], fs.variables)
        if new_summary.shape[1] != summary.shape[1]:
            raise ValueError(
                f"the EHR summary has {summary.shape[1]} columns but the summary recipe gives "
                f"{new_summary.shape[1]} for {len(fs.variables)} variables: the degraded stays' "
                "summaries cannot be recomputed (re-encode the cohort with `harness encode`)"
            )
        summary[rows] = new_summary
    return fs.replace(ehr_values=values, ehr_observed=observed, ehr_summary=summary)


def feature_groups(variables: list[str]) -> dict[str, str]:
    """Feature name -> variable group (vitals, labs, gcs, ...) from ``tasks/variables.yaml``."""
    from harness.cohort.spec import load_variables

    groups: dict[str, str] = {}
    for spec in load_variables():
        for name in spec.output_names:
            groups[name] = spec.group
    return {v: groups.get(v, "other") for v in variables}


def _drop_group(group: str) -> ApplyFn:
    def apply(fs, test_idx, rate, rng):
        mapping = feature_groups(list(fs.variables))
        features = np.array([j for j, v in enumerate(fs.variables) if mapping[v] == group])
        if features.size == 0:
            return fs
        rows = _take_by_priority(test_idx, rng.random(test_idx.size), rate)
        return _mask_features(fs, rows, slice(None), features)

    return apply


def _truncate(fs, test_idx, rate, rng):
    rows = _take_by_priority(test_idx, rng.random(test_idx.size), rate)
    return _mask_features(fs, rows, slice(TRUNCATE_HOURS, None), np.arange(fs.ehr_values.shape[2]))


def _remove_ehr(fs, test_idx, rate, rng):
    rows = _take_by_priority(test_idx, rng.random(test_idx.size), rate)
    return _mask_features(fs, rows, slice(None), np.arange(fs.ehr_values.shape[2]))


#: The scenarios whose rate 1 removes one modality entirely (the modality-reliance table).
WITHOUT_CXR = "cxr_missing_mcar"
WITHOUT_EHR = "ehr_missing"


_register(Scenario(
    "cxr_missing_mcar", "cxr_missing",
    "The linked CXR of a random fraction of test stays is removed (missing completely at random).",
    _mcar,
))  # fmt: skip
_register(Scenario(
    "cxr_missing_acuity", "cxr_missing",
    "Images are removed preferentially from the sickest stays (weights 1..5 by the rank of an "
    "EHR severity proxy: the share of hours with deranged vital signs); missing not at random.",
    _acuity,
))  # fmt: skip
_register(Scenario(
    "cxr_missing_subgroup", "cxr_missing",
    f"Images are removed with weights following each {SUBGROUP_ATTRIBUTE}'s observed rate of "
    f"missing images in the {AVAILABILITY_COHORT} cohort (groups that lack images more often "
    "lose them first; on matched, where every stay has one, the weights still come from base).",
    _subgroup,
))  # fmt: skip
for _group in ("vitals", "labs", "gcs", "respiratory", "output", "rhythm"):
    _register(Scenario(
        f"ehr_drop_{_group}", "ehr_degradation",
        f"All variables of the '{_group}' group are unobserved for a fraction of test stays.",
        _drop_group(_group),
    ))  # fmt: skip
_register(Scenario(
    "ehr_missing", "ehr_missing",
    "The whole EHR of a fraction of test stays is removed: every variable unobserved for the "
    "whole window (imputed as any missing value, summaries recomputed); the model sees only the "
    "image and the demographics. At rate 1 it measures how much an entry relies on the EHR "
    "(the modality-reliance table; only rate 1 is run).",
    _remove_ehr, rates=(0.0, 1.0),
))  # fmt: skip
_register(Scenario(
    "ehr_truncate_24h", "ehr_degradation",
    f"The EHR window is cut to its first {TRUNCATE_HOURS} hours for a fraction of test stays.",
    _truncate,
))  # fmt: skip
