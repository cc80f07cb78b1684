"""Orchestration of `harness evaluate`: train folds x seeds, predict every scenario, score, write.

Work is split into units (task, cohort, fold, seed). Results live per dataset and submission in
``cache/results/<dataset>/<name>/`` (``result.json``; the same submission evaluated on two datasets
keeps two results). Each finished unit leaves one parquet file of per-stay predictions under
``cache/results/<dataset>/<name>/predictions/`` (local only, never published),
written atomically, so an interrupted evaluation resumes where it stopped. The unit folder is
keyed by a hash of the submission's files, the cohort fingerprint, the encoder key and the
training overrides: editing the model never reuses stale predictions.

Folds follow the cohort: a source with its own partition (a CareBench folder) trains and tests on
each fold's given train/val/test stays, otherwise the harness rule applies (`FeatureSet.split`).
Tasks whose labels the dataset lacks, and empty cohorts, are skipped with a note in the result.

Scoring pools the out-of-fold test predictions per seed and hands them to
:func:`harness.leaderboard.result.score_predictions` together with the reference submissions'
predictions on the same stays (paired deltas), the robustness scenarios and the fairness groups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import config
from harness.errors import HarnessError, InputError
from harness.io import atomic_write_bytes

log = logging.getLogger(__name__)

#: Reference submissions a result is compared with (paired deltas on shared resamples).
#: The EHR-only reference of a task and cohort is the best of these that has been evaluated
#: (by the main metric): a fusion gain over a weak EHR baseline would overstate what the image adds.
EHR_REFERENCES = ("ehr_lstm", "ehr_transformer")
CXR_REFERENCES = ("cxr_probe",)
UNIMODAL_REFERENCES = (*EHR_REFERENCES, *CXR_REFERENCES)
DEFAULT_TASKS = ("mortality_in_hospital", "mortality_icu", "phenotype", "los")
DEFAULT_COHORTS = ("base", "matched")
DEFAULT_FOLDS = (1, 2, 3, 4, 5)
DEFAULT_SEEDS = (0, 1, 2)
#: Epoch cap of ``--quick`` runs (the submission's own patience still applies).
QUICK_MAX_EPOCHS = 15
UNIT_SCHEMA_VERSION = 1


@dataclass
class EvalSettings:
    """What one evaluation covers; ``quick()`` gives one fold and one seed."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    cohorts: tuple[str, ...] = DEFAULT_COHORTS
    folds: tuple[int, ...] = DEFAULT_FOLDS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
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
    #: Let this folder take over an entry name another folder has used (``--replace``).
    replace: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> EvalSettings:
        base = {"folds": (1,), "seeds": (0,), "max_epochs": QUICK_MAX_EPOCHS}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class Unit:
    task: str
    cohort: str
    fold: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.task}/{self.cohort} fold {self.fold} seed {self.seed}"


@dataclass
class EvalOutcome:
    name: str
    result_path: Path
    result: dict
    units_total: int
    units_run: int
    units_reused: int
    seconds: float
    headline: list[dict] = field(default_factory=list)


ProgressFn = Callable[[str, int, int], None]


