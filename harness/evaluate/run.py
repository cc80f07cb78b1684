"""`harness evaluate`: train folds x seeds, predict every scenario, score, write ``result.json``.

An evaluation is planned, run and scored, one task at a time:

- **plan** (:mod:`harness.evaluate.plan`): the tasks the submission declares, the scenarios, the
  cohorts and their folds, the run key of the unit folders; per task, the feature sets (cohorts
  without labels or stays are skipped with the reason, recorded in ``result.skipped``) and which
  (cohort, fold, seed) units are finished (reused) or to train;
- **run** (:mod:`harness.evaluate.execute`): each unit to train goes through the executor's
  runner (``isolated`` sandbox by default, ``local`` in-process) and leaves one parquet file of
  per-stay predictions (:mod:`harness.evaluate.units`), written atomically, so an interrupted
  evaluation resumes where it stopped;
- **score** (:mod:`harness.evaluate.score`): the out-of-fold test predictions are pooled per seed
  and scored with the reference submissions' predictions on the same stays (paired deltas),
  the robustness scenarios and the fairness groups. References are chosen on their stored
  *validation* predictions, among references evaluated under the same training protocol.

Results live per dataset and submission in ``cache/results/<dataset>/<name>/``
(:mod:`harness.evaluate.paths`); the entry name belongs to the folder first evaluated under it
(``owner.json``, ``--replace`` to take it over). Folds follow the cohort: a source with its own
partition (a CareBench folder) trains and tests on each fold's given train/val/test stays,
otherwise the harness rule applies (`FeatureSet.split`).

A protocol profile (:data:`PROFILES`: ``honest``, the default, or ``carebench``) fixes the seeds,
the tasks, the checkpoint-selection and headline metrics and the decision threshold; the profile
and the run's folds, seeds, epoch cap and resamples are recorded as ``provenance.protocol``, and
the leaderboard ranks entries of one protocol only against each other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import config
from harness.cohort.spec import list_tasks
from harness.errors import HarnessError, InputError, SubmissionError, UsageError
from harness.evaluate.execute import LazyRunner, Progress, ProgressFn, run_task
from harness.evaluate.paths import OWNER_FILE, result_dir
from harness.evaluate.plan import Entry, Plan, TaskPlan, plan_evaluation, plan_task
from harness.evaluate.pooling import pool_units
from harness.evaluate.protocol import DEFAULT_PROTOCOL, UNTUNED, ProtocolProfile, protocol_suffix
from harness.evaluate.score import score_task_cohort
from harness.evaluate.scoring_key import (
    record_scoring,
    reference_inputs,
    reusable_result,
    scoring_key,
    sessions_to_train,
    units_present,
)
from harness.evaluate.units import Unit, read_unit, run_unit
from harness.progress import bar as progress_bar
from harness.results import Result
from harness.results.document import build_result, failed_result, provenance, write_result
from harness.timing import stage

if TYPE_CHECKING:
    from harness.cohort.load import Cohort
    from harness.executors import Executor
    from harness.models.submission import Submission

log = logging.getLogger(__name__)

DEFAULT_TASKS = tuple(list_tasks())  # every task file of tasks/ (the task registry)
DEFAULT_COHORTS = ("base", "matched")
DEFAULT_SEEDS = (0, 1, 2)
#: Epoch cap of ``--quick`` runs (the submission's own patience still applies).
QUICK_MAX_EPOCHS = 15

#: What callers import from here; ``Unit``, ``read_unit`` and ``run_unit`` live in
#: :mod:`harness.evaluate.units` and are importable from here too.
__all__ = [
    "DEFAULT_PROTOCOL",
    "PROFILES",
    "EvalOutcome",
    "EvalSettings",
    "ProtocolProfile",
    "Unit",
    "claim_entry",
    "entry_name",
    "evaluate",
    "headline_rows",
    "protocol_record",
    "read_unit",
    "run_unit",
]

#: The protocols `harness evaluate --protocol` knows. ``honest`` is the harness's own: selection
#: and headline on the task YAML's main metric, thresholds chosen on validation. ``carebench``
#: reproduces the reference study's choices so its numbers can be compared with the paper's;
#: its entries are named ``<name>.carebench`` and never ranked with honest ones.
PROFILES: dict[str, ProtocolProfile] = {
    "honest": ProtocolProfile(
        "honest",
        "selection and headline on the task's main_metric, thresholds chosen on validation",
        seeds=DEFAULT_SEEDS,
        tasks=DEFAULT_TASKS,
    ),
    "carebench": ProtocolProfile(
        "carebench",
        "CareBench: selection on validation PRAUC (mortality, phenotypes) and accuracy (LoS), "
        "threshold 0.5, seeds 42/123/1234, unweighted kappa, ICU mortality",
        seeds=(42, 123, 1234),
        tasks=("mortality_icu", "phenotype", "los"),
        selection={"binary": "auprc", "multilabel": "auprc_macro", "multiclass": "accuracy"},
        headline={"binary": "auprc", "multilabel": "auprc_macro", "multiclass": "kappa_unweighted"},
        threshold=0.5,
        excluded_tasks=(
            ("mortality_in_hospital", "its mortality task is ICU mortality (mortality_icu)"),
        ),
    ),
}


#: Where an evaluation's pending units run (``--executor``): this process, or a Ray cluster.
SCHEDULERS = ("local", "ray")


@dataclass
class EvalSettings:
    """What one evaluation covers; ``quick()`` gives one fold and one seed.

    ``tasks`` and ``seeds`` default to the protocol profile's; ``folds`` to every fold of the
    cohort (`resolve_folds`, from the cohort's fold column: ``n_folds`` of ``cohort.yaml``).
    """

    tasks: tuple[str, ...] | None = None
    cohorts: tuple[str, ...] = DEFAULT_COHORTS
    folds: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    dataset: str | None = None
    encoder: str = "default"
    device: str | None = None
    max_epochs: int | None = None
    scenarios: tuple[str, ...] | None = None  # None = every registered scenario
    cross_cohort: bool = True
    n_resamples: int | None = None
    min_group_size: int | None = None
    #: Train-time CXR dropout overriding the submission's ``train.cxr_dropout``; the result is
    #: then a separate entry named ``<name>.cxrdrop<rate>`` (the reference study's sweep).
    train_cxr_dropout: float | None = None
    #: Where units run: ``isolated`` (sandbox, the default) or ``local`` (trusted, in-process);
    #: None = ``HARNESS_EXECUTOR`` or ``isolated``.
    executor: str | None = None
    #: Where pending units are scheduled: ``local`` (one after another in this process) or
    #: ``ray`` (each unit a Ray task, :mod:`harness.evaluate.cluster`); the result is the same.
    scheduler: str = "local"
    #: The Ray cluster (``auto``, ``ray://host:10001``); None starts a local Ray instance.
    ray_address: str | None = None
    #: Let this folder take over an entry name another folder has used (``--replace``).
    replace: bool = False
    #: Protocol profile (:data:`PROFILES`): part of the entry's name and of its ranking key.
    protocol: str = DEFAULT_PROTOCOL
    #: Train each unit with the configuration ``harness tune`` chose for its (task, cohort,
    #: fold) (:mod:`harness.evaluate.tune`); the entry is ``<name>.tuned``, ranked apart.
    tuned: bool = False
    #: Evaluate a cohort whose leak audit failed (`harness audit`); the result records it.
    allow_leaks: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UsageError(
                f"unknown executor {self.scheduler!r}; valid executors: {', '.join(SCHEDULERS)}"
            )
        if self.protocol not in PROFILES:
            raise UsageError(
                f"unknown protocol {self.protocol!r}; valid protocols: {', '.join(PROFILES)}"
            )
        profile = PROFILES[self.protocol]
        if self.tasks is None:
            self.tasks = profile.tasks
        if self.seeds is None:
            self.seeds = profile.seeds
        for task, reason in profile.excluded_tasks:
            if task in self.tasks:
                raise UsageError(
                    f"the {profile.name} protocol does not evaluate {task}: {reason}; "
                    "drop it from --task"
                )

    @property
    def profile(self) -> ProtocolProfile:
        return PROFILES[self.protocol]

    @classmethod
    def quick(cls, **overrides: Any) -> EvalSettings:
        protocol = overrides.get("protocol") or DEFAULT_PROTOCOL
        seeds = PROFILES[protocol].seeds[:1] if protocol in PROFILES else (0,)
        base: dict[str, Any] = {"folds": (1,), "seeds": seeds, "max_epochs": QUICK_MAX_EPOCHS}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def protocol_record(
    settings: EvalSettings, tasks: Sequence[str], tuning: str = UNTUNED
) -> dict[str, Any]:
    """``provenance.protocol``: what makes two entries comparable (part of the ranking key)."""
    from harness.cohort.spec import load_task
    from harness.metrics.bootstrap import DEFAULT_N_RESAMPLES

    profile = settings.profile
    return {
        "profile": profile.name,
        "folds": [int(k) for k in settings.folds or ()],
        "seeds": [int(s) for s in settings.seeds or ()],
        "max_epochs": settings.max_epochs,
        "n_resamples": int(settings.n_resamples or DEFAULT_N_RESAMPLES),
        "selection": {t: profile.selection_metric(load_task(t)) for t in tasks},
        "threshold": profile.threshold_rule,
        "tuning": tuning,
    }


def entry_name(submission_name: str, settings: EvalSettings) -> str:
    """Leaderboard entry name: the submission's, plus ``.cxrdrop<rate>`` under the override and
    ``.<profile>`` under a protocol profile other than ``honest`` (e.g. ``ehr_lstm.carebench``):
    an entry's identity includes its protocol, so both can be kept and compared."""
    name = submission_name
    if settings.train_cxr_dropout is not None:
        name += f".cxrdrop{settings.train_cxr_dropout:g}"
    return name + protocol_suffix(settings.protocol, settings.tuned)


# --------------------------------------------------------------------------------------------
# Entry names belong to folders


def _folder_identity(path: Path) -> str:
    """A folder's identity: its resolved path (kept locally in ``owner.json``, never published)."""
    return str(Path(path).resolve())


def _recorded_owner(owner_path: Path) -> str | None:
    """The folder ``owner.json`` names, or None when it is unreadable."""
    try:
        return json.loads(owner_path.read_text(encoding="utf-8")).get("folder")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def claim_entry(sub: Submission, name: str, dataset: str, *, replace: bool = False) -> None:
    """Record that ``sub``'s folder owns entry ``name``, or refuse when another folder does.

    Names of the reference zoo (folders of ``config.submissions_dir()``) belong to those folders
    only: every paired delta is computed against them, so no other folder may take one, even
    with ``replace``. Other names belong to the first folder evaluated under them.
    """
    from harness.io import atomic_write_json

    folder = _folder_identity(sub.path)
    reserved = config.submissions_dir() / sub.name
    if (reserved / "submission.yaml").is_file() and _folder_identity(reserved) != folder:
        raise SubmissionError(
            f"{sub.yaml_path.name}: `name: {sub.name}` is reserved for the reference submission "
            f"of the same name. Fix: give your submission its own name in `name:`"
        )
    owner_path = result_dir(name, dataset) / OWNER_FILE
    if owner_path.is_file():
        owner = _recorded_owner(owner_path)
        if owner != folder and not replace:
            raise SubmissionError(
                f"{sub.yaml_path.name}: entry {name!r} on dataset {dataset!r} already belongs to "
                f"another submission folder ({Path(owner).name if owner else 'unknown'}). Fix: "
                "choose another `name:`, or pass --replace to take the entry over"
            )
    atomic_write_json(owner_path, {"folder": folder, "name": name})


# --------------------------------------------------------------------------------------------
# Scoring a task and assembling the result


def score_task(
    plan: Plan, task_plan: TaskPlan, progress: Progress | None = None
) -> tuple[dict[str, dict[str, Any]], float]:
    """Cohort -> block of one task (every fold x seed pooled), and the units' training time."""
    blocks, seconds = {}, 0.0
    for c, fs in task_plan.sets.items():
        if progress is not None:
            progress.describe(f"scoring {task_plan.task}/{c}")
        cohort = plan.cohorts[c]
        pooled = pool_units(fs, task_plan.where[c], plan.folds, plan.seeds)
        seconds += pooled.train_seconds
        blocks[c] = score_task_cohort(
            plan.entry.name, fs, cohort, pooled, plan.settings, cohort.path.name,
            task_plan.others[c], plan.entry.dataset,
        )  # fmt: skip
    return blocks, seconds


def _task_versions(tasks: Sequence[str]) -> dict[str, str]:
    from harness.cohort.spec import load_task

    return {t: str(load_task(t).version) for t in tasks}


def result_provenance(
    plan: Plan, executor: Executor, wall_s: float, train_seconds: float
) -> dict[str, Any]:
    """The result's provenance: code, inputs, run key, timing, executor and protocol."""
    settings, sub = plan.settings, plan.sub
    dropout = sub.train.cxr_dropout
    return provenance(
        encoder_keys=[plan.encoder_key],
        task_versions=_task_versions(plan.tasks),
        seeds=list(plan.seeds),
        folds=list(plan.folds),
        wall_time_s=round(wall_s, 3),
        run_key=plan.key,
        train_seconds=round(train_seconds, 3),
        scenarios=plan.scenarios,
        executor=executor.name,
        max_epochs=settings.max_epochs,
        train_cxr_dropout=dropout
        if settings.train_cxr_dropout is None
        else settings.train_cxr_dropout,
        submission=sub.name,
        inputs=sorted(sub.inputs),
        protocol=protocol_record(settings, plan.tasks, plan.tuned.label if plan.tuned else UNTUNED),
        **({"tuning": plan.tuned.record()} if plan.tuned else {}),
    )


def cohort_records(
    cohorts: Mapping[str, Cohort], audits: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The result's ``cohorts``: fingerprint and size of every cohort evaluated on, and the
    verdict of its leak audit."""
    audits = audits or {}
    return {
        c: {
            "fingerprint": cohort.fingerprint,
            "n_stays": int(len(cohort.stays)),
            "n_subjects": int(cohort.stays["subject_id"].nunique()),
            **({"audit": dict(audits[c])} if c in audits else {}),
        }
        for c, cohort in cohorts.items()
    }


def _nothing_evaluated(plan: Plan, skipped: Sequence[Mapping[str, str]]) -> InputError:
    return InputError(
        f"nothing to evaluate on dataset {plan.entry.dataset!r}: "
        + "; ".join(f"{s['task']}/{s['cohort']}: {s['reason']}" for s in skipped),
        fix="pick tasks with labels in this dataset (--task) or another --dataset",
    )


# --------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class EvalOutcome:
    """What `evaluate` did: the result written and how many units it trained and reused."""

    name: str
    result_path: Path
    result: dict[str, Any]
    units_total: int
    units_run: int
    units_reused: int
    seconds: float
    headline: list[dict[str, Any]] = field(default_factory=list)
    #: Whether result.json was scored by this call (False: the recorded result was still valid).
    scored: bool = True


def open_entry(sub: Submission, settings: EvalSettings) -> tuple[Entry, Executor]:
    """The entry ``sub`` is evaluated as and the executor its units run on; the sandbox is
    checked and the entry name claimed for the submission's folder."""
    from harness.executors import get_executor

    entry = Entry(entry_name(sub.name, settings), settings.dataset or config.DEFAULT_DATASET)
    executor = get_executor(settings.executor)
    if executor.name != "local":
        from harness.executors.isolated import require_sandbox

        require_sandbox()
    claim_entry(sub, entry.name, entry.dataset, replace=settings.replace)
    return entry, executor


def run_and_score(
    plan: Plan,
    runner: LazyRunner,
    progress: Progress,
    before_scoring: Callable[[], object] | None = None,
    *,
    defer_scoring: bool = False,
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict[str, str]], float]:
    """Every task of the plan: plan its units, run them, score its cohorts.

    ``before_scoring`` is called once, before the first task is scored. Each task is scored as
    soon as it is trained (only one task's feature sets are held at a time), or, with
    ``defer_scoring``, every task is trained first and then every task scored (evaluations
    running side by side wait in ``before_scoring`` for the reference submissions their scores
    are compared with, and should not hold a core meanwhile).
    Returns the task blocks, the skipped (task, cohort) pairs and the units' training time.
    """
    blocks: dict[str, dict[str, dict[str, Any]]] = {}
    skipped: list[dict[str, str]] = []
    train_seconds = 0.0
    trained: list[TaskPlan] = []
    started_scoring = False

    def score(task_plan: TaskPlan) -> None:
        nonlocal train_seconds, started_scoring
        if not started_scoring and before_scoring is not None:
            before_scoring()
        started_scoring = True
        with stage("scoring.other"):
            by_cohort, seconds = score_task(plan, task_plan, progress)
        train_seconds += seconds
        if by_cohort:
            blocks[task_plan.task] = by_cohort

    cluster = runner.cluster  # Ray: every unit of every task in flight at once
    in_flight: list[tuple[TaskPlan, dict[Any, Any]]] = []
    try:
        for task in plan.tasks:
            progress.describe(f"loading {task}")
            with stage("load"):
                task_plan = plan_task(plan, task)
            skipped += task_plan.skipped
            progress.skip(len(task_plan.skipped) * len(plan.folds) * len(plan.seeds))
            if cluster is not None:
                in_flight.append((task_plan, cluster.submit(plan, task_plan)))
                continue
            run_task(runner, plan, task_plan, progress)
            if defer_scoring:
                trained.append(task_plan)
            else:
                score(task_plan)
        if cluster is not None:  # each unit file written the moment its task finishes
            cluster.collect(in_flight, progress)
    except BaseException:
        if cluster is not None:  # nothing of this evaluation is left running
            cluster.cancel(in_flight)
        raise
    for task_plan, _ in in_flight:
        if defer_scoring:
            trained.append(task_plan)
        else:
            score(task_plan)
    if defer_scoring:
        runner.shutdown()  # nothing is trained from here on: free the workers while waiting
        for task_plan in trained:
            score(task_plan)
    if not blocks:
        raise _nothing_evaluated(plan, skipped)
    return blocks, skipped, train_seconds


def evaluate_plan(
    plan: Plan,
    runner: LazyRunner,
    executor: Executor,
    progress: Progress,
    started: float,
    before_scoring: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run and score the plan, and write its ``result.json`` and the key it was scored under
    (:mod:`harness.evaluate.scoring_key`); returns the result.

    ``before_scoring`` (evaluations side by side: wait for the references) is called once
    every task is trained, before anything is scored."""
    references: dict[str, Any] = {}

    def snapshot_references() -> None:
        if before_scoring is not None:
            progress.describe("waiting for the references")
            before_scoring()
        progress.describe("reading the references")
        references.update(reference_inputs(plan))  # what the scores will be compared with

    blocks, skipped, train_seconds = run_and_score(
        plan, runner, progress, snapshot_references, defer_scoring=before_scoring is not None
    )
    if progress.callback:
        progress.callback("scored", progress.total, progress.total)
    progress.describe("writing the result")
    prov = result_provenance(plan, executor, time.perf_counter() - started, train_seconds)
    result = build_result(
        plan.entry.name, plan.sub.version, plan.entry.dataset,
        cohorts=cohort_records(plan.cohorts, plan.audits), tasks=blocks,
        provenance_record=prov, check=False,
    )  # fmt: skip
    if skipped:
        result["skipped"] = skipped
    with stage("write"):
        write_result(result, plan.entry.result_path)
        record_scoring(plan, scoring_key(plan, references))
    return result


def record_failure(sub: Submission, entry: Entry, exc: HarnessError) -> None:
    """Write a ``failed`` result, unless a result exists: a broken re-run never replaces good
    numbers (nor an earlier failure's record)."""
    from harness.executors import UnitFailure

    if entry.result_path.is_file():
        return
    category = exc.category if isinstance(exc, UnitFailure) else "error"
    failed = failed_result(entry.name, sub.version, entry.dataset, str(exc), category=category)
    write_result(failed, entry.result_path)


def evaluate(
    submission: str | Path,
    settings: EvalSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    before_scoring: Callable[[], object] | None = None,
) -> EvalOutcome:
    """Evaluate one submission folder and write ``cache/results/<dataset>/<name>/result.json``.

    On failure a ``failed`` result is written only when no valid result exists yet, so a broken
    re-run never replaces good numbers; the error is re-raised. ``before_scoring`` is called
    after the last unit is trained and before anything is scored or an earlier result is
    reused (possibly twice: it must be idempotent, like waiting for an event).
    """
    from harness.audit import LeakError
    from harness.executors import Limits
    from harness.models.submission import load_submission

    settings = settings or EvalSettings()
    started = time.perf_counter()
    sub = load_submission(submission)
    entry, executor = open_entry(sub, settings)
    runner = LazyRunner(executor, sub, Limits.for_submission(sub.limits))
    if settings.scheduler == "ray":  # the cluster's own faults are not the submission's failure
        from harness.evaluate.cluster import RayUnits

        runner.cluster = RayUnits(sub, executor.name, runner.limits, settings.ray_address)
    try:
        plan = plan_evaluation(sub, settings, entry)
        runner.sessions = sessions_to_train(plan)  # no sandbox prestarted after the last
        with progress_bar(entry.name, plan.n_units, unit="unit") as bar:
            counter = Progress(plan.n_units, progress, bar=bar)
            reused = reusable_result(plan)
            if reused is not None and before_scoring is not None:
                counter.describe("waiting for the references")
                before_scoring()  # the references may still be running: judge once they are done
                reused = reusable_result(plan)
            if reused is not None:  # every unit finished and nothing scoring reads has changed
                n = units_present(plan)
                counter = Progress(n, None, done=n, reused=n)
                bar.update(total=n)
                bar.doing("recorded result reused")
                bar.skip(n)
                result = reused
            else:
                result = evaluate_plan(plan, runner, executor, counter, started, before_scoring)
                counter.describe(f"{counter.ran} trained, {counter.reused} reused, scored")
    except LeakError:
        raise  # refused before anything ran: there is no failure of the entry to record
    except HarnessError as exc:
        record_failure(sub, entry, exc)
        raise
    finally:
        runner.shutdown()
    return EvalOutcome(
        name=entry.name,
        result_path=entry.result_path,
        result=result,
        units_total=counter.total,
        units_run=counter.ran,
        units_reused=counter.reused,
        seconds=time.perf_counter() - started,
        headline=headline_rows(result),
        scored=reused is None,
    )


def recorded_outcome(submission: str | Path, settings: EvalSettings) -> EvalOutcome | None:
    """What `evaluate` would return without training or scoring anything: the recorded result
    when every unit is finished and its scoring key is current; None when there is work to do
    (or the submission cannot be planned: `evaluate` then reports why)."""
    from harness.models.submission import load_submission

    started = time.perf_counter()
    try:
        sub = load_submission(submission)
        entry, _ = open_entry(sub, settings)
        plan = plan_evaluation(sub, settings, entry)
        reused = reusable_result(plan)
    except Exception:  # noqa: BLE001 - anything odd in a folder: `evaluate` reports it for that entry
        return None
    if reused is None:
        return None
    n = units_present(plan)
    return EvalOutcome(
        name=entry.name, result_path=entry.result_path, result=reused, units_total=n,
        units_run=0, units_reused=n, seconds=time.perf_counter() - started,
        headline=headline_rows(reused), scored=False,
    )  # fmt: skip


def headline_rows(result: Result | Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, cohort): main metric with its CI and the delta vs the EHR reference."""
    rows = []
    for block in Result.of(result).blocks():
        headline = block.headline
        delta = block.delta_vs_ehr
        rows.append(
            {
                "task": block.task,
                "cohort": block.cohort,
                "metric": block.main_metric,
                "value": None if headline is None else headline.value,
                "ci_low": None if headline is None else headline.ci_low,
                "ci_high": None if headline is None else headline.ci_high,
                "ehr_reference": block.references.ehr_only,
                "delta_vs_ehr": None if delta is None else delta.delta,
                "p_value": None if delta is None else delta.p_value,
            }
        )
    return rows


#: The runner wrapper, also under the name benchmarks/isolation_overhead.py imports.
_LazyRunner = LazyRunner
