"""Reference submissions: which evaluated models an entry is compared with, chosen on validation.

The EHR-only reference of a task and cohort is the best of :data:`EHR_REFERENCES` that has been
evaluated (by the headline metric on the references' stored *validation* predictions, never on
the test fold they are then compared on), among those evaluated on the same folds and seeds
under the same training protocol (profile and epoch cap): a fusion gain over a weak EHR baseline
would overstate what the image adds, and one over a luckily-tested one would understate it.
The CXR-only and best unimodal references are chosen the same way, and per label of a
multilabel task the better single modality.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.evaluate.paths import predictions_dir, result_path, unit_path
from harness.evaluate.pooling import probs_of
from harness.evaluate.protocol import DEFAULT_PROTOCOL, UNTUNED, reference_entry
from harness.evaluate.score.fusion import GAIN_METRIC
from harness.evaluate.units import read_unit
from harness.metrics.bootstrap import Resamples
from harness.metrics.comparisons import DEFAULT_ALPHA, fusion_gain
from harness.metrics.registry import HIGHER_IS_BETTER, METRICS
from harness.results import Result

if TYPE_CHECKING:
    from harness.evaluate.run import EvalSettings
    from harness.models.data import FeatureSet

log = logging.getLogger(__name__)

#: Reference submissions a result is compared with (paired deltas on shared resamples).
EHR_REFERENCES = ("ehr_lstm", "ehr_transformer")
CXR_REFERENCES = ("cxr_probe",)
UNIMODAL_REFERENCES = (*EHR_REFERENCES, *CXR_REFERENCES)


@dataclass(frozen=True)
class Candidate:
    """A reference evaluated on the same stays: its unit rows per seed (validation and test)
    and its pooled clean test predictions per seed."""

    frames: list[pd.DataFrame]
    runs: list[np.ndarray]


def same_training(reference: Result, settings: EvalSettings) -> bool:
    """Whether a reference's units were trained under this evaluation's profile and epoch cap."""
    profile = reference.protocol_record.get("profile", DEFAULT_PROTOCOL)
    tuned = reference.protocol_record.get("tuning", UNTUNED) != UNTUNED
    return (
        profile == settings.protocol
        and reference.max_epochs == settings.max_epochs
        and tuned == settings.tuned
    )


def reference_frames(
    entry: str, task: str, cohort_dir: str, settings: EvalSettings, dataset: str | None = None
) -> list[pd.DataFrame] | None:
    """Per seed, a reference's unit rows over the settings' folds, or None.

    None when it was not evaluated on these folds and seeds, or under another training protocol
    (profile or epoch cap): a paired delta against it would compare two protocols.
    """
    path = result_path(entry, dataset)
    if not path.is_file():
        return None
    try:
        reference = Result.load(path)
    except InputError:
        return None
    if reference.run_key is None:
        return None
    if not same_training(reference, settings):
        log.info("reference %s was trained under another protocol; not compared", entry)
        return None
    base = predictions_dir(entry, task, cohort_dir, reference.run_key, dataset)
    folds, seeds = settings.folds or (), settings.seeds or ()
    paths = [[unit_path(base, k, seed) for k in folds] for seed in seeds]
    if not all(p.is_file() for per_seed in paths for p in per_seed):
        return None
    return [pd.concat([read_unit(p)[0] for p in per_seed], ignore_index=True) for per_seed in paths]


def test_runs(
    frames: Sequence[pd.DataFrame], ids: np.ndarray, squeeze: bool
) -> list[np.ndarray] | None:
    """Pooled clean test predictions per seed on the stays ``ids``, or None if some are missing."""
    out = []
    for frame in frames:
        test = frame[(frame["part"] == "test") & (frame["scenario"] == "clean")]
        if not np.isin(ids, test["stay_id"].to_numpy()).all():
            return None
        out.append(probs_of(test, ids, squeeze))
    return out


def scenario_runs(
    candidate: Candidate, scenario: str, ids: np.ndarray, squeeze: bool
) -> dict[float, list[np.ndarray]] | None:
    """A reference's pooled test predictions per seed under ``scenario``, by rate (rate 0: its
    clean predictions), on the stays ``ids``; None when a rate or a stay is missing."""
    by_rate: dict[float, list[np.ndarray]] = {0.0: candidate.runs}
    for frame in candidate.frames:
        test = frame[(frame["part"] == "test") & (frame["scenario"] == scenario)]
        if test.empty:
            return None
        for rate, sub in test.groupby("rate"):
            if not np.isin(ids, sub["stay_id"].to_numpy()).all():
                return None
            by_rate.setdefault(float(cast(float, rate)), []).append(probs_of(sub, ids, squeeze))
    n_seeds = len(candidate.runs)
    if any(len(runs) != n_seeds for runs in by_rate.values()):
        return None
    return by_rate


def find_candidates(
    name: str, fs: FeatureSet, ids: np.ndarray, settings: EvalSettings, cohort_dir: str,
    dataset: str | None = None,
) -> dict[str, Candidate]:  # fmt: skip
    """Entry name -> the references of :data:`UNIMODAL_REFERENCES` that predicted every stay
    ``ids`` under this evaluation's protocol (entry ``name`` itself is never its reference)."""
    squeeze = fs.task.kind == "binary"
    found = {}
    for ref in UNIMODAL_REFERENCES:
        entry = reference_entry(ref, settings.protocol, settings.tuned)
        if entry == name:
            continue
        frames = reference_frames(entry, fs.task.name, cohort_dir, settings, dataset)
        runs = None if frames is None else test_runs(frames, ids, squeeze)
        if frames is None or runs is None:
            log.info("reference %s has no predictions for %s/%s", entry, fs.task.name, cohort_dir)
            continue
        found[entry] = Candidate(frames, runs)
    return found


