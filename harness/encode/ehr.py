"""EHR tensors: the cohort's long hourly frame as dense (stays x 48 x F) arrays plus summaries.

Values stay in physical units with NaN where unobserved; normalisation is a per-fold concern of the
evaluation stage and is deliberately not applied here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.store import EHRFeatures

log = logging.getLogger(__name__)

N_HOURS = 48
#: Per-variable statistics in the ``summary`` array, in this order for each variable.
SUMMARY_STATS = ("mean", "min", "max", "last", "std", "slope", "count")
HOURLY_COLUMNS = ("stay_id", "hour", "variable", "value")


def summary_names(variables: Sequence[str]) -> list[str]:
    return [f"{v}__{s}" for v in variables for s in SUMMARY_STATS]


def build_ehr_tensors(
    hourly: pd.DataFrame,
    stay_ids: Sequence[int] | np.ndarray,
    variables: Sequence[str],
    *,
    source: str = "",
) -> EHRFeatures:
    """Scatter the long hourly frame into dense arrays ordered by ``stay_ids`` and ``variables``.

    Rows for stays or variables outside the given lists are ignored (and counted in the log).

    Raises:
        InputError: a column is missing, an hour is outside 0..47, or a (stay, hour, variable)
            cell appears twice.
    """
    missing = [c for c in HOURLY_COLUMNS if c not in hourly.columns]
    if missing:
        raise InputError(
            f"hourly frame lacks column(s) {missing}; expected {list(HOURLY_COLUMNS)}",
            path=source or None,
            fix="rebuild the cohort with `harness cohort build`",
        )
    ids = np.asarray(stay_ids, dtype=np.int64)
    names = list(variables)
    n, f = len(ids), len(names)
    stay_pos = pd.Index(ids).get_indexer(pd.Index(hourly["stay_id"].to_numpy(np.int64)))
    var_pos = pd.Index(names).get_indexer(pd.Index(hourly["variable"].astype(str)))
    hours = hourly["hour"].to_numpy()
    if len(hours) and (hours.min() < 0 or hours.max() >= N_HOURS):
        raise InputError(
            f"hourly 'hour' must be in 0..{N_HOURS - 1}, found {hours.min()}..{hours.max()}",
            path=source or None,
            fix="rebuild the cohort; hours are counted from ICU admission",
        )
    keep = (stay_pos >= 0) & (var_pos >= 0)
    if (~keep).any():
        log.info("ignoring %d hourly rows outside the cohort's stays/variables", int((~keep).sum()))
    s, h, v = stay_pos[keep], hours[keep].astype(np.int64), var_pos[keep]
    vals = hourly["value"].to_numpy(np.float64)[keep]
    flat = (s * N_HOURS + h) * f + v
    if len(np.unique(flat)) != len(flat):
        raise InputError(
            "hourly frame has more than one value for the same (stay_id, hour, variable)",
            path=source or None,
            fix="aggregate to one value per hour when building the cohort",
        )
    values = np.full((n, N_HOURS, f), np.nan, dtype=np.float32)
    values.reshape(-1)[flat] = vals.astype(np.float32)
    observed = ~np.isnan(values)
    summary = summarise(values)
    return EHRFeatures(
        stay_id=ids,
        values=values,
        observed=observed,
        summary=summary,
        variables=names,
        summary_names=summary_names(names),
    )


def summarise(values: np.ndarray) -> np.ndarray:
    """Per stay and variable: mean, min, max, last, std (ddof=0), least-squares slope per hour,
    count of observed hours. Unobserved statistics are NaN (count is 0)."""
    n, t, f = values.shape
    obs = ~np.isnan(values)
    count = obs.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(obs, values.astype(np.float64), 0.0)
        mean = x.sum(axis=1) / count
        vmin = np.where(obs, values, np.inf).min(axis=1).astype(np.float64)
        vmax = np.where(obs, values, -np.inf).max(axis=1).astype(np.float64)
        vmin[count == 0] = np.nan
        vmax[count == 0] = np.nan
        dev = np.where(obs, values - mean[:, None, :], 0.0)
        std = np.sqrt((dev**2).sum(axis=1) / count)
        hours = np.arange(t, dtype=np.float64)[None, :, None]
        hbar = np.where(obs, hours, 0.0).sum(axis=1) / count
        hdev = np.where(obs, hours - hbar[:, None, :], 0.0)
        sxx = (hdev**2).sum(axis=1)
        slope = (hdev * dev).sum(axis=1) / sxx
        slope[count < 2] = np.nan
        last_idx = t - 1 - np.argmax(obs[:, ::-1, :], axis=1)
        last = np.take_along_axis(values, last_idx[:, None, :], axis=1)[:, 0, :].astype(np.float64)
        last[count == 0] = np.nan
    stats = np.stack([mean, vmin, vmax, last, std, slope, count], axis=2)  # n, f, S
    return stats.reshape(n, f * len(SUMMARY_STATS)).astype(np.float32)
