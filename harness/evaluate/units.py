"""Units of an evaluation: one (task, cohort, fold, seed) trained, predicted and stored.

A unit is trained through a :class:`~harness.executors.Runner`; its per-stay predictions
(validation, clean test, every scenario and rate, the other cohorts' test stays) and its
metadata (validation thresholds, score, epochs, time) are written atomically to one parquet file
(:func:`harness.evaluate.paths.unit_path`), so an interrupted evaluation resumes where it
stopped. The folder of those files is keyed by :func:`run_key`: a hash of the submission's files,
the protocol code, the encoder, the scenarios and the training overrides, so editing the model
never reuses stale predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from harness.evaluate.protocol import DEFAULT_PROTOCOL
from harness.evaluate.requests import VariantChains, changed_stays, predict_all, scatter_rows
from harness.io import atomic_write_bytes, hash_files
from harness.progress import Bar
from harness.progress import bar as progress_bar
from harness.timing import add as add_stage_seconds
from harness.timing import add_spans, stage

if TYPE_CHECKING:
    from harness.evaluate.run import EvalSettings
    from harness.executors import TrainJob, TrainSummary
    from harness.models.data import FeatureSet, Split
    from harness.models.protocol import Tensors
    from harness.models.submission import Submission

log = logging.getLogger(__name__)

#: 2: every unit computes with its submission's ``resources.cpus`` threads (a different
#: thread count rounds differently, so units of version 1 are trained again).
UNIT_SCHEMA_VERSION = 2
#: Harness modules whose code decides what a unit computes: editing them invalidates units.
PROTOCOL_MODULES = (
    "models/data.py", "models/train.py", "evaluate/scenarios.py", "evaluate/requests.py",
    "metrics/registry.py",  # checkpoint selection scores validation with a registered metric
)  # fmt: skip


class UnitRunner(Protocol):
    """What training a unit needs of a runner: a :class:`~harness.executors.Runner`, or the
    evaluation's lazy wrapper around one."""

    def train(self, job: TrainJob) -> TrainSummary: ...

    def predict(self, tensors: Tensors) -> np.ndarray: ...


@dataclass(frozen=True)
class Unit:
    """One (task, cohort, fold, seed) of an evaluation."""

    task: str
    cohort: str
    fold: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.task}/{self.cohort} fold {self.fold} seed {self.seed}"


# --------------------------------------------------------------------------------------------
# Which predictions a unit folder holds


def submission_digest(sub: Submission) -> str:
    """Hash of every file of the submission folder that can change its behaviour."""
    files = [p for p in sub.path.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".yml")]
    return hash_files(sub.path, [p for p in files if "__pycache__" not in p.parts])


def protocol_digest() -> str:
    """Hash of the harness code that decides what a unit computes (:data:`PROTOCOL_MODULES`)."""
    root = Path(__file__).resolve().parents[1]
    return hash_files(root, [root / m for m in PROTOCOL_MODULES])


def run_key(
    sub: Submission, settings: EvalSettings, encoder_key: str, scenarios: Sequence[str],
    tuned: str | None = None,
) -> str:  # fmt: skip
    """Key of a unit folder: submission files, protocol code, encoder, scenarios, overrides
    (``tuned``: the digest of the tuned configurations, :meth:`TunedConfigs.digest`)."""
    payload: dict[str, Any] = {
        "submission": submission_digest(sub),
        "protocol": protocol_digest(),
        "scenarios": sorted(scenarios),
        "encoder_key": encoder_key,
        "max_epochs": settings.max_epochs,
        "unit_schema": UNIT_SCHEMA_VERSION,
    }
    if settings.train_cxr_dropout is not None:
        payload["train_cxr_dropout"] = settings.train_cxr_dropout
    if tuned is not None:
        payload["tuned"] = tuned
    if settings.protocol != DEFAULT_PROTOCOL:  # another selection metric: other checkpoints
        payload["profile"] = settings.protocol  # beside the code digest, never replacing it
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# One unit: train, predict validation (thresholds), clean test, scenarios, other cohorts


def _prob_columns(p: np.ndarray) -> dict[str, np.ndarray]:
    p = p.reshape(len(p), -1)
    return {f"prob_{j}": p[:, j].astype(np.float64) for j in range(p.shape[1])}


def prediction_frame(
    stay_id: np.ndarray, part: str, scenario: str, rate: float, p: np.ndarray
) -> pd.DataFrame:
    """Rows of a unit file: stay, part (val, test, cross:<cohort>), scenario, rate, probs."""
    cols: dict[str, Any] = {
        "stay_id": stay_id.astype(np.int64),
        "part": part,
        "scenario": scenario,
        "rate": np.float64(rate),
    }
    cols.update(_prob_columns(p))
    return pd.DataFrame(cols)


