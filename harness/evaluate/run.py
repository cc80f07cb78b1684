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
References are chosen on their stored *validation* predictions (never on the test fold they are
compared on), and only among references evaluated under the same training protocol.

A protocol profile (:data:`PROFILES`: ``honest``, the default, or ``carebench``) fixes the seeds,
the tasks, the checkpoint-selection and headline metrics and the decision threshold; the profile
and the run's folds, seeds, epoch cap and resamples are recorded as ``provenance.protocol``, and
the leaderboard ranks entries of one protocol only against each other.
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
#: (by the headline metric on the references' validation predictions): a fusion gain over a weak
#: EHR baseline would overstate what the image adds.
EHR_REFERENCES = ("ehr_lstm", "ehr_transformer")
CXR_REFERENCES = ("cxr_probe",)
UNIMODAL_REFERENCES = (*EHR_REFERENCES, *CXR_REFERENCES)
DEFAULT_TASKS = ("mortality_in_hospital", "mortality_icu", "phenotype", "los")
DEFAULT_COHORTS = ("base", "matched")
DEFAULT_SEEDS = (0, 1, 2)
#: Epoch cap of ``--quick`` runs (the submission's own patience still applies).
QUICK_MAX_EPOCHS = 15
UNIT_SCHEMA_VERSION = 1
#: How the decision threshold of the fairness metrics is set when a profile does not fix one.
VALIDATION_THRESHOLD_RULE = "youden_j_on_validation"


@dataclass(frozen=True)
class ProtocolProfile:
    """A named evaluation protocol: seeds, tasks, selection and headline metrics, threshold."""

    name: str
    description: str
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    #: Checkpoint-selection metric per task kind (registry names); None: the task YAML's
    #: ``main_metric``.
    selection: dict[str, str] | None = None
    #: Headline metric per task kind (ranks, deltas, curves); None: the selection metric.
    headline: dict[str, str] | None = None
    #: Fixed decision threshold of the fairness metrics; None: chosen on validation (Youden's J).
    threshold: float | None = None
    #: Tasks the profile does not evaluate, with the reason.
    excluded_tasks: tuple[tuple[str, str], ...] = ()

    def selection_metric(self, task) -> str:
        from harness.evaluate.metrics import main_metric_for

        if self.selection is None:
            return main_metric_for(task.kind, task.main_metric)
        return self.selection[task.kind]

    def headline_metric(self, task) -> str:
        return self.headline[task.kind] if self.headline else self.selection_metric(task)

    @property
    def threshold_rule(self) -> str:
        return VALIDATION_THRESHOLD_RULE if self.threshold is None else f"fixed_{self.threshold:g}"


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
DEFAULT_PROTOCOL = "honest"


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
    #: Let this folder take over an entry name another folder has used (``--replace``).
    replace: bool = False
    #: Protocol profile (:data:`PROFILES`): part of the entry's name and of its ranking key.
    protocol: str = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        from harness.errors import UsageError

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
        base = {"folds": (1,), "seeds": seeds, "max_epochs": QUICK_MAX_EPOCHS}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def cohort_n_folds(cohort) -> int:
    """Folds of a built cohort: its own partition's (a CareBench folder), else its fold column's
    highest value (``n_folds`` of ``cohort.yaml`` at build time); 0 for an empty cohort."""
    from harness.data.carebench import SPLITS_FILE

    given = Path(getattr(cohort, "path", "") or "") / SPLITS_FILE
    if getattr(cohort, "path", None) is not None and given.is_file():
        return int(pd.read_parquet(given, columns=["fold"])["fold"].max())
    folds = cohort.stays["fold"] if "fold" in cohort.stays.columns else pd.Series(dtype=float)
    return int(folds.max()) if len(folds.dropna()) else 0


def resolve_folds(settings: EvalSettings, cohorts: dict[str, Any]) -> EvalSettings:
    """``settings`` with its folds set: every fold of the cohorts when none were asked for.

    The cohorts of one dataset share their fold assignment; folds outside 1..n_folds are an
    error naming the valid ones.
    """
    from dataclasses import replace

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


