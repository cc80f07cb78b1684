"""Group fairness tables with fairlearn's MetricFrame, with suppression and bootstrap CIs on gaps.

Rules this module fixes (and states in every report):

- Attributes: age group (18-40, 40-60, 60-80, 80+; left-closed), gender, race group, insurance,
  admission type, CXR availability, and every pairwise intersection (``a*b``, values ``x|y``).
  Missing attribute values form the group ``Unknown``.
- Threshold: per stay, chosen on the VALIDATION split by maximising Youden's J (TPR - FPR); the
  caller passes it (one value, or one per stay when folds have their own thresholds). The test
  split is never used to choose it.
- Groups with fewer than ``min_group_size`` stays (default 20) are suppressed: reported as
  ``{"group": ..., "suppressed": true}`` with no numbers, and left out of across-group statistics.
- Binary tasks get the full table; multilabel tasks are scored per label (each label is a binary
  problem with its own validation threshold); multiclass tasks get threshold-free group metrics
  (accuracy, linear-weighted kappa, one-vs-rest AUROC) on the argmax prediction.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.evaluate.bootstrap import Resamples, percentile_ci
from harness.evaluate.metrics import METRICS, batched_auroc

log = logging.getLogger(__name__)

FAIRNESS_ATTRIBUTES = (
    "age_group",
    "gender",
    "race_group",
    "insurance",
    "admission_type",
    "has_cxr",
)
AGE_EDGES = (18, 40, 60, 80, np.inf)
AGE_LABELS = ("18-40", "40-60", "60-80", "80+")
DEFAULT_MIN_GROUP_SIZE = 20
DEFAULT_CI_RESAMPLES = 200
THRESHOLD_RULE = "youden_j_on_validation"
UNKNOWN = "Unknown"


def fairness_groups(
    stays: pd.DataFrame,
    attributes: Sequence[str] = FAIRNESS_ATTRIBUTES,
    *,
    intersections: bool = True,
) -> pd.DataFrame:
    """Group labels per stay: one string column per attribute, plus pairwise intersections.

    ``age_group`` is derived from ``age`` and ``has_cxr`` from ``dicom_id`` when absent.
    """
    out = pd.DataFrame(index=stays.index)
    for attr in attributes:
        if attr in stays.columns:
            col = stays[attr]
        elif attr == "age_group" and "age" in stays.columns:
            col = pd.cut(stays["age"], AGE_EDGES, right=False, labels=AGE_LABELS)
        elif attr == "has_cxr" and "dicom_id" in stays.columns:
            col = stays["dicom_id"].notna()
        else:
            raise InputError(
                f"fairness attribute {attr!r} is missing from the stays table",
                fix=f"add a {attr!r} column (available: {', '.join(map(str, stays.columns))})",
            )
        if col.dtype == bool:
            col = col.map({True: "yes", False: "no"})
        out[attr] = col.astype("object").where(col.notna(), UNKNOWN).astype(str)
    if intersections:
        for a, b in itertools.combinations(list(attributes), 2):
            out[f"{a}*{b}"] = out[a] + "|" + out[b]
    return out


def select_threshold(y_val: np.ndarray, p_val: np.ndarray) -> float:
    """The validation threshold maximising Youden's J = TPR - FPR (highest such threshold).

    Predictions ``p >= threshold`` are positive. With a single class on validation, 0.5.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_val).astype(int)
    if y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_curve(y, p_val)
    j = tpr - fpr
    finite = np.isfinite(thr)
    best = int(np.argmax(np.where(finite, j, -np.inf)))
    return float(thr[best])


# --------------------------------------------------------------------------------------------
# Per-group metric functions: f(y_true, y_prob, *, decision) with a declared direction
# (True: higher is better, False: lower is better, None: no better direction).


def _rate(num: np.ndarray, den: np.ndarray) -> float:
    den_sum = float(np.sum(den))
    return float(np.sum(num) / den_sum) if den_sum > 0 else float("nan")


def _tpr(y, p, decision):
    y = np.asarray(y).astype(bool)
    return _rate(decision[y], np.ones(y.sum()))


def _fpr(y, p, decision):
    y = np.asarray(y).astype(bool)
    return _rate(decision[~y], np.ones((~y).sum()))


def _ppv(y, p, decision):
    d = np.asarray(decision).astype(bool)
    return _rate(np.asarray(y)[d], np.ones(d.sum()))


