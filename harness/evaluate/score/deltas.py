"""Paired deltas: every metric of an entry minus a reference's, on the shared resamples.

Both are scored on the same stays and the same patient-level resamples, so the delta's CI is
the percentile interval of the per-resample differences; its p-value uses the normal
approximation with the bootstrap SE (:data:`~harness.metrics.bootstrap.P_VALUE_METHOD`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.evaluate.score.accuracy import Scored, check_runs, score_metric
from harness.metrics.bootstrap import Resamples, paired_delta


def deltas_against(
    reference: list[np.ndarray],
    scored: Mapping[str, Scored],
    y: np.ndarray,
    fold: np.ndarray | None,
    r: Resamples,
) -> dict[str, dict[str, Any]]:
    """Metric -> delta of the entry (``scored``) over one reference's predictions."""
    deltas = {}
    for name, mine in scored.items():
        ref = score_metric(name, y, reference, fold, r)
        deltas[name] = paired_delta(mine.point, ref.point, mine.boot, ref.boot).to_dict()
    return deltas


def paired_deltas(
    reference_probs: Mapping[str, Sequence[np.ndarray]],
    scored: Mapping[str, Scored],
    y: np.ndarray,
    shape: tuple,
    fold: np.ndarray | None,
    r: Resamples,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Reference -> metric -> paired delta, for every reference given."""
    return {
        name: deltas_against(
            check_runs(f"reference_probs[{name!r}]", runs, shape), scored, y, fold, r
        )
        for name, runs in reference_probs.items()
    }