def _hash_files(root: Path, paths: Sequence[Path]) -> str:
    """Hash of the files' paths relative to ``root`` and their bytes (order-independent)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def submission_digest(sub) -> str:
    """Hash of every file of the submission folder that can change its behaviour."""
    files = [p for p in sub.path.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".yml")]
    return _hash_files(sub.path, [p for p in files if "__pycache__" not in p.parts])


#: Harness modules whose code decides what a unit computes: editing them invalidates units.
PROTOCOL_MODULES = ("models/data.py", "models/train.py", "evaluate/scenarios.py")


def protocol_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    return _hash_files(root, [root / m for m in PROTOCOL_MODULES])


def run_key(sub, settings: EvalSettings, encoder_key: str, scenarios: Sequence[str]) -> str:
    """Key of a unit folder: submission files, protocol code, encoder, scenarios, overrides."""
    payload = {
        "submission": submission_digest(sub),
        "protocol": protocol_digest(),
        "scenarios": sorted(scenarios),
        "encoder_key": encoder_key,
        "max_epochs": settings.max_epochs,
        "unit_schema": UNIT_SCHEMA_VERSION,
    }
    if settings.train_cxr_dropout is not None:
        payload["train_cxr_dropout"] = settings.train_cxr_dropout
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def result_dir(name: str, dataset: str | None = None) -> Path:
    """``cache/results/<dataset>/<name>``: one folder per dataset and submission."""
    return config.results_dir() / (dataset or config.DEFAULT_DATASET) / name


def result_path(name: str, dataset: str | None = None) -> Path:
    return result_dir(name, dataset) / "result.json"


def predictions_dir(
    name: str, task: str, cohort_dir_name: str, key: str, dataset: str | None = None
) -> Path:
    return result_dir(name, dataset) / "predictions" / task / cohort_dir_name / key


def _unit_path(base: Path, unit: Unit) -> Path:
    return base / f"fold{unit.fold}_seed{unit.seed}.parquet"


# --------------------------------------------------------------------------------------------
# One unit: train, predict validation (thresholds), clean test, scenarios, other cohort


def _prob_columns(p: np.ndarray) -> dict[str, np.ndarray]:
    p = p.reshape(len(p), -1)
    return {f"prob_{j}": p[:, j].astype(np.float64) for j in range(p.shape[1])}


def _frame(stay_id: np.ndarray, part: str, scenario: str, rate: float, p: np.ndarray):
    cols = {
        "stay_id": stay_id.astype(np.int64),
        "part": part,
        "scenario": scenario,
        "rate": np.float64(rate),
    }
    cols.update(_prob_columns(p))
    return pd.DataFrame(cols)


def _thresholds(task_kind: str, y_val: np.ndarray, p_val: np.ndarray) -> list[float]:
    from harness.evaluate.fairness import select_threshold

    if task_kind == "binary":
        return [select_threshold(y_val, p_val)]
    if task_kind == "multilabel":
        return [select_threshold(y_val[:, j], p_val[:, j]) for j in range(y_val.shape[1])]
    return []


def run_unit(
    runner,
    fs,
    unit: Unit,
    settings: EvalSettings,
    scenario_names: Sequence[str],
    others: dict[str, Any],
    out_path: Path,
) -> None:
    """Train one (task, cohort, fold, seed) through ``runner`` and write its predictions.

    The harness prepares every input here, on its side of the trust boundary: the fold's
    normalisation is fitted on its training stays, the model receives the training and
    validation tensors with labels, then only inputs (no labels) for validation, clean test,
    each scenario and rate and the other cohort. Thresholds are chosen here from the validation
    labels the model's answers are compared with.
    """
    from harness.evaluate.scenarios import SCENARIOS
    from harness.executors import TrainJob
    from harness.executors.base import pseudonym_key, pseudonymise
    from harness.executors.wire import without_labels
    from harness.models.data import make_tensors, prepare_split

    key = pseudonym_key()

    def inputs(fs_, idx, stats):
        return pseudonymise(without_labels(make_tensors(fs_, idx, stats)), key)

    split = prepare_split(fs, unit.fold)
    summary = runner.train(
        TrainJob(
            task=fs.task, fold=unit.fold, seed=unit.seed, variables=list(fs.variables),
            train=pseudonymise(split.train, key), val=pseudonymise(split.val, key),
            device=settings.device, max_epochs=settings.max_epochs,
            cxr_dropout=settings.train_cxr_dropout,
        )
    )  # fmt: skip
    _, val_idx, test_idx = fs.split(unit.fold)
    frames = []
    p_val = runner.predict(pseudonymise(without_labels(split.val), key))
    frames.append(_frame(fs.stay_id[val_idx], "val", "clean", 0.0, p_val))
    p_test = runner.predict(pseudonymise(without_labels(split.test), key))
    frames.append(_frame(fs.stay_id[test_idx], "test", "clean", 0.0, p_test))
    for name in scenario_names:
        scenario = SCENARIOS.get(name)
        for rate in scenario.rates:
            if rate == 0.0:
                continue
            degraded = scenario.degrade(fs, test_idx, rate, unit.fold)
            p = runner.predict(inputs(degraded, test_idx, split.stats))
            frames.append(_frame(fs.stay_id[test_idx], "test", name, rate, p))
    for other_name, other_fs in others.items():
        _, _, other_test = other_fs.split(unit.fold)
        p = runner.predict(inputs(other_fs, other_test, split.stats))
        frames.append(_frame(other_fs.stay_id[other_test], f"cross:{other_name}", "clean", 0.0, p))
    table = pd.concat(frames, ignore_index=True)
    meta = {
        "unit_schema": UNIT_SCHEMA_VERSION,
        "task": unit.task,
        "cohort": unit.cohort,
        "fold": unit.fold,
        "seed": unit.seed,
        "thresholds": _thresholds(fs.task.kind, fs.y[val_idx], p_val),
        "val_score": float(summary.val_score),
        "best_epoch": int(summary.best_epoch),
        "train_seconds": float(summary.train_seconds),
    }
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({b"harness_unit": json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink, compression="zstd")
    atomic_write_bytes(out_path, sink.getvalue().to_pybytes())


def _readable_unit(path: Path) -> bool:
    """Whether a finished unit's file can be read back; a damaged one is set aside and redone."""
    try:
        read_unit(path)
        return True
    except Exception as exc:  # noqa: BLE001 - truncated parquet, bad metadata: all recomputed
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        log.warning("%s cannot be read (%s); kept as %s and trained again", path, exc, aside.name)
        return False


