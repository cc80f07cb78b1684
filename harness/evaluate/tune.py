"""``harness tune``: an equal-budget hyper-parameter search on validation only.

Protocol (nested per fold). For each fold k asked for, a seeded Optuna TPE search chooses the
configuration of the submission's search space (:mod:`harness.models.search`) that scores best
on fold k's **validation** split after training on fold k's training split; the test split of
fold k is never built, sent or scored. ``harness evaluate --tuned`` then trains fold k's unit
with fold k's configuration. Tuning once on fold 1 and reusing that choice for every fold
would not be honest here: fold k's validation split is fold k+1's test split (see
:func:`harness.models.data.split_indices`), so a configuration chosen on fold 1 has seen the
labels fold 2 is tested on.

Equal budget: every submission gets the same number of trials (the first is its own default
configuration when that lies in the space), the same epoch cap per trial, the same training
seed, the same sampler and no pruning; the general torch ranges are the same for all
(:data:`harness.models.search.GENERAL_TORCH_SPACE`). The objective is computed here, on the
harness's side, from the model's validation predictions and the validation labels (the score
a trained model reports about itself is not trusted).

The choice is written to ``cache/tuning/<dataset>/<name>/<task>-<cohort>.yaml`` with every trial,
keyed by the submission's files, the cohort, the encoder and the budget: a configuration tuned
for other inputs is never used.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import config
from harness.errors import InputError

if TYPE_CHECKING:
    from harness.cohort.load import Cohort
    from harness.executors import Runner
    from harness.models.data import FeatureSet
    from harness.models.search import Dimension
    from harness.models.submission import Submission


TUNING_SCHEMA = 1
PROTOCOL = "nested per fold: fold k's configuration is chosen on fold k's validation split"
#: ``progress(fold, trial, n_trials, best_so_far)``: called after every trial.
TuneProgress = Callable[[int, int, int, float | None], None]


@dataclass(frozen=True)
class Budget:
    """What every submission gets: trials, epoch cap per trial and seeds (sampler, training)."""

    trials: int = 12
    max_epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or self.max_epochs < 1:
            raise InputError(
                f"a tuning budget needs at least one trial and one epoch (got {self.trials} "
                f"trials, {self.max_epochs} epochs)",
                fix="pass --trials and --max-epochs of at least 1",
            )

    def record(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "max_epochs": self.max_epochs,
            "sampler": "TPE",
            "seed": self.seed,
            "pruner": None,
        }

    def label(self) -> str:
        return f"tuned: {self.trials} TPE trials x <= {self.max_epochs} epochs, nested per fold"


def tuning_path(dataset: str, name: str, task: str, cohort: str) -> Path:
    """``cache/tuning/<dataset>/<name>/<task>-<cohort>.yaml``."""
    return config.cache_root() / "tuning" / dataset / name / f"{task}-{cohort}.yaml"


def _tuned_for(data: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    """Whether a tuning file's content was tuned for the inputs ``key`` (`tuning_key`)."""
    return all(data.get(k) == v for k, v in key.items())


def tuning_key(sub: Submission, cohort: Cohort, encoder_key: str, budget: Budget) -> dict:
    """What a configuration was tuned for: a file whose key differs is not used."""
    from harness.evaluate.units import protocol_digest, submission_digest

    return {
        "submission_digest": submission_digest(sub),
        "protocol_digest": protocol_digest(),
        "cohort_fingerprint": cohort.fingerprint,
        "encoder_key": encoder_key,
        "budget": budget.record(),
    }


# --------------------------------------------------------------------------------------------
# One fold's search


@dataclass
class FoldStudy:
    """One fold's search: the chosen configuration, its validation score and every trial."""

    fold: int
    config: dict[str, Any]
    value: float
    default_value: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "value": self.value,
            "default_value": self.default_value,
            "trials": self.trials,
        }


def _suggest(trial: Any, dim: Dimension) -> Any:
    if dim.type == "categorical":
        return trial.suggest_categorical(dim.name, list(dim.choices))
    if dim.type == "int":
        return trial.suggest_int(dim.name, dim.low, dim.high, step=dim.step or 1)
    return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.type == "log_float")


def _plain(value: Any) -> Any:
    """A YAML-safe scalar (numpy numbers from the sampler become Python numbers)."""
    return value.item() if isinstance(value, np.generic) else value


