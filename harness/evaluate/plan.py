"""Planning an evaluation: which tasks, cohorts and units, and which units are already done.

:func:`plan_evaluation` fixes everything that does not need the data: the tasks the submission
declares, the scenarios, the run key of the unit folders, the cohorts and their folds. Feature
sets are large, so they are loaded one task at a time (:func:`plan_task`): a task's cohorts
without labels or stays are skipped with the reason, and every unit (cohort, fold, seed) is
marked to reuse (its file is finished and readable) or to train.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.errors import InputError
from harness.evaluate.paths import predictions_dir, result_path, unit_path
from harness.evaluate.units import Unit, finished, run_key

if TYPE_CHECKING:
    from harness.cohort.load import Cohort
    from harness.cohort.spec import TaskSpec
    from harness.evaluate.run import EvalSettings
    from harness.evaluate.tune import TunedConfigs
    from harness.models.data import FeatureSet
    from harness.models.submission import Submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """The leaderboard entry an evaluation writes: its name and dataset."""

    name: str
    dataset: str

    @property
    def result_path(self) -> Path:
        return result_path(self.name, self.dataset)


@dataclass
class Plan:
    """What one evaluation covers, before any feature set is loaded."""

    sub: Submission
    entry: Entry
    #: The settings with their folds resolved from the cohorts.
    settings: EvalSettings
    tasks: list[str]
    scenarios: list[str]
    encoder_key: str
    #: Key of the unit folders (:func:`harness.evaluate.units.run_key`).
    key: str
    cohorts: dict[str, Cohort]
    #: The tuned configuration of every unit (``--tuned``), else None: the submission's own.
    tuned: TunedConfigs | None = None
    #: Cohort -> what the result records of its leak audit (:mod:`harness.audit`).
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self, unit: Unit) -> dict[str, Any] | None:
        """The configuration ``unit`` trains with (None: the submission's own settings)."""
        return None if self.tuned is None else self.tuned.config(unit.task, unit.cohort, unit.fold)

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(self.settings.folds or ())

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.settings.seeds or ())

    @property
    def n_units(self) -> int:
        """Units of every task and cohort (before any is skipped)."""
        return len(self.tasks) * len(self.cohorts) * len(self.folds) * len(self.seeds)


@dataclass(frozen=True)
class PlannedUnit:
    """A unit, its file, and whether that file is finished (reused rather than trained)."""

    unit: Unit
    path: Path
    reuse: bool


@dataclass
class TaskPlan:
    """One task of a plan: its cohorts' feature sets, unit folders and units."""

    task: str
    #: Cohort -> feature set, for the cohorts that can score the task.
    sets: dict[str, FeatureSet]
    #: Cohort -> the folder of its unit files.
    where: dict[str, Path]
    #: Cohort -> the other cohorts each fold model also predicts (cross-cohort scores).
    others: dict[str, dict[str, FeatureSet]]
    #: Whether one worker may serve fold k of every cohort (folds follow the subject).
    shared_folds: bool
    units: dict[tuple[str, int, int], PlannedUnit] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def unit(self, cohort: str, fold: int, seed: int) -> PlannedUnit:
        return self.units[(cohort, fold, seed)]


# --------------------------------------------------------------------------------------------
# The whole evaluation


def requested_tasks(sub: Submission, settings: EvalSettings) -> list[str]:
    """The settings' tasks the submission declares; none is an error."""
    tasks = [t for t in settings.tasks or () if sub.tasks is None or t in sub.tasks]
    if not tasks:
        raise InputError(
            f"submission {sub.name!r} declares none of the requested tasks {settings.tasks}",
            path=sub.yaml_path,
            fix="change `tasks` in submission.yaml or pass --task",
        )
    return tasks


def scenario_names(settings: EvalSettings) -> list[str]:
    """The settings' scenarios (every registered one by default), each checked to exist."""
    from harness.evaluate.scenarios import SCENARIOS

    names = list(settings.scenarios or SCENARIOS.names())
    for name in names:
        SCENARIOS.get(name)
    return names