def read_unit(path: Path) -> tuple[pd.DataFrame, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"harness_unit"])
    return table.to_pandas(), meta


# --------------------------------------------------------------------------------------------
# Pooling units into per-seed out-of-fold arrays


@dataclass
class Pooled:
    """Out-of-fold predictions of one (task, cohort), rows aligned with ``rows`` of the set."""

    rows: np.ndarray  # positions in the FeatureSet
    fold: np.ndarray
    clean: list[np.ndarray]  # per seed
    scenarios: dict[str, dict[float, list[np.ndarray]]]
    thresholds: np.ndarray | None  # per row (binary) or per row and label (multilabel)
    cross: dict[str, tuple[np.ndarray, list[np.ndarray]]]  # other cohort -> (stay ids, per seed)
    train_seconds: float


def _probs(frame: pd.DataFrame, order: np.ndarray, squeeze: bool) -> np.ndarray:
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    by_id = frame.set_index("stay_id")[cols]
    arr = by_id.loc[order].to_numpy(np.float64)
    return arr[:, 0] if squeeze else arr


def pool_units(fs, base: Path, folds: Sequence[int], seeds: Sequence[int]) -> Pooled:
    squeeze = fs.task.kind == "binary"
    test_rows = {k: fs.split(k)[2] for k in folds}
    rows = np.sort(np.concatenate([test_rows[k] for k in folds]))
    if len(np.unique(rows)) != len(rows):
        raise InputError(
            f"the test stays of folds {list(folds)} overlap: out-of-fold pooling needs each "
            "stay tested once",
            fix="evaluate folds whose test sets are disjoint (e.g. one fold at a time)",
        )
    row_fold = np.zeros(len(fs), dtype=np.int64)
    for k in folds:
        row_fold[test_rows[k]] = k
    ids = fs.stay_id[rows]
    clean, scen, cross, thr_parts = [], {}, {}, []
    seconds = 0.0
    for s_i, seed in enumerate(seeds):
        parts = []
        for k in folds:
            frame, meta = read_unit(_unit_path(base, Unit(fs.task.name, "", k, seed)))
            parts.append(frame)
            seconds += meta["train_seconds"]
            if meta["thresholds"]:
                thr_parts.append((k, s_i, np.asarray(meta["thresholds"])))
        frame = pd.concat(parts, ignore_index=True)
        test = frame[frame["part"] == "test"]
        clean.append(_probs(test[test["scenario"] == "clean"], ids, squeeze))
        for (name, rate), sub in test[test["scenario"] != "clean"].groupby(["scenario", "rate"]):
            scen.setdefault(name, {}).setdefault(float(rate), []).append(_probs(sub, ids, squeeze))
        for part, sub in frame[frame["part"].str.startswith("cross:")].groupby("part"):
            other = part.split(":", 1)[1]
            other_ids = np.sort(sub["stay_id"].to_numpy())
            cross.setdefault(other, (other_ids, []))[1].append(_probs(sub, other_ids, squeeze))
    for name in scen:
        scen[name][0.0] = clean
    thresholds = None
    if thr_parts:
        width = thr_parts[0][2].size
        acc = np.zeros((len(rows), width))
        for k, _, thr in thr_parts:
            acc[np.isin(rows, test_rows[k])] += thr
        thresholds = acc / len(seeds)
        if squeeze:
            thresholds = thresholds[:, 0]
    return Pooled(rows, row_fold[rows], clean, scen, thresholds, cross, seconds)


