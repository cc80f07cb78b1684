"""Score one (task, cohort) of an entry from its pooled units, under the evaluation's protocol.

References are found among the evaluated reference submissions and chosen on their validation
predictions (:mod:`harness.evaluate.score.references`); the pooled predictions are scored with
them (:func:`harness.evaluate.score.predictions.score_predictions`) on resamples drawn from the
pooled stays' patients; the cohort-level parts follow: the fusion gain's EHR-only rule, the
per-label gain over the best single modality, the profile's threshold rule and the
cross-cohort scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.evaluate.pooling import Pooled
from harness.evaluate.protocol import VALIDATION_THRESHOLD_RULE, ProtocolProfile
from harness.evaluate.score.cross_cohort import cross_cohort_block
from harness.evaluate.score.predictions import score_predictions
from harness.evaluate.score.references import (
    EHR_REFERENCES,
    Candidate,
    Chosen,
    choose_references,
    find_candidates,
    scenario_runs,
    unimodal_gain,
)
from harness.evaluate.score.robustness import VERSUS_FAMILIES
from harness.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_N_RESAMPLES,
    bootstrap_indices,
)
from harness.metrics.fairness import fairness_groups

if TYPE_CHECKING:
    from harness.cohort.load import Cohort
    from harness.evaluate.run import EvalSettings
    from harness.metrics.bootstrap import Resamples
    from harness.models.data import FeatureSet

#: Why a multilabel block has no fusion gain (no EHR-only reference evaluated).
NO_EHR_REFERENCE = (
    f"no EHR-only reference ({', '.join(EHR_REFERENCES)}) was evaluated on these stays under "
    "this protocol; a gain over another reference is not a gain over the EHR-only reference"
)


def groups_for(fs: FeatureSet, cohort: Cohort, rows: np.ndarray) -> pd.DataFrame:
    """The fairness groups of the pooled stays ``rows``, in their order."""
    stays = cohort.stays.set_index("stay_id").loc[fs.stay_id[rows]].reset_index()
    return fairness_groups(stays).reset_index(drop=True)


def decision_threshold(profile: ProtocolProfile, pooled: Pooled) -> float | np.ndarray:
    """The profile's fixed threshold, else the per-row thresholds chosen on validation."""
    if profile.threshold is not None:
        return profile.threshold
    return pooled.thresholds if pooled.thresholds is not None else 0.5


def relabel_threshold_rule(block: dict[str, Any], profile: ProtocolProfile) -> None:
    """Name the profile's fixed threshold in every fairness report (they say "validation")."""
    if profile.threshold is None:
        return
    fairness = block.get("fairness") or {}
    for report in [fairness, *(fairness.get("labels") or {}).values()]:
        if report.get("threshold_rule") == VALIDATION_THRESHOLD_RULE:
            report["threshold_rule"] = profile.threshold_rule


def add_fusion_gains(
    block: dict[str, Any],
    chosen: Chosen,
    candidates: Mapping[str, Candidate],
    fs: FeatureSet,
    pooled: Pooled,
    resamples: Resamples,
) -> None:
    """The multilabel gains: none without an EHR-only reference (with the reason), and per label
    over the better of the EHR-only and CXR-only references when both were evaluated."""
    if chosen.ehr_only is None:
        block["fusion_gain"] = None
        block["fusion_gain_reason"] = NO_EHR_REFERENCE
    elif chosen.cxr_only is not None:
        block["fusion_gain_unimodal"] = unimodal_gain(
            fs, fs.y[pooled.rows], pooled.clean, candidates,
            [chosen.ehr_only, chosen.cxr_only], resamples,
        )  # fmt: skip