def _kernel(name: str) -> Callable:
    """The registered metric through its batched kernel (same values, no per-call validation)."""
    batched = METRICS.get(name).batched

    def fn(y, p, decision=None) -> float:
        return float(batched(np.asarray(y), np.asarray(p), np.ones((1, len(y)), np.int32))[0])

    return fn


def _lift(y, p, decision):
    prevalence = float(np.mean(y))
    return _kernel("auprc")(y, p) / prevalence if prevalence > 0 else float("nan")


BINARY_GROUP_METRICS: dict[str, tuple[Callable, bool | None]] = {
    "n": (lambda y, p, decision: float(len(y)), None),
    "prevalence": (lambda y, p, decision: float(np.mean(y)), None),
    "auroc": (_kernel("auroc"), True),
    "auprc": (_kernel("auprc"), True),
    "auprc_lift": (_lift, True),
    "tpr": (_tpr, True),
    "fpr": (_fpr, False),
    "ppv": (_ppv, True),
    "selection_rate": (lambda y, p, decision: float(np.mean(decision)), None),
    "ece": (_kernel("ece"), False),
}

MULTICLASS_GROUP_METRICS: dict[str, tuple[Callable, bool | None]] = {
    "n": (lambda y, p, decision: float(len(y)), None),
    "accuracy": (_kernel("accuracy"), True),
    "kappa_linear": (_kernel("kappa_linear"), True),
    "auroc_ovr_macro": (_kernel("auroc_ovr_macro"), True),
}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _metric_frame(metrics, y, p, decision, groups):
    """One MetricFrame; the decision travels as a column of y_pred (cheaper than sample_params)."""
    from fairlearn.metrics import MetricFrame

    p2 = np.asarray(p, dtype=np.float64)
    one_column = p2.ndim == 1

    def unpack(fn):
        def metric(y_true, y_pred):
            probs = y_pred[:, 0] if one_column else y_pred[:, :-1]
            return fn(y_true, probs, decision=y_pred[:, -1])

        return metric

    stacked = np.column_stack([p2, np.asarray(decision, dtype=np.float64)])
    return MetricFrame(
        metrics={name: unpack(fn) for name, (fn, _) in metrics.items()},
        y_true=np.asarray(y),
        y_pred=stacked,
        sensitive_features=pd.Series(np.asarray(groups), name="group"),
    )