# --------------------------------------------------------------------------------------------
# Scoring one (task, cohort)


def _groups_for(fs, cohort, rows: np.ndarray) -> pd.DataFrame:
    from harness.evaluate.fairness import fairness_groups

    stays = cohort.stays.set_index("stay_id").loc[fs.stay_id[rows]].reset_index()
    return fairness_groups(stays).reset_index(drop=True)


def _reference_probs(
    ref: str,
    task: str,
    cohort_dir: str,
    folds,
    seeds,
    ids: np.ndarray,
    squeeze: bool,
    dataset: str | None = None,
) -> list[np.ndarray] | None:
    """A reference submission's pooled clean test predictions on the same stays, if available."""
    path = result_path(ref, dataset)
    if not path.is_file():
        return None
    try:
        key = json.loads(path.read_text())["provenance"]["run_key"]
    except (KeyError, json.JSONDecodeError):
        return None
    base = predictions_dir(ref, task, cohort_dir, key, dataset)
    out = []
    for seed in seeds:
        frames = []
        for k in folds:
            path = _unit_path(base, Unit(task, "", k, seed))
            if not path.is_file():
                return None
            frames.append(read_unit(path)[0])
        frame = pd.concat(frames, ignore_index=True)
        test = frame[(frame["part"] == "test") & (frame["scenario"] == "clean")]
        if not np.isin(ids, test["stay_id"].to_numpy()).all():
            return None
        out.append(_probs(test, ids, squeeze))
    return out


def _best_reference(
    candidates: Sequence[str], task: str, cohort: str, exclude: str, dataset: str | None = None
) -> str | None:
    """The evaluated candidate with the best main metric on (task, cohort), if any."""
    best, best_value = None, -np.inf
    for ref in candidates:
        if ref == exclude:
            continue
        path = result_path(ref, dataset)
        if not path.is_file():
            continue
        try:
            block = json.loads(path.read_text())["tasks"][task][cohort]
            value = block["metrics"][block["main_metric"]]["value"]
        except (KeyError, json.JSONDecodeError, TypeError):
            continue
        if value is not None and value > best_value:
            best, best_value = ref, value
    return best


def _cross_block(fs_other, other_ids, runs, kind: str, resample_seed: int) -> dict:
    from harness.evaluate.bootstrap import bootstrap_indices, bootstrap_metric, percentile_ci
    from harness.evaluate.metrics import METRICS, main_metric_for

    pos = pd.Index(fs_other.stay_id).get_indexer(other_ids)
    y = fs_other.y[pos]
    main = main_metric_for(kind, fs_other.task.main_metric)
    metric = METRICS.get(main)
    point = float(np.mean([metric(y, p) for p in runs]))
    r = bootstrap_indices(fs_other.subject_id[pos], 200, resample_seed)
    boot = np.mean([bootstrap_metric(main, y, p, r) for p in runs], axis=0)
    low, high = percentile_ci(boot)
    clean = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    return {
        "metric": main,
        "value": clean(point),
        "ci_low": clean(low),
        "ci_high": clean(high),
        "n_stays": int(len(pos)),
    }


