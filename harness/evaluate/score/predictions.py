"""Score one (task, cohort) from pooled out-of-fold predictions: the task block of result.json.

:func:`score_predictions` assembles the blocks of this package: accuracy (every metric with
its CI, per label, per resample), paired deltas against reference submissions, the multilabel
fusion gain, robustness curves and fairness. Every block is computed on the same patient-level
resamples, so entries and references are compared paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.evaluate.score.accuracy import (
    check_runs,
    multilabel_names,
    per_label,
    resample_values,
    score_metric,
)
from harness.evaluate.score.deltas import paired_deltas
from harness.evaluate.score.fairness import fairness_block
from harness.evaluate.score.fusion import fusion_blocks
from harness.evaluate.score.robustness import robustness_block
from harness.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_N_RESAMPLES,
    P_VALUE_METHOD,
    Resamples,
    bootstrap_indices,
)
from harness.metrics.comparisons import DEFAULT_ALPHA
from harness.metrics.fairness import DEFAULT_MIN_GROUP_SIZE
from harness.metrics.registry import main_metric_for, metrics_for
from harness.progress import bar as progress_bar
from harness.timing import stage


def _checked_runs(y: np.ndarray, y_prob: Sequence[np.ndarray]) -> tuple[list[np.ndarray], tuple]:
    """The per-seed predictions and their common shape, rows aligned with ``y``."""
    shape = tuple(np.shape(np.asarray(y_prob[0]))) if len(y_prob) else ()
    runs = check_runs("y_prob", y_prob, shape)
    if shape[:1] != (y.shape[0],):
        raise InputError(
            f"y_prob rows ({shape[:1]}) do not match y_true rows ({y.shape[0]})",
            fix="align pooled predictions with the stays' labels",
        )
    return runs, shape


def _resamples_for(
    subject_ids: np.ndarray, n_rows: int, resamples: Resamples | None, n_resamples: int, seed: int
) -> Resamples:
    """The shared resamples: the ones given (drawn for these rows) or drawn here."""
    if resamples is None:
        return bootstrap_indices(subject_ids, n_resamples, seed)
    if resamples.counts.shape[1] != n_rows:
        raise InputError("resamples were drawn for a different number of stays")
    return resamples


def _head(
    kind: str, main: str, n_rows: int, runs: list[np.ndarray], fold: np.ndarray | None,
    r: Resamples,
) -> dict[str, Any]:  # fmt: skip
    """What the block is about: kind, headline metric, sizes and the bootstrap."""
    return {
        "kind": kind,
        "main_metric": main,
        "n_stays": int(n_rows),
        "n_subjects": int(r.n_subjects),
        "n_units": len(runs) * (1 if fold is None else int(np.unique(fold).size)),
        "bootstrap": {**r.describe(), "p_value_method": P_VALUE_METHOD},
    }


def scoring_parts(
    kind: str,
    metrics: Sequence[str],
    reference_probs: Mapping[str, Any] | None,
    scenario_probs: Mapping[str, Any] | None,
    fairness: bool,
) -> int:
    """What the scoring bar counts: each metric's bootstrap, the per-label table, the paired
    deltas against each reference, the fusion gain, each scenario's curve and the fairness
    table (those the block has)."""
    n = len(metrics) + (kind == "multilabel")
    if reference_probs:
        n += len(reference_probs) + (kind == "multilabel")
    return n + len(scenario_probs or {}) + int(fairness)


def score_predictions(
    kind: str,
    y_true: np.ndarray,
    y_prob: Sequence[np.ndarray],
    subject_ids: np.ndarray,
    *,
    fold: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    groups: pd.DataFrame | None = None,
    threshold: float | np.ndarray = 0.5,
    reference_probs: Mapping[str, Sequence[np.ndarray]] | None = None,
    fusion_reference: str | None = None,
    unimodal_references: Sequence[str] | None = None,
    scenario_probs: Mapping[str, Mapping[float, Sequence[np.ndarray]]] | None = None,
    reference_scenarios: Mapping[str, Mapping[str, Mapping[float, Sequence[np.ndarray]]]]
    | None = None,
    main_metric: str | None = None,
    resamples: Resamples | None = None,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Score one (task, cohort): metrics with CIs, per-label, deltas, robustness, fairness.

    Args:
        kind: ``binary`` (y_true (n,), probs (n,)), ``multilabel`` ((n, L), (n, L)) or
            ``multiclass`` (y_true (n,) ints, probs (n, K)).
        y_prob: one pooled out-of-fold probability array per seed, rows aligned with y_true.
        subject_ids: patient id per row (bootstrap unit; never written out).
        fold: test fold per row, for mean/sd over folds x seeds (else units are seeds).
        groups: fairness group labels per row (:func:`harness.metrics.fairness.fairness_groups`).
        threshold: decision threshold(s) chosen on validation: scalar, per row (n,), or for
            multilabel per row and label (n, L) or per label (L,).
        reference_probs: reference submissions' pooled predictions (same layout) for paired
            deltas of every metric; ``fusion_reference`` (default: the first) gives the
            multilabel per-label fusion gain. ``unimodal_references`` (names in
            ``reference_probs``, e.g. the EHR-only and the CXR-only model) give a second
            per-label gain, ``fusion_gain_unimodal``, over the best of them on each label.
        scenario_probs: {scenario: {rate: pooled predictions per seed}} for robustness curves
            of the main metric; the clean rate holds ``y_prob`` itself. With both
            modality-removing scenarios (``cxr_missing_mcar`` and ``ehr_missing``) at rate 1,
            the block gets the modality-reliance table (``reliance``).
        reference_scenarios: {reference: {scenario: {rate: predictions per seed}}}: the
            references under the same scenarios, compared with the entry at every rate of the
            image-removing scenarios (``versus`` and ``helps_up_to`` of those curves).
        main_metric: the task YAML's ``main_metric`` (what checkpoint selection used); the
            headline metric is its scorer name (:func:`main_metric_for`), else the kind's default.
    """
    y = np.asarray(y_true)
    runs, shape = _checked_runs(y, y_prob)
    r = _resamples_for(subject_ids, y.shape[0], resamples, n_resamples, seed)
    fold_arr = None if fold is None else np.asarray(fold)
    main = main_metric_for(kind, main_metric)
    metrics = metrics_for(kind)
    parts = scoring_parts(kind, metrics, reference_probs, scenario_probs, groups is not None)
    with progress_bar("scoring", parts, unit="part") as bar:
        n = f"{r.n_resamples} resamples"
        scored = {}
        with stage("scoring.bootstrap"):
            for name in metrics:
                bar.doing(f"{name} ({n})")
                scored[name] = score_metric(name, y, runs, fold_arr, r)
                bar.advance()
        block = _head(kind, main, y.shape[0], runs, fold_arr, r)
        block["metrics"] = {name: s.summary for name, s in scored.items()}
        block["main_resamples"] = resample_values(scored[main].boot)
        labels = None
        with stage("scoring.bootstrap"):
            if kind == "multilabel":
                labels = multilabel_names(label_names, y)
                bar.doing(f"per label ({n})")
                block["per_label"] = per_label(labels, y, runs, fold_arr, r)
                bar.advance()
            if reference_probs:
                deltas = {}
                for ref, ref_runs in reference_probs.items():
                    bar.doing(f"paired deltas vs {ref} ({n})")
                    deltas.update(paired_deltas({ref: ref_runs}, scored, y, shape, fold_arr, r))
                    bar.advance()
                block["paired_deltas"] = deltas
                if kind == "multilabel":
                    bar.doing(f"fusion gain ({n})")
                    block.update(
                        fusion_blocks(
                            labels or [],
                            y,
                            runs,
                            reference_probs,
                            shape,
                            r,
                            fusion_reference=fusion_reference,
                            unimodal_references=unimodal_references,
                            alpha=alpha,
                        )  # fmt: skip
                    )
                    bar.advance()
        if scenario_probs:
            with stage("scoring.robustness"):
                bar.doing(f"robustness ({n})")
                block["robustness"], reliance = robustness_block(
                    scenario_probs, main, y_prob, scored[main], y, shape, r,
                    reference_scenarios=reference_scenarios,
                    on_scenario=lambda _: bar.advance(),
                )  # fmt: skip
                if reliance is not None:
                    block["reliance"] = reliance
        if groups is not None:
            with stage("scoring.fairness"):
                bar.doing("fairness")
                block["fairness"] = fairness_block(
                    kind, y, runs, groups, threshold=threshold, labels=labels,
                    min_group_size=min_group_size,
                )  # fmt: skip
                bar.advance()
        return block