def group_table(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: pd.Series | np.ndarray,
    *,
    decision: np.ndarray | None = None,
    metrics: dict[str, tuple[Callable, bool | None]] | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> dict:
    """Per-group metrics and across-group summary for one attribute (suppressed groups hidden)."""
    metrics = metrics or BINARY_GROUP_METRICS
    y = np.asarray(y_true)
    p = np.asarray(y_prob)
    g = np.asarray(groups).astype(str)
    decision = np.zeros(y.shape[0], dtype=int) if decision is None else np.asarray(decision)
    sizes = pd.Series(g).value_counts()
    kept = sorted(sizes.index[sizes >= min_group_size])
    suppressed = sorted(sizes.index[sizes < min_group_size])
    rows: list[dict] = []
    summary: dict = {}
    out = {"groups": rows, "n_suppressed_groups": len(suppressed), "summary": summary}
    mask = np.isin(g, kept)
    if kept:
        frame = _metric_frame(metrics, y[mask], p[mask], decision[mask], g[mask])
        by_group = frame.by_group
        for group in kept:
            row = {"group": group, "suppressed": False}
            row.update({name: _num(by_group.loc[group, name]) for name in metrics})
            rows.append(row)
    rows.extend({"group": group, "suppressed": True} for group in suppressed)
    rows.sort(key=lambda r: r["group"])
    if len(kept) < 2:
        return out
    table = frame.by_group.astype(float)
    for name, (_, higher) in metrics.items():
        if name == "n":
            continue
        col = table[name].dropna()
        if col.empty:
            continue
        low, high = float(col.min()), float(col.max())
        entry = {
            "group_min": low,
            "group_max": high,
            "difference": high - low,
            "ratio": low / high if high > 0 else None,
        }
        if higher is not None:
            entry["worst_group"] = str(col.idxmin() if higher else col.idxmax())
        summary[name] = entry
    if metrics is BINARY_GROUP_METRICS:
        # fairlearn's definitions (max of TPR and FPR differences; selection-rate difference),
        # read off the same MetricFrame; tests check them against fairlearn's functions.
        gaps = {k: summary.get(k, {}).get("difference", np.nan) for k in ("tpr", "fpr")}
        out["equalized_odds_difference"] = _num(np.fmax(gaps["tpr"], gaps["fpr"]))
        out["demographic_parity_difference"] = _num(summary["selection_rate"]["difference"])
    return out


def _batched_gaps(y, p, decision, groups, kept, counts) -> dict[str, np.ndarray]:
    """Across-group gaps for every resample row of ``counts`` (kept groups only)."""
    y = np.asarray(y).astype(np.float64)
    d = np.asarray(decision).astype(np.float64)
    onehot = (np.asarray(groups)[:, None] == np.asarray(kept)[None, :]).astype(np.float64)
    parts = np.concatenate(
        [onehot * (y * d)[:, None], onehot * y[:, None], onehot * ((1 - y) * d)[:, None],
         onehot * (1 - y)[:, None], onehot * d[:, None], onehot],
        axis=1,
    )  # fmt: skip
    sums = (counts.astype(np.float64) @ parts).reshape(counts.shape[0], 6, len(kept))
    tp, pos, fp, neg, sel, n = (sums[:, i] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(pos > 0, tp / pos, np.nan)
        fpr = np.where(neg > 0, fp / neg, np.nan)
        sr = np.where(n > 0, sel / n, np.nan)
    auroc = np.stack(
        [batched_auroc(y[onehot[:, k] > 0], p[onehot[:, k] > 0], counts[:, onehot[:, k] > 0])
         for k in range(len(kept))],
        axis=1,
    )  # fmt: skip

    def spread(v):
        with warnings.catch_warnings():  # all-NaN rows (a group absent from a resample)
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmax(v, axis=1) - np.nanmin(v, axis=1)

    tpr_gap, fpr_gap = spread(tpr), spread(fpr)
    return {
        "auroc_difference": spread(auroc),
        "tpr_difference": tpr_gap,
        "equalized_odds_difference": np.fmax(tpr_gap, fpr_gap),
        "demographic_parity_difference": spread(sr),
    }


def binary_fairness(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: pd.DataFrame,
    *,
    threshold: float | np.ndarray,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    resamples: Resamples | None = None,
    n_ci_resamples: int = DEFAULT_CI_RESAMPLES,
) -> dict:
    """Fairness tables for one binary target over every column of ``groups``.

    ``threshold`` is a scalar or one value per stay (chosen on validation, see module docs).
    With ``resamples``, the first ``n_ci_resamples`` shared resamples give percentile CIs on the
    gaps (AUROC and TPR differences, equalized-odds and demographic-parity differences).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_prob, dtype=np.float64)
    if len(groups) != y.shape[0]:
        raise InputError(
            f"groups table has {len(groups)} rows but there are {y.shape[0]} predictions",
            fix="pass one groups row per scored stay, in the same order",
        )
    decision = (p >= np.asarray(threshold, dtype=np.float64)).astype(int)
    counts = (
        resamples.head(min(n_ci_resamples, resamples.n_resamples)).counts if resamples else None
    )
    attributes = {}
    for attr in groups.columns:
        g = groups[attr].to_numpy().astype(str)
        table = group_table(y, p, g, decision=decision, min_group_size=min_group_size)
        kept = [r["group"] for r in table["groups"] if not r["suppressed"]]
        if counts is not None and len(kept) >= 2:
            gaps = _batched_gaps(y, p, decision, g, kept, counts)
            table["gap_ci"] = {}
            for name, values in gaps.items():
                low, high = percentile_ci(values)
                table["gap_ci"][name] = {"ci_low": _num(low), "ci_high": _num(high)}
        attributes[attr] = table
    return {
        "threshold_rule": THRESHOLD_RULE,
        "min_group_size": min_group_size,
        "n_ci_resamples": 0 if counts is None else int(counts.shape[0]),
        "attributes": attributes,
    }


def multiclass_fairness(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: pd.DataFrame,
    *,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
) -> dict:
    """Threshold-free group tables for a multiclass target (argmax decisions)."""
    attributes = {
        attr: group_table(
            y_true,
            y_prob,
            groups[attr].to_numpy(),
            metrics=MULTICLASS_GROUP_METRICS,
            min_group_size=min_group_size,
        )
        for attr in groups.columns
    }
    return {
        "threshold_rule": "argmax",
        "min_group_size": min_group_size,
        "n_ci_resamples": 0,
        "attributes": attributes,
    }