def validation_value(
    metric: str,
    fs: FeatureSet,
    frames: Sequence[pd.DataFrame],
    squeeze: bool,
    column: int | None = None,
) -> float:
    """Mean over seeds of ``metric`` on a model's stored validation predictions.

    Labels come from ``fs``; ``column`` scores one label of a multilabel task. NaN when the
    metric is undefined on every seed.
    """
    fn = METRICS.get(metric)
    values = []
    for frame in frames:
        val = frame[(frame["part"] == "val") & (frame["scenario"] == "clean")]
        pos = pd.Index(fs.stay_id).get_indexer(val["stay_id"].to_numpy())
        val, pos = val[pos >= 0], pos[pos >= 0]
        if len(pos) == 0:
            continue
        p = probs_of(val, val["stay_id"].to_numpy(), squeeze)
        y = fs.y[pos]
        if column is not None:
            y, p = y[:, column], p[:, column]
        values.append(fn(y, p))
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def pick_reference(scores: Mapping[str, float | None], metric: str) -> str | None:
    """The candidate with the best (validation) value of ``metric``, by its direction.

    Candidates with an undefined value are never picked; ties keep the first in order. The
    choice never looks at the test fold the reference is then compared on: picking the better
    of two references by their test values would favour whichever had lucky test noise and bias
    every delta against the submission.
    """
    finite = {name: v for name, v in scores.items() if v is not None and np.isfinite(v)}
    if not finite:
        return None
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    return max(finite, key=lambda name: sign * finite[name])


def best_reference(
    refs: Sequence[str], val_scores: Mapping[str, float], metric: str, protocol: str,
    tuned: bool = False,
) -> str | None:  # fmt: skip
    """The best of the reference submissions ``refs`` that are candidates (entries with a
    validation score), by ``metric`` on validation; when it is undefined on validation for all
    of them, the first in order (never the test fold's best)."""
    present = [e for e in (reference_entry(r, protocol, tuned) for r in refs) if e in val_scores]
    return pick_reference({e: val_scores[e] for e in present}, metric) or next(iter(present), None)


@dataclass(frozen=True)
class Chosen:
    """The references of one (task, cohort): EHR-only, CXR-only, best unimodal (None: none)."""

    ehr_only: str | None
    cxr_only: str | None
    best_unimodal: str | None

    def record(self) -> dict[str, str | None]:
        """The block's ``references`` field."""
        return {
            "ehr_only": self.ehr_only,
            "cxr_only": self.cxr_only,
            "best_unimodal": self.best_unimodal,
        }

    def names(self) -> list[str]:
        """The chosen entries, each once, in the order of the paired deltas."""
        order = (self.ehr_only, self.best_unimodal, self.cxr_only)
        return [r for r in dict.fromkeys(order) if r]


def choose_references(
    candidates: Mapping[str, Candidate], fs: FeatureSet, metric: str, protocol: str,
    tuned: bool = False,
) -> Chosen:  # fmt: skip
    """Choose the EHR-only, CXR-only and best unimodal references on validation ``metric``."""
    squeeze = fs.task.kind == "binary"
    val = {e: validation_value(metric, fs, c.frames, squeeze) for e, c in candidates.items()}
    return Chosen(
        ehr_only=best_reference(EHR_REFERENCES, val, metric, protocol, tuned),
        cxr_only=best_reference(CXR_REFERENCES, val, metric, protocol, tuned),
        best_unimodal=best_reference(UNIMODAL_REFERENCES, val, metric, protocol, tuned),
    )


def unimodal_gain(
    fs: FeatureSet,
    y: np.ndarray,
    runs: list[np.ndarray],
    candidates: Mapping[str, Candidate],
    names: list[str],
    resamples: Resamples,
) -> dict[str, Any]:
    """Per-label gain over the best single modality on that label, chosen on validation."""
    labels = list(fs.task.label_columns)
    chosen = []
    for j in range(len(labels)):
        scores = {
            n: validation_value(GAIN_METRIC, fs, candidates[n].frames, False, j) for n in names
        }
        chosen.append(pick_reference(scores, GAIN_METRIC) or names[0])
    composite = [
        np.stack([candidates[chosen[j]].runs[s][:, j] for j in range(len(labels))], axis=1)
        for s in range(len(runs))
    ]
    gains = fusion_gain(labels, y, runs, composite, resamples, alpha=DEFAULT_ALPHA)
    for label, ref in zip(labels, chosen, strict=True):
        gains[label]["reference"] = ref
    return {
        "references": list(names),
        "metric": GAIN_METRIC,
        "alpha": DEFAULT_ALPHA,
        "labels": gains,
    }