def score_task_cohort(
    name: str, fs, cohort, pooled: Pooled, settings: EvalSettings, cohort_dir: str,
    others: dict[str, Any], dataset: str | None = None,
) -> dict:  # fmt: skip
    from harness.leaderboard.result import score_predictions

    kind = fs.task.kind
    rows = pooled.rows
    squeeze = kind == "binary"
    ids = fs.stay_id[rows]
    refs: dict[str, list[np.ndarray]] = {}
    ehr_ref = _best_reference(EHR_REFERENCES, fs.task.name, cohort.name, name, dataset)
    cxr_ref = _best_reference(CXR_REFERENCES, fs.task.name, cohort.name, name, dataset)
    best = _best_reference(UNIMODAL_REFERENCES, fs.task.name, cohort.name, name, dataset)
    wanted = list(dict.fromkeys(r for r in (ehr_ref, best, cxr_ref) if r))
    for ref in wanted:
        probs = _reference_probs(
            ref, fs.task.name, cohort_dir, settings.folds, settings.seeds, ids, squeeze, dataset
        )
        if probs is not None:
            refs[ref] = probs
        else:
            log.info("reference %s has no predictions for %s/%s", ref, fs.task.name, cohort.name)
    kwargs: dict[str, Any] = {}
    if settings.n_resamples:
        kwargs["n_resamples"] = settings.n_resamples
    if settings.min_group_size:
        kwargs["min_group_size"] = settings.min_group_size
    y = fs.y[rows]
    block = score_predictions(
        kind,
        y,
        pooled.clean,
        fs.subject_id[rows],
        fold=pooled.fold,
        label_names=list(fs.task.label_columns) if kind == "multilabel" else None,
        groups=_groups_for(fs, cohort, rows),
        threshold=pooled.thresholds if pooled.thresholds is not None else 0.5,
        reference_probs=refs or None,
        fusion_reference=ehr_ref if ehr_ref in refs else None,
        unimodal_references=[r for r in (ehr_ref, cxr_ref) if r in refs],
        scenario_probs=pooled.scenarios or None,
        main_metric=fs.task.main_metric,
        **kwargs,
    )
    block["references"] = {
        "ehr_only": ehr_ref if ehr_ref in refs else None,
        "cxr_only": cxr_ref if cxr_ref in refs else None,
        "best_unimodal": best if best in refs else None,
    }
    if pooled.cross:
        block["cross_cohort"] = {
            f"{cohort.name}->{other}": _cross_block(
                others[other], other_ids, runs, kind, resample_seed=0
            )
            for other, (other_ids, runs) in pooled.cross.items()
            if other in others
        }
    return block


# --------------------------------------------------------------------------------------------
# Entry names belong to folders

OWNER_FILE = "owner.json"


def _folder_identity(path: Path) -> str:
    """A folder's identity: its resolved path (kept locally in ``owner.json``, never published)."""
    return str(Path(path).resolve())


def claim_entry(sub, name: str, dataset: str, *, replace: bool = False) -> None:
    """Record that ``sub``'s folder owns entry ``name``, or refuse when another folder does.

    Names of the reference zoo (folders of ``config.submissions_dir()``) belong to those folders
    only: every paired delta is computed against them, so no other folder may take one, even
    with ``replace``. Other names belong to the first folder evaluated under them.
    """
    from harness.errors import SubmissionError
    from harness.io import atomic_write_json

    folder = _folder_identity(sub.path)
    zoo = config.submissions_dir()
    base_name = sub.name
    reserved = zoo / base_name
    if (reserved / "submission.yaml").is_file() and _folder_identity(reserved) != folder:
        raise SubmissionError(
            f"{sub.yaml_path.name}: `name: {base_name}` is reserved for the reference submission "
            f"of the same name. Fix: give your submission its own name in `name:`"
        )
    owner_path = result_dir(name, dataset) / OWNER_FILE
    if owner_path.is_file():
        try:
            owner = json.loads(owner_path.read_text(encoding="utf-8")).get("folder")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            owner = None
        if owner != folder and not replace:
            raise SubmissionError(
                f"{sub.yaml_path.name}: entry {name!r} on dataset {dataset!r} already belongs to "
                f"another submission folder ({Path(owner).name if owner else 'unknown'}). Fix: "
                "choose another `name:`, or pass --replace to take the entry over"
            )
    atomic_write_json(owner_path, {"folder": folder, "name": name})