def protocol_record(settings: EvalSettings, tasks: Sequence[str]) -> dict:
    """``provenance.protocol``: what makes two entries comparable (part of the ranking key)."""
    from harness.cohort.spec import load_task
    from harness.evaluate.bootstrap import DEFAULT_N_RESAMPLES

    profile = settings.profile
    return {
        "profile": profile.name,
        "folds": [int(k) for k in settings.folds or ()],
        "seeds": [int(s) for s in settings.seeds],
        "max_epochs": settings.max_epochs,
        "n_resamples": int(settings.n_resamples or DEFAULT_N_RESAMPLES),
        "selection": {t: profile.selection_metric(load_task(t)) for t in tasks},
        "threshold": profile.threshold_rule,
    }


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
    if settings.protocol != DEFAULT_PROTOCOL:  # another selection metric: other checkpoints
        payload["protocol"] = settings.protocol
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
    from dataclasses import replace

    from harness.evaluate.scenarios import SCENARIOS
    from harness.executors import TrainJob
    from harness.executors.base import pseudonym_key, pseudonymise
    from harness.executors.wire import without_labels
    from harness.models.data import make_tensors, prepare_split

    key = pseudonym_key(f"{unit.task}/{unit.cohort}/{unit.fold}")

    def inputs(fs_, idx, stats):
        return pseudonymise(without_labels(make_tensors(fs_, idx, stats)), key)

    split = prepare_split(fs, unit.fold)
    # checkpoint selection on the profile's metric (honest: the task YAML's main_metric)
    task = replace(fs.task, main_metric=settings.profile.selection_metric(fs.task))
    summary = runner.train(
        TrainJob(
            task=task, fold=unit.fold, seed=unit.seed, variables=list(fs.variables),
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
    #: per row (binary) or per row and label (multilabel): Youden's J of the row's fold on the
    #: seed-mean validation predictions
    thresholds: np.ndarray | None
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
    clean, scen, cross = [], {}, {}
    val_probs: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}  # fold -> (ids, per seed)
    seconds = 0.0
    for seed in seeds:
        parts = []
        for k in folds:
            frame, meta = read_unit(_unit_path(base, Unit(fs.task.name, "", k, seed)))
            parts.append(frame)
            seconds += meta["train_seconds"]
            val = frame[frame["part"] == "val"]
            val_ids = val_probs[k][0] if k in val_probs else np.sort(val["stay_id"].to_numpy())
            val_probs.setdefault(k, (val_ids, []))[1].append(_probs(val, val_ids, squeeze))
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
    # Youden's J per fold (and label) on the fold's seed-mean validation predictions: the
    # fairness tables score the seed-mean test predictions, so the threshold is chosen on the
    # same kind of prediction (the mean of per-seed thresholds is no threshold of that mean).
    thresholds = None
    if fs.task.kind in ("binary", "multilabel"):
        position = pd.Index(fs.stay_id)
        for k, (val_ids, per_seed) in val_probs.items():
            y_val = fs.y[position.get_indexer(val_ids)]
            thr = np.asarray(_thresholds(fs.task.kind, y_val, np.mean(per_seed, axis=0)))
            if thresholds is None:
                thresholds = np.zeros((len(rows), thr.size))
            thresholds[np.isin(rows, test_rows[k])] = thr
        if squeeze and thresholds is not None:
            thresholds = thresholds[:, 0]
    return Pooled(rows, row_fold[rows], clean, scen, thresholds, cross, seconds)


# --------------------------------------------------------------------------------------------
# Scoring one (task, cohort)


def _groups_for(fs, cohort, rows: np.ndarray) -> pd.DataFrame:
    from harness.evaluate.fairness import fairness_groups

    stays = cohort.stays.set_index("stay_id").loc[fs.stay_id[rows]].reset_index()
    return fairness_groups(stays).reset_index(drop=True)


def reference_entry(ref: str, settings: EvalSettings) -> str:
    """The entry name of reference submission ``ref`` under the settings' protocol profile."""
    return ref if settings.protocol == DEFAULT_PROTOCOL else f"{ref}.{settings.protocol}"


def _same_training(prov: dict, settings: EvalSettings) -> bool:
    """Whether a reference's units were trained under this evaluation's profile and epoch cap."""
    protocol = prov.get("protocol") or {}
    profile = protocol.get("profile", DEFAULT_PROTOCOL)
    return profile == settings.protocol and prov.get("max_epochs") == settings.max_epochs


def _reference_frames(
    ref: str, task: str, cohort_dir: str, settings: EvalSettings, dataset: str | None = None
) -> list[pd.DataFrame] | None:
    """Per seed, a reference's unit rows over the settings' folds, or None.

    None when it was not evaluated on these folds and seeds, or under another training protocol
    (profile or epoch cap): a paired delta against it would compare two protocols.
    """
    path = result_path(ref, dataset)
    if not path.is_file():
        return None
    try:
        prov = json.loads(path.read_text())["provenance"]
        key = prov["run_key"]
    except (KeyError, json.JSONDecodeError, TypeError):
        return None
    if not _same_training(prov, settings):
        log.info("reference %s was trained under another protocol; not compared", ref)
        return None
    base = predictions_dir(ref, task, cohort_dir, key, dataset)
    out = []
    for seed in settings.seeds:
        frames = []
        for k in settings.folds:
            path = _unit_path(base, Unit(task, "", k, seed))
            if not path.is_file():
                return None
            frames.append(read_unit(path)[0])
        out.append(pd.concat(frames, ignore_index=True))
    return out


def _test_runs(frames: list[pd.DataFrame], ids: np.ndarray, squeeze: bool):
    """Pooled clean test predictions per seed on the stays ``ids``, or None if some are missing."""
    out = []
    for frame in frames:
        test = frame[(frame["part"] == "test") & (frame["scenario"] == "clean")]
        if not np.isin(ids, test["stay_id"].to_numpy()).all():
            return None
        out.append(_probs(test, ids, squeeze))
    return out


def validation_value(
    metric: str, fs, frames: list[pd.DataFrame], squeeze: bool, column: int | None = None
) -> float:
    """Mean over seeds of ``metric`` on a model's stored validation predictions.

    Labels come from ``fs``; ``column`` scores one label of a multilabel task. NaN when the
    metric is undefined on every seed.
    """
    from harness.evaluate.metrics import METRICS

    fn = METRICS.get(metric)
    values = []
    for frame in frames:
        val = frame[(frame["part"] == "val") & (frame["scenario"] == "clean")]
        pos = pd.Index(fs.stay_id).get_indexer(val["stay_id"].to_numpy())
        val, pos = val[pos >= 0], pos[pos >= 0]
        if len(pos) == 0:
            continue
        p = _probs(val, val["stay_id"].to_numpy(), squeeze)
        y = fs.y[pos]
        if column is not None:
            y, p = y[:, column], p[:, column]
        values.append(fn(y, p))
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def pick_reference(scores: dict[str, float], metric: str) -> str | None:
    """The candidate with the best (validation) value of ``metric``, by its direction.

    Candidates with an undefined value are never picked; ties keep the first in order. The
    choice never looks at the test fold the reference is then compared on: picking the better
    of two references by their test values would favour whichever had lucky test noise and bias
    every delta against the submission.
    """
    from harness.evaluate.metrics import HIGHER_IS_BETTER

    finite = {name: v for name, v in scores.items() if v is not None and np.isfinite(v)}
    if not finite:
        return None
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    return max(finite, key=lambda name: sign * finite[name])


def _unimodal_gain(fs, y, runs, candidates: dict, names: list[str], resamples) -> dict:
    """Per-label gain over the best single modality on that label, chosen on validation."""
    from harness.evaluate.stats import DEFAULT_ALPHA, fusion_gain

    labels = list(fs.task.label_columns)
    chosen = []
    for j in range(len(labels)):
        scores = {n: validation_value("auroc", fs, candidates[n][0], False, j) for n in names}
        chosen.append(pick_reference(scores, "auroc") or names[0])
    composite = [
        np.stack([candidates[chosen[j]][1][s][:, j] for j in range(len(labels))], axis=1)
        for s in range(len(runs))
    ]
    gains = fusion_gain(labels, y, runs, composite, resamples, alpha=DEFAULT_ALPHA)
    for label, ref in zip(labels, chosen, strict=True):
        gains[label]["reference"] = ref
    return {"references": list(names), "metric": "auroc", "alpha": DEFAULT_ALPHA, "labels": gains}


def _cross_block(fs_other, other_ids, runs, kind: str, resample_seed: int | None = None) -> dict:
    """The main metric of a model scored on the other cohort's test stays, with its CI.

    The CI uses the documented protocol, :data:`~harness.evaluate.bootstrap.DEFAULT_N_RESAMPLES`
    subject-level resamples with :data:`~harness.evaluate.bootstrap.DEFAULT_BOOTSTRAP_SEED`
    (shared by every submission scored on those stays). ``resample_seed`` is ignored: it is
    kept so that existing callers still work, and passing 0 no longer changes the resamples.
    """
    from harness.evaluate.bootstrap import (
        DEFAULT_BOOTSTRAP_SEED,
        DEFAULT_N_RESAMPLES,
        bootstrap_indices,
        bootstrap_metric,
        percentile_ci,
    )
    from harness.evaluate.metrics import METRICS, main_metric_for

    pos = pd.Index(fs_other.stay_id).get_indexer(other_ids)
    y = fs_other.y[pos]
    main = main_metric_for(kind, fs_other.task.main_metric)
    metric = METRICS.get(main)
    point = float(np.mean([metric(y, p) for p in runs]))
    r = bootstrap_indices(fs_other.subject_id[pos], DEFAULT_N_RESAMPLES, DEFAULT_BOOTSTRAP_SEED)
    boot = np.mean([bootstrap_metric(main, y, p, r) for p in runs], axis=0)
    low, high = percentile_ci(boot)
    clean = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    return {
        "metric": main,
        "value": clean(point),
        "ci_low": clean(low),
        "ci_high": clean(high),
        "n_stays": int(len(pos)),
        "n_resamples": r.n_resamples,
        "seed": r.seed,
    }


def score_task_cohort(
    name: str, fs, cohort, pooled: Pooled, settings: EvalSettings, cohort_dir: str,
    others: dict[str, Any], dataset: str | None = None,
) -> dict:  # fmt: skip
    """Score one (task, cohort) of entry ``name`` under the settings' protocol profile.

    References (EHR-only, CXR-only, best unimodal, and per label the best single modality) are
    chosen on their stored validation predictions, among those evaluated on the same folds,
    seeds and training protocol. The fusion gain is reported over the EHR-only reference only:
    without one it is null, with the reason.
    """
    from dataclasses import replace

    from harness.evaluate.bootstrap import (
        DEFAULT_BOOTSTRAP_SEED,
        DEFAULT_N_RESAMPLES,
        bootstrap_indices,
    )
    from harness.leaderboard.result import score_predictions

    kind = fs.task.kind
    profile = settings.profile
    main = profile.headline_metric(fs.task)
    rows = pooled.rows
    squeeze = kind == "binary"
    ids = fs.stay_id[rows]
    candidates: dict[str, tuple[list[pd.DataFrame], list[np.ndarray]]] = {}
    for ref in UNIMODAL_REFERENCES:
        entry = reference_entry(ref, settings)
        if entry == name:
            continue
        frames = _reference_frames(entry, fs.task.name, cohort_dir, settings, dataset)
        runs = None if frames is None else _test_runs(frames, ids, squeeze)
        if runs is None:
            log.info("reference %s has no predictions for %s/%s", entry, fs.task.name, cohort.name)
            continue
        candidates[entry] = (frames, runs)
    val = {e: validation_value(main, fs, frames, squeeze) for e, (frames, _) in candidates.items()}

    def choose(refs: Sequence[str]) -> str | None:
        names = [reference_entry(r, settings) for r in refs]
        present = [n for n in names if n in candidates]
        # undefined on validation everywhere: the first in order, never the test fold's best
        return pick_reference({n: val[n] for n in present}, main) or next(iter(present), None)

    ehr_ref, cxr_ref = choose(EHR_REFERENCES), choose(CXR_REFERENCES)
    best = choose(UNIMODAL_REFERENCES)
    refs = {r: candidates[r][1] for r in dict.fromkeys((ehr_ref, best, cxr_ref)) if r}
    resamples = bootstrap_indices(
        fs.subject_id[rows], settings.n_resamples or DEFAULT_N_RESAMPLES, DEFAULT_BOOTSTRAP_SEED
    )
    kwargs: dict[str, Any] = {}
    if settings.min_group_size:
        kwargs["min_group_size"] = settings.min_group_size
    if profile.threshold is not None:
        threshold: Any = profile.threshold
    else:
        threshold = pooled.thresholds if pooled.thresholds is not None else 0.5
    y = fs.y[rows]
    block = score_predictions(
        kind,
        y,
        pooled.clean,
        fs.subject_id[rows],
        fold=pooled.fold,
        label_names=list(fs.task.label_columns) if kind == "multilabel" else None,
        groups=_groups_for(fs, cohort, rows),
        threshold=threshold,
        reference_probs=refs or None,
        fusion_reference=ehr_ref,
        unimodal_references=[],  # chosen on validation below, not by test point value
        scenario_probs=pooled.scenarios or None,
        main_metric=main,
        resamples=resamples,
        **kwargs,
    )
    block["references"] = {"ehr_only": ehr_ref, "cxr_only": cxr_ref, "best_unimodal": best}
    if kind == "multilabel":
        if ehr_ref is None:
            block["fusion_gain"] = None
            block["fusion_gain_reason"] = (
                f"no EHR-only reference ({', '.join(EHR_REFERENCES)}) was evaluated on these "
                "stays under this protocol; a gain over another reference is not a gain over "
                "the EHR-only reference"
            )
        elif cxr_ref is not None:
            block["fusion_gain_unimodal"] = _unimodal_gain(
                fs, y, pooled.clean, candidates, [ehr_ref, cxr_ref], resamples
            )
    if profile.threshold is not None:
        fairness = block.get("fairness") or {}
        for report in [fairness, *(fairness.get("labels") or {}).values()]:
            if report.get("threshold_rule") == VALIDATION_THRESHOLD_RULE:
                report["threshold_rule"] = profile.threshold_rule
    if pooled.cross:
        scored = others
        if main != fs.task.main_metric:  # cross-cohort values on the profile's headline too
            scored = {
                o: f.replace(task=replace(f.task, main_metric=main)) for o, f in others.items()
            }
        block["cross_cohort"] = {
            f"{cohort.name}->{other}": _cross_block(
                scored[other], other_ids, runs, kind, resample_seed=0
            )
            for other, (other_ids, runs) in pooled.cross.items()
            if other in scored
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


def folds_shared_by_subject(sets: Sequence[Any]) -> bool:
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


class _LazyRunner:
    """Opens the executor's runner on the first unit that needs training (none when all reuse).

    ``close`` ends the current runner (the next unit gets a fresh one); meanwhile a spare is
    started in the background, so a sandbox's start-up overlaps the previous fold's work.
    """

    def __init__(self, executor, sub, limits):
        self.executor, self.sub, self.limits = executor, sub, limits
        self.runner = None
        self.spare = None

    def _get(self):
        if self.runner is None:
            self.runner = self.spare or self.executor.open(self.sub, self.limits)
            self.spare = self.executor.prestart(self.sub, self.limits)
        return self.runner

    def shutdown(self) -> None:
        self.close()
        if self.spare is not None:
            self.spare.close()
            self.spare = None

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
        settings = resolve_folds(settings, cohorts)
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
                fs = fs.replace(provenance={**fs.provenance, "n_folds": cohort_n_folds(cohort)})
                sets[c] = subgroup_reference(fs, cohorts, dataset)
            where = {
                c: predictions_dir(name, task, cohorts[c].path.name, key, dataset) for c in sets
            }
            others_of = {
                c: ({o: f for o, f in sets.items() if o != c} if settings.cross_cohort else {})
                for c in sets
            }
            shared = folds_shared_by_subject(list(sets.values()))
            for k in settings.folds:
                # A fresh worker per (task, fold), or per (task, cohort, fold) when the cohorts'
                # folds do not follow the subject: everything one worker serves shares one test
                # split, so nothing it remembers from a unit reveals a label of another unit's
                # test stays (fold k's test stays are in the training set of every other fold).
                for c, fs in sets.items():
                    if not shared:
                        runner.close()
                    for s in settings.seeds:
                        unit = Unit(task, c, k, s)
                        path = _unit_path(where[c], unit)
                        if progress:
                            progress(unit.label, done, total)
                        if path.is_file() and _readable_unit(path):
                            reused += 1
                        else:
                            run_unit(runner, fs, unit, settings, scenario_names, others_of[c], path)
                            ran += 1
                        done += 1
                runner.close()
            for c, fs in sets.items():
                cohort = cohorts[c]
                pooled = pool_units(fs, where[c], settings.folds, settings.seeds)
                train_seconds += pooled.train_seconds
                blocks.setdefault(task, {})[c] = score_task_cohort(
                    name, fs, cohort, pooled, settings, cohort.path.name, others_of[c], dataset
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
            protocol=protocol_record(settings, tasks),
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
        runner.shutdown()
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
    """Leaderboard entry name: the submission's, plus ``.cxrdrop<rate>`` under the override and
    ``.<profile>`` under a protocol profile other than ``honest`` (e.g. ``ehr_lstm.carebench``):
    an entry's identity includes its protocol, so both can be kept and compared."""
    name = submission_name
    if settings.train_cxr_dropout is not None:
        name += f".cxrdrop{settings.train_cxr_dropout:g}"
    if settings.protocol != DEFAULT_PROTOCOL:
        name += f".{settings.protocol}"
    return name


def subgroup_reference(fs, cohorts: dict[str, Any], dataset: str | None = None):
    """``fs`` with the ``base`` cohort's CXR availability per group attached, for the
    `cxr_missing_subgroup` scenario (on ``matched`` every stay has an image: its own
    availability would make the scenario MCAR)."""
    from harness.evaluate.scenarios import AVAILABILITY_COHORT, with_availability_reference

    base = cohorts.get(AVAILABILITY_COHORT)
    if base is None:
        from harness.cohort import load_cohort

        base = load_cohort(AVAILABILITY_COHORT, dataset)
    return with_availability_reference(fs, base.stays, AVAILABILITY_COHORT)


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
