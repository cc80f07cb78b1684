"""Cross-cohort block: each fold model scored on the other cohorts' test stays of its fold.

The CI uses the documented protocol, :data:`~harness.metrics.bootstrap.DEFAULT_N_RESAMPLES`
subject-level resamples with :data:`~harness.metrics.bootstrap.DEFAULT_BOOTSTRAP_SEED` (shared
by every submission scored on those stays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.evaluate.score.accuracy import clean
from harness.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_N_RESAMPLES,
    bootstrap_indices,
    bootstrap_metric,
    percentile_ci,
)
from harness.metrics.registry import METRICS, main_metric_for

if TYPE_CHECKING:
    from harness.models.data import FeatureSet


def cross_block(
    fs_other: FeatureSet,
    other_ids: np.ndarray,
    runs: list[np.ndarray],
    kind: str,
    resample_seed: int | None = None,
) -> dict[str, Any]:
    """The main metric of a model scored on the other cohort's test stays, with its CI.

    ``resample_seed`` is ignored: it is kept so that existing callers still work, and passing 0
    no longer changes the resamples.
    """
    pos = pd.Index(fs_other.stay_id).get_indexer(other_ids)
    y = fs_other.y[pos]
    main = main_metric_for(kind, fs_other.task.main_metric)
    metric = METRICS.get(main)
    point = float(np.mean([metric(y, p) for p in runs]))
    r = bootstrap_indices(fs_other.subject_id[pos], DEFAULT_N_RESAMPLES, DEFAULT_BOOTSTRAP_SEED)
    boot = np.mean([bootstrap_metric(main, y, p, r) for p in runs], axis=0)
    low, high = percentile_ci(boot)
    return {
        "metric": main,
        "value": clean(point),
        "ci_low": clean(low),
        "ci_high": clean(high),
        "n_stays": int(len(pos)),
        "n_resamples": r.n_resamples,
        "seed": r.seed,
    }


def cross_cohort_block(
    cohort: str,
    cross: Mapping[str, tuple[np.ndarray, list[np.ndarray]]],
    others: Mapping[str, FeatureSet],
    kind: str,
    headline: str,
    task_metric: str | None,
) -> dict[str, dict[str, Any]]:
    """``<cohort>-><other>`` -> the model on each other cohort, scored on ``headline`` (the
    profile's headline metric) also where it is not the task's own ``task_metric``."""
    scored = dict(others)
    if headline != task_metric:
        scored = {
            o: f.replace(task=replace(f.task, main_metric=headline)) for o, f in others.items()
        }
    return {
        f"{cohort}->{other}": cross_block(scored[other], other_ids, runs, kind, resample_seed=0)
        for other, (other_ids, runs) in cross.items()
        if other in scored
    }
