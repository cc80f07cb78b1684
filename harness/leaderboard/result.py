"""Build one submission's ``result.json`` from pooled out-of-fold predictions (aggregates only).

The orchestration collects, per task and cohort, one pooled out-of-fold probability array per
seed (every stay predicted once per seed by the fold model that did not see it) and calls
:func:`score_predictions`; :func:`build_result` assembles the blocks with provenance and
:func:`write_result` validates, signs and writes the file atomically. Nothing per stay is written.

Conventions: the point value of a metric is the mean over seeds of the metric on the pooled
predictions; its 95% CI is the percentile interval of the same seed-mean over the shared
patient-level resamples; ``mean``/``sd`` are over folds x seeds units (sd with ddof=1).
Fairness is computed on the seed-mean probability (one decision per stay). Every summary also
records ``undefined_fraction``, the share of resamples on which the metric is undefined (one class
present) and left out of the CI, and ``unstable`` when that share exceeds 1 %. Paired-delta
p-values use the normal approximation with the bootstrap SE (``bootstrap.p_value_method``); the
per-label fusion gains are BH-adjusted within the family named in ``bh_family``. Robustness areas
carry a percentile CI from the same shared resamples. ``main_resamples`` holds the headline
metric's seed-mean value on every shared resample (rounded, null where undefined), for the
leaderboard's paired tests against the leader; it is checked but never published.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from harness import __version__
from harness.errors import InputError
from harness.evaluate.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_N_RESAMPLES,
    P_VALUE_METHOD,
    UNSTABLE_FRACTION,
    Resamples,
    bootstrap_indices,
    bootstrap_metric,
    paired_delta,
    percentile_ci,
    undefined_fraction,
)
from harness.evaluate.fairness import (
    DEFAULT_MIN_GROUP_SIZE,
    binary_fairness,
    multiclass_fairness,
)
from harness.evaluate.metrics import METRICS, PER_LABEL_METRICS, main_metric_for, metrics_for
from harness.evaluate.stats import BH_FAMILY, DEFAULT_ALPHA, fusion_gain
from harness.io import atomic_write_text
from harness.leaderboard.publish import error_category, sanitize_message
from harness.leaderboard.schema import RESULT_SCHEMA, SCHEMA_VERSION, validate
from harness.leaderboard.signing import SIGNATURE_FIELD, sign, signing_key

log = logging.getLogger(__name__)

#: Decimals of the stored per-resample headline values (``main_resamples``).
RESAMPLE_DECIMALS = 6

PROVENANCE_PACKAGES = (
    "numpy", "pandas", "scikit-learn", "fairlearn", "torch", "zarr", "open-clip-torch", "timm",
)  # fmt: skip


def _clean(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _check_runs(name: str, runs: Sequence[np.ndarray], shape: tuple) -> list[np.ndarray]:
    if isinstance(runs, np.ndarray):
        raise InputError(
            f"{name} must be a list with one pooled probability array per seed, got one array",
            fix=f"pass [{name}] for a single seed",
        )
    out = [np.asarray(r, dtype=np.float64) for r in runs]
    if not out:
        raise InputError(f"{name} is empty", fix="pass at least one seed's pooled predictions")
    for r in out:
        if r.shape != shape:
            raise InputError(
                f"{name} has an array of shape {r.shape}, expected {shape}",
                fix="pool every fold's test predictions into one array per seed, "
                "rows aligned with y_true",
            )
        if not np.all(np.isfinite(r)) or r.min() < 0 or r.max() > 1:
            raise InputError(
                f"{name} holds values outside [0, 1] or NaN; scores must be probabilities",
                fix="apply the task's link function (sigmoid / softmax) before scoring",
            )
    return out


def _summary(
    name: str, y: np.ndarray, runs: list[np.ndarray], fold: np.ndarray | None, r: Resamples
) -> tuple[dict, np.ndarray, float]:
    """Summary dict for one metric, plus its seed-mean bootstrap values and point value."""
    metric = METRICS.get(name)
    point = float(np.mean([metric(y, p) for p in runs]))
    boot = np.mean([bootstrap_metric(name, y, p, r) for p in runs], axis=0)
    units = []
    for p in runs:
        if fold is None:
            units.append(metric(y, p))
        else:
            units.extend(metric(y[fold == k], p[fold == k]) for k in np.unique(fold))
    units_arr = np.asarray(units, dtype=np.float64)
    units_arr = units_arr[~np.isnan(units_arr)]
    low, high = percentile_ci(boot)
    undefined = undefined_fraction(boot)
    summary = {
        "value": _clean(point),
        "mean": _clean(units_arr.mean()) if units_arr.size else None,
        "sd": _clean(units_arr.std(ddof=1)) if units_arr.size > 1 else None,
        "ci_low": _clean(low),
        "ci_high": _clean(high),
        "n_units": int(units_arr.size),
        "undefined_fraction": undefined,
        "unstable": undefined > UNSTABLE_FRACTION,
    }
    return summary, boot, point


def _normalised_area(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised areas of sorted curves ``v`` (..., rates) over rates ``x`` (NaN: undefined)."""
    clean = v[..., np.flatnonzero(x == 0)[0]] if np.any(x == 0) else v[..., 0]
    width = x[-1] - x[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.trapezoid(v, x, axis=-1) / (width * clean)
    bad = ~np.isfinite(clean) | (clean == 0) | np.isnan(v).any(axis=-1) | (width <= 0)
    return np.where(bad, np.nan, auc)


def robustness_curve(
    rates: Sequence[float],
    values: Sequence[float],
    metric: str,
    boot: np.ndarray | None = None,
) -> dict:
    """A degradation curve and its normalised area.

    ``auc_normalised`` = trapezoidal area under (rate, value) divided by the area of a flat curve
    at the clean value (rate 0, else the first rate): 1.0 means no degradation at any rate.
    With ``boot`` (resamples x rates, columns in the order of ``rates``: the metric on the shared
    resamples), the area is computed on every resample and its percentile CI added.
    """
    x = np.asarray(rates, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(x)
    x, v = x[order], v[order]
    auc = float(_normalised_area(x, v))
    curve = {
        "metric": metric,
        "rates": [float(a) for a in x],
        "values": [_clean(a) for a in v],
        "auc_normalised": _clean(auc),
    }
    if boot is not None:
        low, high = percentile_ci(_normalised_area(x, np.asarray(boot, np.float64)[:, order]))
        curve["ci_low"], curve["ci_high"] = _clean(low), _clean(high)
    return curve


def score_predictions(
    kind: str,
    y_true: np.ndarray,
    y_prob: Sequence[np.ndarray],
    subject_ids: np.ndarray,
    *,
    fold: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    groups: pd.DataFrame | None = None,
    threshold: float | np.ndarray = 0.5,
    reference_probs: Mapping[str, Sequence[np.ndarray]] | None = None,
    fusion_reference: str | None = None,
    unimodal_references: Sequence[str] | None = None,
    scenario_probs: Mapping[str, Mapping[float, Sequence[np.ndarray]]] | None = None,
    main_metric: str | None = None,
    resamples: Resamples | None = None,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    alpha: float = DEFAULT_ALPHA,
) -> dict:
    """Score one (task, cohort): metrics with CIs, per-label, deltas, robustness, fairness.

    Args:
        kind: ``binary`` (y_true (n,), probs (n,)), ``multilabel`` ((n, L), (n, L)) or
            ``multiclass`` (y_true (n,) ints, probs (n, K)).
        y_prob: one pooled out-of-fold probability array per seed, rows aligned with y_true.
        subject_ids: patient id per row (bootstrap unit; never written out).
        fold: test fold per row, for mean/sd over folds x seeds (else units are seeds).
        groups: fairness group labels per row (:func:`harness.evaluate.fairness.fairness_groups`).
        threshold: decision threshold(s) chosen on validation: scalar, per row (n,), or for
            multilabel per row and label (n, L) or per label (L,).
        reference_probs: reference submissions' pooled predictions (same layout) for paired
            deltas of every metric; ``fusion_reference`` (default: the first) gives the
            multilabel per-label fusion gain. ``unimodal_references`` (names in
            ``reference_probs``, e.g. the EHR-only and the CXR-only model) give a second
            per-label gain, ``fusion_gain_unimodal``, over the best of them on each label.
        scenario_probs: {scenario: {rate: pooled predictions per seed}} for robustness curves
            of the main metric.
        main_metric: the task YAML's ``main_metric`` (what checkpoint selection used); the
            headline metric is its scorer name (:func:`main_metric_for`), else the kind's default.
    """
    metric_names = metrics_for(kind)
    y = np.asarray(y_true)
    shape = tuple(np.shape(np.asarray(y_prob[0]))) if len(y_prob) else ()
    runs = _check_runs("y_prob", y_prob, shape)
    expected_rows = y.shape[0]
    if shape[:1] != (expected_rows,):
        raise InputError(
            f"y_prob rows ({shape[:1]}) do not match y_true rows ({expected_rows})",
            fix="align pooled predictions with the stays' labels",
        )
    if resamples is None:
        resamples = bootstrap_indices(subject_ids, n_resamples, seed)
    elif resamples.counts.shape[1] != expected_rows:
        raise InputError("resamples were drawn for a different number of stays")
    fold_arr = None if fold is None else np.asarray(fold)
    main = main_metric_for(kind, main_metric)
    block: dict = {
        "kind": kind,
        "main_metric": main,
        "n_stays": int(expected_rows),
        "n_subjects": int(resamples.n_subjects),
        "n_units": len(runs) * (1 if fold_arr is None else int(np.unique(fold_arr).size)),
        "bootstrap": {**resamples.describe(), "p_value_method": P_VALUE_METHOD},
        "metrics": {},
    }
    boots: dict[str, tuple[np.ndarray, float]] = {}
    for name in metric_names:
        summary, boot, point = _summary(name, y, runs, fold_arr, resamples)
        block["metrics"][name] = summary
        boots[name] = (boot, point)
    # The headline metric on every shared resample (seed mean, 6 decimals, null where undefined):
    # the leaderboard tests entries against the leader on these, paired; never published.
    block["main_resamples"] = [
        None if not np.isfinite(v) else round(float(v), RESAMPLE_DECIMALS) for v in boots[main][0]
    ]

    if kind == "multilabel":
        labels = (
            list(label_names)
            if label_names is not None
            else [f"label_{j}" for j in range(y.shape[1])]
        )
        if len(labels) != y.shape[1]:
            raise InputError(f"{len(labels)} label names for {y.shape[1]} label columns")
        block["per_label"] = {
            label: {
                m: _summary(m, y[:, j], [p[:, j] for p in runs], fold_arr, resamples)[0]
                for m in PER_LABEL_METRICS
            }
            for j, label in enumerate(labels)
        }

    if reference_probs:
        block["paired_deltas"] = {}
        for ref_name, ref_runs in reference_probs.items():
            ref = _check_runs(f"reference_probs[{ref_name!r}]", ref_runs, shape)
            deltas = {}
            for name in metric_names:
                _, ref_boot, ref_point = _summary(name, y, ref, fold_arr, resamples)
                boot, point = boots[name]
                deltas[name] = paired_delta(point, ref_point, boot, ref_boot).to_dict()
            block["paired_deltas"][ref_name] = deltas
        if kind == "multilabel":
            ref_name = fusion_reference or next(iter(reference_probs))
            ref = _check_runs("fusion reference", reference_probs[ref_name], shape)
            block["fusion_gain"] = {
                "reference": ref_name,
                "metric": "auroc",
                "alpha": alpha,
                "labels": fusion_gain(labels, y, runs, ref, resamples, alpha=alpha),
            }
            _state_family(block["fusion_gain"])
            uni = [n for n in (unimodal_references or ()) if n in reference_probs]
            if len(uni) >= 2:
                named = {n: _check_runs(n, reference_probs[n], shape) for n in uni}
                block["fusion_gain_unimodal"] = {
                    "references": uni,
                    "metric": "auroc",
                    "alpha": alpha,
                    "labels": fusion_gain(labels, y, runs, named, resamples, alpha=alpha),
                }
                _state_family(block["fusion_gain_unimodal"])

    if scenario_probs:
        metric = METRICS.get(main)
        block["robustness"] = {}
        for scenario, by_rate in scenario_probs.items():
            rates = sorted(by_rate)
            values, boot = [], []
            for r in rates:
                if by_rate[r] is y_prob:  # the clean predictions (rate 0): already resampled
                    point_boot, point = boots[main]
                else:
                    rate_runs = _check_runs(scenario, by_rate[r], shape)
                    point = float(np.mean([metric(y, p) for p in rate_runs]))
                    point_boot = np.mean(
                        [bootstrap_metric(main, y, p, resamples) for p in rate_runs], axis=0
                    )
                values.append(point)
                boot.append(point_boot)
            block["robustness"][scenario] = robustness_curve(
                rates, values, main, boot=np.stack(boot, axis=1)
            )

    if groups is not None:
        mean_prob = np.mean(runs, axis=0)
        if kind == "binary":
            block["fairness"] = binary_fairness(
                y, mean_prob, groups, threshold=threshold, min_group_size=min_group_size
            )
        elif kind == "multiclass":
            block["fairness"] = multiclass_fairness(
                y, mean_prob, groups, min_group_size=min_group_size
            )
        else:
            single = groups[[c for c in groups.columns if "*" not in c]]
            thr = np.asarray(threshold, dtype=np.float64)
            block["fairness"] = {"labels": {}}
            for j, label in enumerate(labels):
                thr_j = _label_threshold(thr, j, len(labels))
                block["fairness"]["labels"][label] = binary_fairness(
                    y[:, j], mean_prob[:, j], single, threshold=thr_j,
                    min_group_size=min_group_size,
                )  # fmt: skip
    return block


def _state_family(gain: dict) -> None:
    """Name the Benjamini-Hochberg family of a fusion-gain block and its size (defined p)."""
    gain["bh_family"] = BH_FAMILY
    gain["bh_m"] = sum(1 for row in gain["labels"].values() if row.get("p_value") is not None)


def _label_threshold(thr: np.ndarray, j: int, n_labels: int) -> float | np.ndarray:
    """Threshold(s) of label ``j``: scalar, per label (L,), per row and label (n, L), per row."""
    if thr.ndim == 0:
        return thr
    if thr.ndim == 2:
        return thr[:, j]
    if thr.shape == (n_labels,):
        return thr[j]
    return thr


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(**extra) -> dict:
    """Harness version and commit, package versions, hardware and creation time (+ ``extra``)."""
    import os

    versions = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    record = {
        "harness_version": __version__,
        "git_commit": _git_commit(),
        "package_versions": versions,
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.system(),
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def build_result(
    name: str,
    version: str,
    dataset: str,
    *,
    cohorts: Mapping[str, Mapping],
    tasks: Mapping[str, Mapping[str, dict]],
    provenance_record: dict | None = None,
    status: str = "ok",
    error: str | None = None,
    category: str | None = None,
) -> dict:
    """Assemble and validate a result document (``cohorts``: {cohort: {fingerprint, ...}}).

    A failed result's ``error`` is sanitized (:func:`~harness.leaderboard.publish.sanitize_message`)
    and carries a ``category`` (one of ``ERROR_CATEGORIES``; default ``error``).
    """
    if status == "failed":
        error = sanitize_message(error or "")
        category = error_category(category or "error")
    result = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "dataset": dataset,
        "status": status,
        "error": error,
        "cohorts": {k: dict(v) for k, v in cohorts.items()},
        "tasks": {t: dict(c) for t, c in tasks.items()},
        "provenance": provenance_record or provenance(),
    }
    if category is not None:
        result["category"] = error_category(category)
    validate(result, RESULT_SCHEMA)
    return result


def failed_result(
    name: str, version: str, dataset: str, error: str, *, category: str = "error", **prov
) -> dict:
    """A result that records a failed evaluation (listed apart on the leaderboard).

    ``error`` is sanitized here (no digit runs over 4, no absolute paths, no control characters,
    at most 300 characters); ``category`` is one of ``ERROR_CATEGORIES`` (unknown words: error).
    """
    return build_result(
        name, version, dataset, cohorts={}, tasks={}, provenance_record=provenance(**prov),
        status="failed", error=error, category=category,
    )  # fmt: skip


def write_result(result: dict, path: str | Path, *, key: bytes | None = None) -> Path:
    """Validate, sign and write atomically: an invalid result never replaces a valid one.

    The written file carries ``signature``: HMAC-SHA256 of its canonical JSON with the cache's
    key (:mod:`harness.leaderboard.signing`; ``key`` overrides it). NaN or infinity is refused
    (JSON is written with ``allow_nan=False``); a failed result's message is sanitized again.
    """
    path = Path(path)
    try:
        doc = json.loads(json.dumps(result, default=str, allow_nan=False))
    except ValueError as exc:
        raise InputError(
            f"result holds a non-finite number ({exc})",
            path=path,
            fix="summaries record undefined values as null, never NaN or infinity",
        ) from None
    doc.pop(SIGNATURE_FIELD, None)
    if doc.get("status") == "failed":
        doc["error"] = sanitize_message(doc.get("error") or "")
        doc["category"] = error_category(doc.get("category"))
    validate(doc, RESULT_SCHEMA, path=path)
    doc[SIGNATURE_FIELD] = sign(doc, key if key is not None else signing_key())
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    log.info("wrote %s", path)
    return path
