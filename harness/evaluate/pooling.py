"""Pool an entry's finished units of one (task, cohort) into per-seed out-of-fold arrays.

Every test stay is predicted once per seed by the fold model that did not see it; pooling
gathers those predictions in the feature set's row order (clean, per scenario and rate, on the
other cohorts), with each row's fold and the decision thresholds chosen on validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.evaluate.paths import unit_path
from harness.evaluate.units import read_unit, select_thresholds

if TYPE_CHECKING:
    from harness.models.data import FeatureSet

#: Per seed, the pooled predictions of every row (clean, one scenario rate, or a cohort).
Runs = list[np.ndarray]


@dataclass
class Pooled:
    """Out-of-fold predictions of one (task, cohort), rows aligned with ``rows`` of the set."""

    rows: np.ndarray  # positions in the FeatureSet
    fold: np.ndarray
    clean: Runs  # per seed
    scenarios: dict[str, dict[float, Runs]]
    #: per row (binary) or per row and label (multilabel): Youden's J of the row's fold on the
    #: seed-mean validation predictions
    thresholds: np.ndarray | None
    cross: dict[str, tuple[np.ndarray, Runs]]  # other cohort -> (stay ids, per seed)
    train_seconds: float


def probs_of(frame: pd.DataFrame, order: np.ndarray, squeeze: bool) -> np.ndarray:
    """The ``prob_*`` columns of ``frame`` for stays ``order`` (one column when ``squeeze``)."""
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    by_id = frame.set_index("stay_id")[cols]
    arr = by_id.loc[order].to_numpy(np.float64)
    return arr[:, 0] if squeeze else arr


def _test_rows(fs: FeatureSet, folds: Sequence[int]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Each fold's test rows, and all of them sorted; overlapping test sets are an error."""
    test_rows = {k: fs.split(k)[2] for k in folds}
    rows = np.sort(np.concatenate([test_rows[k] for k in folds]))
    if len(np.unique(rows)) != len(rows):
        raise InputError(
            f"the test stays of folds {list(folds)} overlap: out-of-fold pooling needs each "
            "stay tested once",
            fix="evaluate folds whose test sets are disjoint (e.g. one fold at a time)",
        )
    return test_rows, rows


def _fold_thresholds(
    fs: FeatureSet,
    val_probs: dict[int, tuple[np.ndarray, Runs]],
    test_rows: dict[int, np.ndarray],
    rows: np.ndarray,
) -> np.ndarray | None:
    """Youden's J per fold (and label) on the fold's seed-mean validation predictions, per row.

    The fairness tables score the seed-mean test predictions, so the threshold is chosen on the
    same kind of prediction (the mean of per-seed thresholds is no threshold of that mean).
    """
    if fs.task.kind not in ("binary", "multilabel"):
        return None
    thresholds = None
    position = pd.Index(fs.stay_id)
    for k, (val_ids, per_seed) in val_probs.items():
        y_val = fs.y[position.get_indexer(val_ids)]
        thr = np.asarray(select_thresholds(fs.task.kind, y_val, np.mean(per_seed, axis=0)))
        if thresholds is None:
            thresholds = np.zeros((len(rows), thr.size))
        thresholds[np.isin(rows, test_rows[k])] = thr
    if fs.task.kind == "binary" and thresholds is not None:
        return thresholds[:, 0]
    return thresholds


def pool_units(fs: FeatureSet, base: Path, folds: Sequence[int], seeds: Sequence[int]) -> Pooled:
    """Pool the unit files under ``base`` (every fold x seed must be there)."""
    squeeze = fs.task.kind == "binary"
    test_rows, rows = _test_rows(fs, folds)
    row_fold = np.zeros(len(fs), dtype=np.int64)
    for k in folds:
        row_fold[test_rows[k]] = k
    ids = fs.stay_id[rows]
    clean: Runs = []
    scen: dict[str, dict[float, Runs]] = {}
    cross: dict[str, tuple[np.ndarray, Runs]] = {}
    val_probs: dict[int, tuple[np.ndarray, Runs]] = {}  # fold -> (ids, per seed)
    seconds = 0.0
    for seed in seeds:
        parts = []
        for k in folds:
            frame, meta = read_unit(unit_path(base, k, seed))
            parts.append(frame)
            seconds += meta["train_seconds"]
            val = frame[frame["part"] == "val"]
            val_ids = val_probs[k][0] if k in val_probs else np.sort(val["stay_id"].to_numpy())
            val_probs.setdefault(k, (val_ids, []))[1].append(probs_of(val, val_ids, squeeze))
        frame = pd.concat(parts, ignore_index=True)
        test = frame[frame["part"] == "test"]
        clean.append(probs_of(test[test["scenario"] == "clean"], ids, squeeze))
        for (name, rate), sub in test[test["scenario"] != "clean"].groupby(["scenario", "rate"]):
            runs = scen.setdefault(str(name), {}).setdefault(float(cast(float, rate)), [])
            runs.append(probs_of(sub, ids, squeeze))
        for part, sub in frame[frame["part"].str.startswith("cross:")].groupby("part"):
            other = str(part).split(":", 1)[1]
            other_ids = np.sort(sub["stay_id"].to_numpy())
            cross.setdefault(other, (other_ids, []))[1].append(probs_of(sub, other_ids, squeeze))
    for name in scen:
        scen[name][0.0] = clean
    thresholds = _fold_thresholds(fs, val_probs, test_rows, rows)
    return Pooled(rows, row_fold[rows], clean, scen, thresholds, cross, seconds)