def select_thresholds(task_kind: str, y_val: np.ndarray, p_val: np.ndarray) -> list[float]:
    """Youden's J threshold (per label of a multilabel task) on validation; none for multiclass."""
    from harness.metrics.fairness import select_threshold

    if task_kind == "binary":
        return [select_threshold(y_val, p_val)]
    if task_kind == "multilabel":
        return [select_threshold(y_val[:, j], p_val[:, j]) for j in range(y_val.shape[1])]
    return []


def _train(
    runner: UnitRunner, fs: FeatureSet, unit: Unit, settings: EvalSettings, split: Split,
    key: bytes, config: dict[str, Any] | None = None,
) -> TrainSummary:  # fmt: skip
    """Train the unit's model on the fold's training and validation tensors (pseudonymised)."""
    from harness.executors import TrainJob
    from harness.executors.base import pseudonymise

    # checkpoint selection on the profile's metric (honest: the task YAML's main_metric)
    task = replace(fs.task, main_metric=settings.profile.selection_metric(fs.task))
    return runner.train(
        TrainJob(
            task=task, fold=unit.fold, seed=unit.seed, variables=list(fs.variables),
            train=pseudonymise(split.train, key), val=pseudonymise(split.val, key),
            device=settings.device, max_epochs=settings.max_epochs,
            cxr_dropout=settings.train_cxr_dropout, config=config,
        )
    )  # fmt: skip


def _n_variants(names: Sequence[str]) -> int:
    """Variants of the test rows the scenarios ``names`` make (one per non-zero rate)."""
    from harness.evaluate.scenarios import SCENARIOS

    return sum(1 for name in names for rate in SCENARIOS.get(name).rates if rate != 0.0)


def _scenario_chains(
    fs: FeatureSet, unit: Unit, names: Sequence[str], split: Split, clean: Tensors,
    inputs: Sequence[str] | None, progress: Bar | None = None,
) -> VariantChains:  # fmt: skip
    """Every scenario at every non-zero rate, as chains of variants of the clean test rows
    (each counted on ``progress``)."""
    from harness.evaluate.scenarios import SCENARIOS, test_population
    from harness.executors.wire import without_labels
    from harness.models.data import make_tensors

    _, _, test_idx = fs.split(unit.fold)
    population = test_population(fs, test_idx)  # the test rows, degraded as within fs
    local = np.arange(len(test_idx))
    chains = VariantChains(clean)
    for name in names:
        scenario = SCENARIOS.get(name)
        chains.start_chain()
        for rate in sorted(r for r in scenario.rates if r != 0.0):
            degraded = scenario.degrade(population, local, rate, unit.fold)
            # tensors are built stay by stay: only the stays whose inputs changed are rebuilt
            rows = np.flatnonzero(changed_stays(population, degraded, local, inputs))
            if rows.size == 0:  # nothing the model reads changed (e.g. no image to drop)
                chains.add(clean, rows, label=(name, rate))
            else:
                part = make_tensors(degraded, rows, split.stats, inputs=inputs)
                chains.add(
                    scatter_rows(clean, rows, without_labels(part)), rows, label=(name, rate)
                )
            if progress is not None:
                progress.advance()
    return chains


def unit_file_bytes(table: pd.DataFrame, meta: Mapping[str, Any]) -> bytes:
    """A unit file's content: the predictions as parquet, ``meta`` in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({b"harness_unit": json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def write_unit(out_path: Path, table: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    """Write a unit file atomically: the predictions, with ``meta`` in the parquet metadata."""
    atomic_write_bytes(out_path, unit_file_bytes(table, meta))


def run_unit(
    runner: UnitRunner,
    fs: FeatureSet,
    unit: Unit,
    settings: EvalSettings,
    scenario_names: Sequence[str],
    others: Mapping[str, FeatureSet],
    out_path: Path,
    inputs: Sequence[str] | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Train one (task, cohort, fold, seed) through ``runner`` and write its predictions
    (``config``: a tuned configuration of the submission's search space); see `compute_unit`."""
    table, meta = compute_unit(
        runner, fs, unit, settings, scenario_names, others, inputs=inputs, config=config
    )
    with stage("write"):
        write_unit(out_path, table, meta)


def unit_pseudonym_key(unit: Unit) -> bytes:
    """The key stay ids of ``unit`` are pseudonymised with (one per task, cohort and fold)."""
    from harness.executors.base import pseudonym_key

    return pseudonym_key(f"{unit.task}/{unit.cohort}/{unit.fold}")