def reference_scenarios(
    chosen: Chosen, candidates: Mapping[str, Candidate], fs: FeatureSet, pooled: Pooled
) -> dict[str, dict[str, dict[float, list[np.ndarray]]]]:
    """The EHR-only and best unimodal references' predictions under the entry's image-removing
    scenarios (:data:`~harness.evaluate.score.robustness.VERSUS_FAMILIES`), by rate; none for
    a scenario the EHR-only reference was not run under (the comparison that matters)."""
    from harness.evaluate.scenarios import SCENARIOS

    squeeze = fs.task.kind == "binary"
    ids = fs.stay_id[pooled.rows]
    names = [
        s for s in pooled.scenarios if s in SCENARIOS and SCENARIOS.get(s).family in VERSUS_FAMILIES
    ]
    out: dict[str, dict[str, dict[float, list[np.ndarray]]]] = {}
    if chosen.ehr_only is None:  # beating only an image model without images proves nothing
        return out
    for name in names:
        found = {
            ref: scenario_runs(candidates[ref], name, ids, squeeze)
            for ref in dict.fromkeys(r for r in (chosen.ehr_only, chosen.best_unimodal) if r)
        }
        if found.get(chosen.ehr_only) is None:
            continue
        for ref, runs in found.items():
            if runs is not None:
                out.setdefault(ref, {})[name] = runs
    return out


def _score_pooled(
    fs: FeatureSet, cohort: Cohort, pooled: Pooled, settings: EvalSettings, headline: str,
    refs: Mapping[str, list[np.ndarray]], ehr_only: str | None, resamples: Resamples,
    versus: Mapping[str, Mapping[str, Mapping[float, list[np.ndarray]]]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`score_predictions` of the pooled predictions with the chosen references."""
    kind, rows = fs.task.kind, pooled.rows
    extra = {"min_group_size": settings.min_group_size} if settings.min_group_size else {}
    return score_predictions(
        kind, fs.y[rows], pooled.clean, fs.subject_id[rows], fold=pooled.fold,
        label_names=list(fs.task.label_columns) if kind == "multilabel" else None,
        groups=groups_for(fs, cohort, rows), threshold=decision_threshold(settings.profile, pooled),
        reference_probs=dict(refs) or None, fusion_reference=ehr_only,
        unimodal_references=[],  # chosen on validation (add_fusion_gains), not by test value
        scenario_probs=pooled.scenarios or None, reference_scenarios=versus or None,
        main_metric=headline, resamples=resamples,
        **extra,
    )  # fmt: skip


def score_task_cohort(
    name: str, fs: FeatureSet, cohort: Cohort, pooled: Pooled, settings: EvalSettings,
    cohort_dir: str, others: Mapping[str, FeatureSet], dataset: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score one (task, cohort) of entry ``name`` under the settings' protocol profile.

    References (EHR-only, CXR-only, best unimodal, and per label the best single modality) are
    chosen on their stored validation predictions, among those evaluated on the same folds,
    seeds and training protocol. The fusion gain is reported over the EHR-only reference only:
    without one it is null, with the reason.
    """
    profile = settings.profile
    headline = profile.headline_metric(fs.task)
    ids = fs.stay_id[pooled.rows]
    candidates = find_candidates(name, fs, ids, settings, cohort_dir, dataset)
    chosen = choose_references(candidates, fs, headline, settings.protocol, settings.tuned)
    refs = {r: candidates[r].runs for r in chosen.names()}
    n_resamples = settings.n_resamples or DEFAULT_N_RESAMPLES
    resamples = bootstrap_indices(fs.subject_id[pooled.rows], n_resamples, DEFAULT_BOOTSTRAP_SEED)
    versus = reference_scenarios(chosen, candidates, fs, pooled)
    block = _score_pooled(
        fs, cohort, pooled, settings, headline, refs, chosen.ehr_only, resamples, versus
    )  # fmt: skip
    block["references"] = chosen.record()
    if fs.task.kind == "multilabel":
        add_fusion_gains(block, chosen, candidates, fs, pooled, resamples)
    relabel_threshold_rule(block, profile)
    if pooled.cross:
        block["cross_cohort"] = cross_cohort_block(
            cohort.name, pooled.cross, others, fs.task.kind, headline, fs.task.main_metric
        )
    return block