def tuning_tensors(fs: FeatureSet, fold: int, inputs: Sequence[str] | None) -> tuple[Any, Any]:
    """Fold ``fold``'s training and validation tensors (normalised on its training stays).

    The test positions are dropped unread: nothing of the test split is built."""
    from harness.models.data import fit_stats, make_tensors, restrict_inputs

    train_idx, val_idx, _ = fs.split(fold)
    for what, part in (("training", train_idx), ("validation", val_idx)):
        if len(part) == 0:
            raise InputError(
                f"fold {fold} leaves the {what} split empty",
                fix="tune on a cohort with stays in every fold",
            )
    stats = fit_stats(fs, train_idx)
    train = restrict_inputs(make_tensors(fs, train_idx, stats), inputs)
    val = restrict_inputs(make_tensors(fs, val_idx, stats), inputs)
    return train, val


def search_fold(
    runner: Runner,
    sub: Submission,
    fs: FeatureSet,
    fold: int,
    budget: Budget,
    *,
    device: str | None = None,
    progress: TuneProgress | None = None,
) -> FoldStudy:
    """Run one fold's search through ``runner`` (a sandboxed or local runner of ``sub``)."""
    import optuna

    from harness.executors import TrainJob, UnitFailure
    from harness.executors.base import pseudonym_key, pseudonymise
    from harness.executors.wire import without_labels
    from harness.models.search import default_config, search_space
    from harness.models.train import selection_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(sub)
    train, val = tuning_tensors(fs, fold, sub.inputs)
    y_val = val.labels().numpy()
    key = pseudonym_key(f"tune/{fs.task.name}/{fold}")
    train_p, val_p = pseudonymise(train, key), pseudonymise(val, key)
    val_inputs = without_labels(val_p)
    epochs = min(budget.max_epochs, sub.train.max_epochs)

    def objective(cfg: dict[str, Any]) -> tuple[float, int]:
        summary = runner.train(
            TrainJob(
                task=fs.task,
                fold=fold,
                seed=budget.seed,
                variables=list(fs.variables),
                train=train_p,
                val=val_p,
                device=device,
                max_epochs=epochs,
                config=cfg,
            )
        )
        p = runner.predict(val_inputs)  # scored here, from the validation labels
        return selection_score(fs.task, y_val, p), int(summary.best_epoch)

    sampler = optuna.samplers.TPESampler(seed=budget.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    default = default_config(sub, space)
    default_in_space = all(d.contains(default[d.name]) for d in space)
    if default_in_space:  # trial 0: the submission as it is (a search never ends below it)
        study.enqueue_trial(default)
    trials: list[dict[str, Any]] = []
    default_value = None
    for number in range(budget.trials):
        trial = study.ask()
        cfg = {d.name: _plain(_suggest(trial, d)) for d in space}
        row: dict[str, Any] = {"number": number, "config": cfg}
        started = time.perf_counter()
        try:
            value, best_epoch = objective(cfg)
        except UnitFailure as exc:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row.update(state="failed", category=exc.category)
        else:
            if np.isfinite(value):
                study.tell(trial, value)
                row.update(state="complete", value=round(value, 6), best_epoch=best_epoch)
            else:  # undefined on validation (one class): no information
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                row.update(state="failed", category="undefined_score")
        row["seconds"] = round(time.perf_counter() - started, 3)
        if number == 0 and default_in_space:
            row["default"] = True
            default_value = row.get("value")
        trials.append(row)
        done = [t for t in trials if t["state"] == "complete"]
        if progress is not None:
            progress(fold, number + 1, budget.trials, max((t["value"] for t in done), default=None))
    complete = [t for t in trials if t["state"] == "complete"]
    if not complete:
        causes = sorted({t.get("category", "?") for t in trials})
        raise InputError(
            f"{sub.name}: every one of the {len(trials)} trials of fold {fold} failed ({causes})",
            path=sub.yaml_path,
            fix="run `harness evaluate` on the submission to see its error, or narrow `search:`",
        )
    best = max(complete, key=lambda t: (t["value"], -t["number"]))  # ties: the earliest
    return FoldStudy(fold, dict(best["config"]), float(best["value"]), default_value, trials)


# --------------------------------------------------------------------------------------------
# The file of a (task, cohort)


def read_tuning(path: Path) -> dict[str, Any] | None:
    """A tuning file's content, or None when it does not exist (a damaged one is an error)."""
    import yaml

    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(
            f"the tuning file cannot be read ({type(exc).__name__})",
            path=path,
            fix="delete it and run `harness tune` again",
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("schema") != TUNING_SCHEMA
        or not isinstance(data.get("folds"), dict)
    ):
        raise InputError(
            "not a tuning file of this harness (schema or folds missing)",
            path=path,
            fix="delete it and run `harness tune` again",
        )
    return data


def write_tuning(path: Path, header: Mapping[str, Any], studies: Mapping[int, dict]) -> None:
    """Write a (task, cohort)'s file atomically: its header and every fold's study."""
    import yaml

    from harness.io import atomic_write_text

    folds = {int(k): v for k, v in sorted(studies.items())}
    doc = {"schema": TUNING_SCHEMA, **header, "folds": folds}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The command


@dataclass
class TuneOutcome:
    path: Path
    studies: dict[int, dict[str, Any]]
    tuned_folds: list[int]
    reused_folds: list[int]


def _feature_set(sub: Submission, task: str, cohort_name: str, dataset: str, encoder: str):
    from harness.cohort import load_cohort
    from harness.cohort.spec import load_task
    from harness.evaluate.plan import feature_set_for

    if not sub.supports(task):
        raise InputError(
            f"submission {sub.name!r} does not declare task {task!r}",
            path=sub.yaml_path,
            fix="pick one of its tasks with --task",
        )
    cohort = load_cohort(cohort_name, dataset)
    fs, reason = feature_set_for(cohort, load_task(task), encoder, {cohort_name: cohort}, dataset)
    if fs is None:
        raise InputError(
            f"{task}/{cohort_name} of dataset {dataset!r} cannot be tuned: {reason}",
            fix="pick another --task or --cohort",
        )
    return cohort, fs


def tune(
    submission: str | Path,
    *,
    task: str,
    cohort: str = "base",
    folds: Sequence[int] = (1,),
    dataset: str | None = None,
    encoder: str = "default",
    budget: Budget | None = None,
    executor: str | None = None,
    device: str | None = None,
    force: bool = False,
    progress: TuneProgress | None = None,
) -> TuneOutcome:
    """Search ``submission``'s configuration for (``task``, ``cohort``) on each of ``folds``."""
    from harness.encode.registry import encoder_key_for
    from harness.evaluate.plan import resolve_folds
    from harness.evaluate.protocol import DEFAULT_PROTOCOL
    from harness.evaluate.run import PROFILES, EvalSettings
    from harness.executors import Limits, get_executor
    from harness.models.search import search_space
    from harness.models.submission import load_submission

    budget = budget or Budget()
    dataset = dataset or config.DEFAULT_DATASET
    sub = load_submission(submission)
    space = search_space(sub)
    if not space:
        raise InputError(
            f"submission {sub.name!r} has nothing to search",
            path=sub.yaml_path,
            fix="add a `search:` section (see `harness new-submission`)",
        )
    cohort_obj, fs = _feature_set(sub, task, cohort, dataset, encoder)
    resolve_folds(EvalSettings(folds=tuple(folds), cohorts=(cohort,)), {cohort: cohort_obj})
    # checkpoint selection and the objective: the metric the honest protocol selects on
    metric = PROFILES[DEFAULT_PROTOCOL].selection_metric(fs.task)
    fs = replace(fs, task=replace(fs.task, main_metric=metric))
    key = tuning_key(sub, cohort_obj, encoder_key_for(encoder), budget)
    header = {
        "submission": sub.name,
        "dataset": dataset,
        "task": task,
        "cohort": cohort,
        "encoder": encoder,
        "split": "validation",
        "protocol": PROTOCOL,
        **key,
        "space": {d.name: d.as_dict() for d in space},
    }
    path = tuning_path(dataset, sub.name, task, cohort)
    previous = read_tuning(path)
    studies: dict[int, dict[str, Any]] = {}
    if previous is not None and _tuned_for(previous, key):
        studies = {int(k): v for k, v in previous["folds"].items()}  # same inputs: kept
    todo = [k for k in folds if force or k not in studies]
    exe = get_executor(executor)
    if exe.name != "local":
        from harness.executors.isolated import require_sandbox

        require_sandbox()
    for fold in todo:  # one worker per fold: nothing it keeps crosses to another fold's data
        with exe.session(sub, Limits.for_submission(sub.limits)) as runner:
            study = search_fold(runner, sub, fs, fold, budget, device=device, progress=progress)
        studies[fold] = study.record()
        write_tuning(path, header, studies)  # after every fold: an interrupted run resumes
    return TuneOutcome(path, studies, todo, [k for k in folds if k not in todo])


# --------------------------------------------------------------------------------------------
# Reading the chosen configurations back (``harness evaluate --tuned``)


@dataclass(frozen=True)
class TunedConfigs:
    """The configuration of every (task, cohort, fold) of an evaluation, and where it came from."""

    configs: dict[tuple[str, str, int], dict[str, Any]]
    files: dict[str, str]  # "<task>-<cohort>" -> digest of its tuning file
    label: str

    def config(self, task: str, cohort: str, fold: int) -> dict[str, Any]:
        return self.configs[(task, cohort, fold)]

    def digest(self) -> str:
        rows = sorted((f"{t}/{c}/{k}", v) for (t, c, k), v in self.configs.items())
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """``provenance.tuning``: the protocol, budget, files and configuration per unit."""
        return {
            "protocol": PROTOCOL,
            "label": self.label,
            "files": dict(sorted(self.files.items())),
            "configs": {f"{t}/{c}/fold{k}": v for (t, c, k), v in sorted(self.configs.items())},
        }


def load_tuned(
    sub: Submission,
    tasks: Sequence[str],
    cohorts: Mapping[str, Cohort],
    folds: Sequence[int],
    dataset: str,
    encoder: str,
) -> TunedConfigs:
    """The tuned configuration of every (task, cohort, fold), each checked to have been tuned
    for these files, cohort and encoder under one budget; anything missing is one error listing
    the ``harness tune`` commands that fill it."""
    from harness.encode.registry import encoder_key_for

    configs, files, budgets, missing = {}, {}, set(), []
    for task in tasks:
        for c, cohort in cohorts.items():
            path = tuning_path(dataset, sub.name, task, c)
            data = read_tuning(path)
            if data is not None:
                budget = _budget_of(data)
                key = tuning_key(sub, cohort, encoder_key_for(encoder), budget) if budget else None
                if key is None or not _tuned_for(data, key):
                    raise InputError(
                        f"the tuned configuration of {sub.name} for {task}/{c} was tuned for "
                        "other inputs (the submission's files, the cohort, the encoder or the "
                        "harness changed since)",
                        path=path,
                        fix=f"run `harness tune {sub.path} -t {task} -c {c} --force` again",
                    )
                budgets.add(json.dumps(data["budget"], sort_keys=True))
                files[f"{task}-{c}"] = file_digest(path)
            absent = [k for k in folds if data is None or k not in data["folds"]]
            if data is None or absent:
                missing.append((task, c, absent))
                continue
            for k in folds:
                cfg = data["folds"][k].get("config") if isinstance(data["folds"][k], dict) else None
                if not isinstance(cfg, dict):
                    raise InputError(
                        f"fold {k} has no configuration",
                        path=path,
                        fix="delete the file and run `harness tune` again",
                    )
                configs[(task, c, k)] = cfg
    if missing:
        commands = "; ".join(
            f"harness tune {sub.path} -t {t} -c {c} --folds {','.join(map(str, ks))}"
            for t, c, ks in missing
        )
        raise InputError(
            f"{sub.name} has no tuned configuration for "
            + ", ".join(f"{t}/{c} fold(s) {ks}" for t, c, ks in missing),
            fix=f"tune first: {commands}",
        )
    if len(budgets) > 1:
        raise InputError(
            f"{sub.name}'s configurations were tuned under different budgets ({sorted(budgets)})",
            fix="tune every task and cohort with the same --trials and --max-epochs",
        )
    chosen = _budget_of({"budget": json.loads(budgets.pop())})
    assert chosen is not None
    return TunedConfigs(configs, files, chosen.label())


def _budget_of(data: Mapping[str, Any]) -> Budget | None:
    """The budget a tuning file records, or None when it is not a valid one."""
    raw = data.get("budget")
    if not isinstance(raw, dict):
        return None
    values = [raw.get(k) for k in ("trials", "max_epochs", "seed")]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(ints) != len(values):
        return None
    try:
        return Budget(*ints)
    except InputError:
        return None