def compute_unit(
    runner: UnitRunner,
    fs: FeatureSet,
    unit: Unit,
    settings: EvalSettings,
    scenario_names: Sequence[str],
    others: Mapping[str, FeatureSet],
    inputs: Sequence[str] | None = None,
    config: dict[str, Any] | None = None,
    key: bytes | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train one (task, cohort, fold, seed) through ``runner``: its predictions and metadata
    (``key``: the stay-id pseudonym key, :func:`unit_pseudonym_key` when None; a remote worker
    gets it from the harness process that holds the cache's secret).

    The harness prepares every input here, on its side of the trust boundary: the fold's
    normalisation is fitted on its training stays, the model receives the training and
    validation tensors with labels, then only inputs (no labels) for validation, clean test,
    each scenario and rate and the other cohort, every input the submission does not declare
    (``inputs``) zeroed. Rows identical to rows already asked are not asked again
    (:mod:`harness.evaluate.requests`). Thresholds are chosen here from the validation labels
    the model's answers are compared with.
    """
    from harness.executors.base import pseudonymise
    from harness.executors.wire import without_labels
    from harness.models.data import make_tensors, prepare_split, restrict_inputs

    key = unit_pseudonym_key(unit) if key is None else key
    with stage("load"):
        split = prepare_split(fs, unit.fold)
        split = replace(
            split,
            train=restrict_inputs(split.train, inputs),
            val=restrict_inputs(split.val, inputs),
            test=restrict_inputs(split.test, inputs),
        )
    with stage("train.other"):  # less the worker's own optimizer-step and validation time
        summary = _train(runner, fs, unit, settings, split, key, config)
        for name, seconds in summary.stage_seconds.items():
            add_stage_seconds(name, seconds)
        add_spans("train.steps", summary.step_spans)
    _, val_idx, test_idx = fs.split(unit.fold)
    with stage("predict"):
        clean_test = without_labels(split.test)
        n_inputs = _n_variants(scenario_names) + len(others)
        with progress_bar("scenario and cross-cohort inputs", n_inputs, unit="set") as built:
            chains = _scenario_chains(fs, unit, scenario_names, split, clean_test, inputs, built)
            crosses = []
            for other_name, other_fs in others.items():
                _, _, other_test = other_fs.split(unit.fold)
                t = make_tensors(other_fs, other_test, split.stats, inputs=inputs)
                crosses.append((other_name, other_fs.stay_id[other_test], without_labels(t)))
                built.advance()
        parts = [without_labels(split.val), clean_test, *chains.requests()]
        parts += [t for _, _, t in crosses]
        with progress_bar("predictions", sum(len(p) for p in parts), unit="row") as asked:

            def ask(t: Tensors) -> np.ndarray:
                p = runner.predict(pseudonymise(t, key))
                asked.advance(len(t))
                return p

            answers = predict_all(ask, [without_labels(p) for p in parts])
        p_val, p_test = answers[0], answers[1]
        n_variants = len(chains.variants)
        scenario_p = chains.answers(p_test, answers[2 : 2 + n_variants])
        test_ids = fs.stay_id[test_idx]
        frames = [
            prediction_frame(fs.stay_id[val_idx], "val", "clean", 0.0, p_val),
            prediction_frame(test_ids, "test", "clean", 0.0, p_test),
            *(
                prediction_frame(test_ids, "test", v.label[0], v.label[1], p)
                for v, p in zip(chains.variants, scenario_p, strict=True)
            ),
            *(
                prediction_frame(ids, f"cross:{name}", "clean", 0.0, p)
                for (name, ids, _), p in zip(crosses, answers[2 + n_variants :], strict=True)
            ),
        ]
    meta = {
        "unit_schema": UNIT_SCHEMA_VERSION,
        "task": unit.task,
        "cohort": unit.cohort,
        "fold": unit.fold,
        "seed": unit.seed,
        "thresholds": select_thresholds(fs.task.kind, fs.y[val_idx], p_val),
        "val_score": float(summary.val_score),
        "best_epoch": int(summary.best_epoch),
        "train_seconds": float(summary.train_seconds),
    }
    return pd.concat(frames, ignore_index=True), meta


# --------------------------------------------------------------------------------------------
# Reading finished units back


def read_unit(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A unit file's predictions and metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"harness_unit"])
    return table.to_pandas(), meta


def readable_unit(path: Path) -> bool:
    """Whether a finished unit's file can be read back; a damaged one is set aside and redone."""
    try:
        read_unit(path)
        return True
    except Exception as exc:  # noqa: BLE001 - truncated parquet, bad metadata: all recomputed
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        log.warning("%s cannot be read (%s); kept as %s and trained again", path, exc, aside.name)
        return False


def finished(path: Path) -> bool:
    """Whether ``path`` holds a finished, readable unit (to reuse rather than train again)."""
    return path.is_file() and readable_unit(path)