class _LazyRunner:
    """Opens the executor's runner on the first unit that needs training (none when all reuse)."""

    def __init__(self, executor, sub, limits):
        self.executor, self.sub, self.limits = executor, sub, limits
        self.runner = None

    def _get(self):
        if self.runner is None:
            self.runner = self.executor.open(self.sub, self.limits)
        return self.runner

    def train(self, job):
        return self._get().train(job)

    def predict(self, tensors):
        return self._get().predict(tensors)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


# --------------------------------------------------------------------------------------------
# The whole evaluation


def _task_versions(tasks: Sequence[str]) -> dict[str, str]:
    from harness.cohort.spec import load_task

    return {t: str(load_task(t).version) for t in tasks}


def evaluate(
    submission: str | Path,
    settings: EvalSettings | None = None,
    *,
    progress: ProgressFn | None = None,
) -> EvalOutcome:
    """Evaluate one submission folder and write ``cache/results/<dataset>/<name>/result.json``.

    On failure a ``failed`` result is written only when no valid result exists yet, so a broken
    re-run never replaces good numbers; the error is re-raised.
    """
    from harness.cohort import load_cohort
    from harness.cohort.spec import load_task
    from harness.evaluate.scenarios import SCENARIOS
    from harness.executors import Limits, UnitFailure, get_executor
    from harness.leaderboard.result import build_result, failed_result, provenance, write_result
    from harness.models.data import load_feature_set
    from harness.models.submission import load_submission
    from harness.store import encoder_key_for

    settings = settings or EvalSettings()
    started = time.perf_counter()
    sub = load_submission(submission)
    dataset = settings.dataset or config.DEFAULT_DATASET
    name = entry_name(sub.name, settings)
    out_path = result_path(name, dataset)
    executor = get_executor(settings.executor)
    if executor.name != "local":
        from harness.executors.isolated import require_sandbox

        require_sandbox()
    claim_entry(sub, name, dataset, replace=settings.replace)
    runner = _LazyRunner(executor, sub, Limits.for_submission(sub.limits))
    try:
        tasks = [t for t in settings.tasks if sub.tasks is None or t in sub.tasks]
        if not tasks:
            raise InputError(
                f"submission {sub.name!r} declares none of the requested tasks {settings.tasks}",
                path=sub.yaml_path,
                fix="change `tasks` in submission.yaml or pass --task",
            )
        scenario_names = list(settings.scenarios or SCENARIOS.names())
        for s in scenario_names:
            SCENARIOS.get(s)
        enc_key = encoder_key_for(settings.encoder)
        key = run_key(sub, settings, enc_key, scenario_names)
        cohorts = {c: load_cohort(c, dataset) for c in settings.cohorts}
        units = [
            Unit(t, c, k, s)
            for t in tasks
            for c in settings.cohorts
            for k in settings.folds
            for s in settings.seeds
        ]
        total, done, ran, reused = len(units), 0, 0, 0
        blocks: dict[str, dict[str, dict]] = {}
        skipped: list[dict[str, str]] = []
        train_seconds = 0.0
        for task in tasks:
            spec = load_task(task)
            sets = {}
            for c, cohort in cohorts.items():
                reason = unavailable_reason(cohort, spec)
                fs = None if reason else load_feature_set(cohort, spec, settings.encoder)
                if fs is not None and len(fs) == 0:
                    reason = "no labelled stays in this cohort"
                if reason:
                    log.warning("%s/%s of %s skipped: %s", task, c, dataset, reason)
                    skipped.append({"task": task, "cohort": c, "reason": reason})
                    units = [u for u in units if (u.task, u.cohort) != (task, c)]
                    total = len(units)
                    continue
                sets[c] = fs
            for c, fs in sets.items():
                cohort = cohorts[c]
                cdir = cohort.path.name
                base = predictions_dir(name, task, cdir, key, dataset)
                others = {o: f for o, f in sets.items() if o != c} if settings.cross_cohort else {}
                for k in settings.folds:
                    for s in settings.seeds:
                        unit = Unit(task, c, k, s)
                        path = _unit_path(base, unit)
                        if progress:
                            progress(unit.label, done, total)
                        if path.is_file() and _readable_unit(path):
                            reused += 1
                        else:
                            run_unit(runner, fs, unit, settings, scenario_names, others, path)
                            ran += 1
                        done += 1
                pooled = pool_units(fs, base, settings.folds, settings.seeds)
                train_seconds += pooled.train_seconds
                blocks.setdefault(task, {})[c] = score_task_cohort(
                    name, fs, cohort, pooled, settings, cdir, others, dataset
                )
        if not blocks:
            raise InputError(
                f"nothing to evaluate on dataset {dataset!r}: "
                + "; ".join(f"{s['task']}/{s['cohort']}: {s['reason']}" for s in skipped),
                fix="pick tasks with labels in this dataset (--task) or another --dataset",
            )
        if progress:
            progress("scored", total, total)
        wall = time.perf_counter() - started
        prov = provenance(
            encoder_keys=[enc_key],
            task_versions=_task_versions(tasks),
            seeds=list(settings.seeds),
            folds=list(settings.folds),
            wall_time_s=round(wall, 3),
            run_key=key,
            train_seconds=round(train_seconds, 3),
            scenarios=scenario_names,
            executor=executor.name,
            max_epochs=settings.max_epochs,
            train_cxr_dropout=(
                sub.train.cxr_dropout
                if settings.train_cxr_dropout is None
                else settings.train_cxr_dropout
            ),
            submission=sub.name,
            inputs=sorted(sub.inputs),
        )
        result = build_result(
            name,
            sub.version,
            dataset,
            cohorts={
                c: {
                    "fingerprint": cohorts[c].fingerprint,
                    "n_stays": int(len(cohorts[c].stays)),
                    "n_subjects": int(cohorts[c].stays["subject_id"].nunique()),
                }
                for c in cohorts
            },
            tasks=blocks,
            provenance_record=prov,
        )
        if skipped:
            result["skipped"] = skipped
        write_result(result, out_path)
    except HarnessError as exc:
        category = exc.category if isinstance(exc, UnitFailure) else "error"
        if not out_path.is_file():
            write_result(
                failed_result(name, sub.version, dataset, str(exc), category=category), out_path
            )
        raise
    finally:
        runner.close()
    return EvalOutcome(
        name=name,
        result_path=out_path,
        result=result,
        units_total=total,
        units_run=ran,
        units_reused=reused,
        seconds=time.perf_counter() - started,
        headline=headline_rows(result),
    )


def entry_name(submission_name: str, settings: EvalSettings) -> str:
    """Leaderboard entry name: the submission's, plus ``.cxrdrop<rate>`` under the override."""
    if settings.train_cxr_dropout is None:
        return submission_name
    return f"{submission_name}.cxrdrop{settings.train_cxr_dropout:g}"


def unavailable_reason(cohort, spec) -> str | None:
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


def headline_rows(result: dict) -> list[dict]:
    """One row per (task, cohort): main metric with its CI and the delta vs the EHR reference."""
    rows = []
    for task, by_cohort in result.get("tasks", {}).items():
        for cohort, block in by_cohort.items():
            main = block["main_metric"]
            m = block["metrics"][main]
            ehr_ref = (block.get("references") or {}).get("ehr_only")
            delta = (block.get("paired_deltas") or {}).get(ehr_ref or "", {}).get(main)
            rows.append(
                {
                    "task": task,
                    "cohort": cohort,
                    "metric": main,
                    "value": m["value"],
                    "ci_low": m["ci_low"],
                    "ci_high": m["ci_high"],
                    "ehr_reference": ehr_ref,
                    "delta_vs_ehr": None if delta is None else delta["delta"],
                    "p_value": None if delta is None else delta["p_value"],
                }
            )
    return rows