def plan_evaluation(sub: Submission, settings: EvalSettings, entry: Entry) -> Plan:
    """Tasks, scenarios, run key, cohorts and folds of evaluating ``sub`` as ``entry``."""
    from harness.cohort import load_cohort
    from harness.encode.registry import encoder_key_for

    tasks = requested_tasks(sub, settings)
    scenarios = scenario_names(settings)
    encoder_key = encoder_key_for(settings.encoder)
    cohorts = {c: load_cohort(c, entry.dataset) for c in settings.cohorts}
    audits = audit_cohorts(cohorts, settings)
    resolved = resolve_folds(settings, cohorts)
    tuned = None
    if settings.tuned:
        from harness.evaluate.tune import load_tuned

        tuned = load_tuned(
            sub, tasks, cohorts, resolved.folds or (), entry.dataset, settings.encoder
        )
    key = run_key(sub, settings, encoder_key, scenarios, tuned.digest() if tuned else None)
    return Plan(sub, entry, resolved, tasks, scenarios, encoder_key, key, cohorts, tuned, audits)


def audit_cohorts(cohorts: Mapping[str, Cohort], settings: EvalSettings) -> dict[str, dict]:
    """The leak audit of every cohort (cached, or run now): what the result records of it.

    Raises:
        LeakError: an audit failed and ``settings.allow_leaks`` is not set.
    """
    from harness.audit import ensure_audit

    return {
        c: ensure_audit(cohort, settings.encoder, allow_leaks=settings.allow_leaks).provenance(
            allowed=settings.allow_leaks
        )
        for c, cohort in cohorts.items()
    }


# --------------------------------------------------------------------------------------------
# One task


def unavailable_reason(cohort: Cohort, spec: TaskSpec) -> str | None:
    """Why a cohort cannot score a task (its labels are missing), or None when it can."""
    columns = list(spec.label_columns) if hasattr(spec, "label_columns") else [spec.name]
    listed = set(cohort.manifest.get("labels_unavailable") or ())
    gone = [c for c in columns if c in listed]
    if gone:
        return f"labels unavailable in this dataset ({', '.join(gone)})"
    absent = [c for c in columns if c not in cohort.stays.columns]
    if absent:
        return f"label column(s) not in the cohort ({', '.join(absent)})"
    if len(cohort.stays) == 0:
        return "the cohort has no stays"
    empty = [c for c in columns if cohort.stays[c].isna().all()]
    if empty:
        return f"label column(s) entirely null ({', '.join(empty)})"
    return None


def subgroup_reference(
    fs: FeatureSet, cohorts: Mapping[str, Cohort], dataset: str | None = None
) -> FeatureSet:
    """``fs`` with the ``base`` cohort's CXR availability per group attached, for the
    `cxr_missing_subgroup` scenario (on ``matched`` every stay has an image: its own
    availability would make the scenario MCAR)."""
    from harness.evaluate.scenarios import AVAILABILITY_COHORT, with_availability_reference

    base = cohorts.get(AVAILABILITY_COHORT)
    if base is None:
        from harness.cohort import load_cohort

        base = load_cohort(AVAILABILITY_COHORT, dataset)
    return with_availability_reference(fs, base.stays, AVAILABILITY_COHORT)


def cohort_n_folds(cohort: Any) -> int:
    """Folds of a built cohort: its own partition's (a CareBench folder), else its fold column's
    highest value (``n_folds`` of ``cohort.yaml`` at build time); 0 for an empty cohort."""
    from harness.cohort.carebench import SPLITS_FILE

    given = Path(getattr(cohort, "path", "") or "") / SPLITS_FILE
    if getattr(cohort, "path", None) is not None and given.is_file():
        return int(pd.read_parquet(given, columns=["fold"])["fold"].max())
    folds = cohort.stays["fold"] if "fold" in cohort.stays.columns else pd.Series(dtype=float)
    return int(folds.max()) if len(folds.dropna()) else 0


def resolve_folds(settings: EvalSettings, cohorts: Mapping[str, Any]) -> EvalSettings:
    """``settings`` with its folds set: every fold of the cohorts when none were asked for.

    The cohorts of one dataset share their fold assignment; folds outside 1..n_folds are an
    error naming the valid ones.
    """
    counts = {c: cohort_n_folds(cohort) for c, cohort in cohorts.items()}
    known = {n for n in counts.values() if n > 0}
    if len(known) > 1:
        raise InputError(
            f"the cohorts have different fold counts ({counts})",
            fix="rebuild the cohorts together with `harness cohort build`",
        )
    n_folds = known.pop() if known else 0
    if settings.folds is None:
        return replace(settings, folds=tuple(range(1, n_folds + 1)))
    bad = [k for k in settings.folds if n_folds and not 1 <= k <= n_folds]
    if bad:
        raise InputError(
            f"fold(s) {bad} do not exist: the cohort has folds 1..{n_folds}",
            fix=f"pass --folds with numbers between 1 and {n_folds}",
        )
    return settings


def feature_set_for(
    cohort: Cohort, spec: TaskSpec, encoder: str, cohorts: Mapping[str, Cohort], dataset: str
) -> tuple[FeatureSet | None, str]:
    """The cohort's feature set for the task, or None with the reason it cannot score it
    (``cohorts``: those of the evaluation, for the subgroup scenario's reference)."""
    from harness.models.data import load_feature_set

    reason = unavailable_reason(cohort, spec)
    if reason:
        return None, reason
    fs = load_feature_set(cohort, spec, encoder)
    if len(fs) == 0:
        return None, "no labelled stays in this cohort"
    fs = fs.replace(provenance={**fs.provenance, "n_folds": cohort_n_folds(cohort)})
    return subgroup_reference(fs, cohorts, dataset), ""


def _feature_set(plan: Plan, spec: TaskSpec, cohort: Cohort) -> tuple[FeatureSet | None, str]:
    return feature_set_for(cohort, spec, plan.settings.encoder, plan.cohorts, plan.entry.dataset)


def folds_shared_by_subject(sets: Sequence[FeatureSet]) -> bool:
    """Whether the cohorts give every subject the same fold and use the harness's split rule.

    Then fold k's test stays of one cohort are never in fold k's training stays of another,
    and one worker may serve fold k of every cohort.
    """
    if any(getattr(fs, "given_splits", None) is not None for fs in sets):
        return False
    frames = [pd.DataFrame({"subject_id": fs.subject_id, "fold": fs.fold}) for fs in sets]
    if not frames:
        return True
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates()
    return not pairs["subject_id"].duplicated().any()


def _plan_units(plan: Plan, task_plan: TaskPlan) -> None:
    """Every (cohort, fold, seed) of the task, marked to reuse when its file is finished."""
    for c in task_plan.sets:
        for k in plan.folds:
            for s in plan.seeds:
                unit = Unit(task_plan.task, c, k, s)
                path = unit_path(task_plan.where[c], k, s)
                task_plan.units[(c, k, s)] = PlannedUnit(unit, path, finished(path))


def plan_task(plan: Plan, task: str) -> TaskPlan:
    """Load the task's feature sets (skipping the cohorts that cannot score it) and plan its
    units."""
    from harness.cohort.spec import load_task

    spec = load_task(task)
    sets, skipped = {}, []
    for c, cohort in plan.cohorts.items():
        fs, reason = _feature_set(plan, spec, cohort)
        if fs is None:
            log.warning("%s/%s of %s skipped: %s", task, c, plan.entry.dataset, reason)
            skipped.append({"task": task, "cohort": c, "reason": reason})
            continue
        sets[c] = fs
    where = {
        c: predictions_dir(
            plan.entry.name, task, plan.cohorts[c].path.name, plan.key, plan.entry.dataset
        )
        for c in sets
    }
    cross = plan.settings.cross_cohort
    others = {c: ({o: f for o, f in sets.items() if o != c} if cross else {}) for c in sets}
    shared = folds_shared_by_subject(list(sets.values()))
    task_plan = TaskPlan(task, sets, where, others, shared, skipped=skipped)
    _plan_units(plan, task_plan)
    return task_plan
