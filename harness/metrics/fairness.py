"""Group fairness tables (all groups at once; fairlearn's MetricFrame is the tested reference),
with suppression and tests of the gaps.

Rules this module fixes (and states in every report):

- Attributes: age group (18-40, 40-60, 60-80, 80+; left-closed), gender, race group, insurance,
  admission type, CXR availability, and every pairwise intersection (``a*b``, values ``x|y``).
  Missing attribute values form the group ``Unknown``.
- Threshold: per stay, chosen on the VALIDATION split by maximising Youden's J (TPR - FPR); the
  caller passes it (one value, or one per stay when folds have their own thresholds). The test
  split is never used to choose it. The harness chooses it per fold on the seed-mean validation
  predictions, the same kind of prediction (seed mean) the tables then score.
- Groups with fewer than ``min_group_size`` stays (default 20), and for binary targets groups
  with fewer than :data:`MIN_CLASS_COUNT` (10) positives or negatives, are suppressed: reported
  as ``{"group": ..., "suppressed": true}`` with no numbers, and left out of across-group
  statistics. This is the rule publication applies (``harness.leaderboard.publish``), applied
  where the numbers are computed, so publishing has nothing left to remove.
- ``Unknown`` (a missing attribute value, alone or in an intersection) is reported as a group but
  is not compared: the across-group summary (min, max, difference, worst group), the gap tests
  and the group-vs-rest differences use the known groups only. A missing-data bucket is never
  the "worst group".
- Gaps: the max - min difference of a rate across groups is reported with the p-value of an
  exact-null permutation test of equal rates (group labels permuted within the positives for
  TPR, within the negatives for FPR, over all stays for selection rate; equalized odds takes the
  larger of the TPR and FPR gaps under both permutations). The permuted group counts are drawn
  as multivariate hypergeometric variates, which is the permutation distribution, vectorised.
  A percentile bootstrap CI of a max - min gap is biased upward (a maximum over noisy groups) and
  is not computed. Each known group's TPR and FPR also comes with a Wilson CI and its difference
  from the other known groups pooled ("rest") with a Newcombe hybrid-score CI (method 10). Both
  treat stays as independent (several stays of one patient make them slightly optimistic).
- Binary tasks get the full table; multilabel tasks are scored per label (each label is a binary
  problem with its own validation threshold); multiclass tasks get threshold-free group metrics
  (accuracy, linear-weighted kappa, one-vs-rest AUROC) on the argmax prediction.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.metrics.bootstrap import CI_LEVEL, DEFAULT_BOOTSTRAP_SEED
from harness.metrics.registry import METRICS

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
#: Fewest positives and negatives of a binary group with numbers (publication's rule too).
MIN_CLASS_COUNT = 10
#: Permutations of the gap tests (exact multivariate hypergeometric draws: cheap).
DEFAULT_PERMUTATIONS = 10_000
THRESHOLD_RULE = "youden_j_on_validation"
UNKNOWN = "Unknown"
GAP_TEST = "permutation"
GAP_TEST_NAMES = (
    "tpr_difference",
    "fpr_difference",
    "equalized_odds_difference",
    "demographic_parity_difference",
)
VS_REST_CI = "newcombe_hybrid_score"


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
    if batched is None:
        raise ValueError(f"metric {name!r} has no batched kernel")

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


def metric_frame(metrics, y, p, decision, groups):
    """The per-group table through fairlearn's MetricFrame (one call of each metric function per
    group): the reference the vectorised :func:`group_values` is tested against. The decision
    travels as a column of y_pred."""
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


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _counted(name: str, y: np.ndarray, d: np.ndarray, w: np.ndarray) -> np.ndarray | None:
    """Group metrics that are ratios of counts: one matrix product each (None: not one)."""
    n = w.sum(axis=1).astype(np.float64)
    pos = w @ (y == 1).astype(np.float64)
    hits = w @ d
    counts = {
        "n": lambda: n,
        "prevalence": lambda: _ratio(pos, n),
        "tpr": lambda: _ratio(w @ (d * (y == 1)), pos),
        "fpr": lambda: _ratio(w @ (d * (y != 1)), n - pos),
        "ppv": lambda: _ratio(w @ (d * (y == 1)), hits),
        "selection_rate": lambda: _ratio(hits, n),
    }
    return counts[name]() if name in counts else None


def group_values(
    metrics: dict[str, tuple[Callable, bool | None]],
    y: np.ndarray,
    p: np.ndarray,
    decision: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
) -> dict[str, np.ndarray]:
    """Every metric of ``metrics`` for every group at once: ``{name: values[n_groups]}``.

    Group ``j`` is the stays with ``codes == j`` (codes < 0 belong to no group). Each group is a
    row of 0/1 weights over all stays, so the metrics registry's batched kernels (written for
    bootstrap resamples, also weight rows) give all groups' AUROC, AUPRC, ECE, accuracy or kappa
    in one call, and the rates are ratios of weighted counts. Same values as calling the
    per-group functions group by group (:func:`metric_frame`, tested to 1e-12).
    """
    n = len(codes)
    inside = codes >= 0
    w = np.zeros((n_groups, n), dtype=np.int32)
    w[codes[inside], np.flatnonzero(inside)] = 1
    d = np.asarray(decision, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        counted = _counted(name, y, d, w)
        if counted is not None:
            out[name] = counted
        elif name == "auprc_lift":
            auprc = out["auprc"] if "auprc" in out else _batched("auprc", y, p, w)
            out[name] = _ratio(auprc, _ratio(w @ (y == 1).astype(np.float64), w.sum(axis=1)))
        else:
            out[name] = _batched(name, y, p, w)
    return out


def _batched(name: str, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    batched = METRICS.get(name).batched
    if batched is None:
        raise ValueError(f"group metric {name!r} has no batched kernel")
    return np.asarray(batched(y, p, w), dtype=np.float64)


def is_unknown(group: str) -> bool:
    """True for ``Unknown`` and for intersections with an ``Unknown`` part (``F|Unknown``)."""
    return UNKNOWN in str(group).split("|")


def group_table(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: pd.Series | np.ndarray,
    *,
    decision: np.ndarray | None = None,
    metrics: dict[str, tuple[Callable, bool | None]] | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    min_class_count: int = 0,
) -> dict:
    """Per-group metrics and across-group summary for one attribute (suppressed groups hidden).

    Groups under ``min_group_size`` stays, or (binary ``y_true``) with fewer than
    ``min_class_count`` positives or negatives, are suppressed; the summary compares the kept
    groups that are not :func:`is_unknown`.
    """
    metrics = metrics or BINARY_GROUP_METRICS
    y = np.asarray(y_true)
    p = np.asarray(y_prob)
    g = np.asarray(groups).astype(str)
    decision = np.zeros(y.shape[0], dtype=int) if decision is None else np.asarray(decision)
    sizes = pd.Series(g).value_counts()
    large = sizes >= min_group_size
    if min_class_count > 0:
        positives = pd.Series(y == 1).groupby(g).sum().reindex(sizes.index)
        large &= (positives >= min_class_count) & (sizes - positives >= min_class_count)
    kept = sorted(sizes.index[large])
    suppressed = sorted(sizes.index[~large])
    rows: list[dict] = []
    summary: dict = {}
    out = {"groups": rows, "n_suppressed_groups": len(suppressed), "summary": summary}
    codes = pd.Index(kept).get_indexer(pd.Index(g))
    values = group_values(metrics, y, p, decision, codes, len(kept))
    by_group = pd.DataFrame(values, index=pd.Index(kept, dtype=object), dtype=np.float64)
    for group in kept:
        row = {"group": group, "suppressed": False}
        row.update({name: _num(by_group.loc[group, name]) for name in metrics})
        rows.append(row)
    rows.extend({"group": group, "suppressed": True} for group in suppressed)
    rows.sort(key=lambda r: r["group"])
    compared = [group for group in kept if not is_unknown(group)]
    if len(compared) < 2:
        return out
    table = by_group.loc[compared]
    for name, (_, higher) in metrics.items():
        if name == "n":
            continue
        col = table[name].dropna()
        if col.empty:
            continue
        low, high = float(col.min()), float(col.max())
        entry: dict[str, Any] = {
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
        # read off the same table; tests check them against fairlearn's functions.
        gaps = {k: summary.get(k, {}).get("difference", np.nan) for k in ("tpr", "fpr")}
        out["equalized_odds_difference"] = _num(np.fmax(gaps["tpr"], gaps["fpr"]))
        out["demographic_parity_difference"] = _num(summary["selection_rate"]["difference"])
    return out


def wilson_interval(k: float, n: float, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (NaN when ``n`` is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(
    k1: float, n1: float, k2: float, n2: float, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) of ``k1 / n1 - k2 / n2``.

    Built from the two Wilson intervals; unlike a percentile bootstrap of a max - min it has no
    upward bias and keeps close to its level for small groups and rates near 0 or 1.
    """
    if n1 <= 0 or n2 <= 0:
        return float("nan"), float("nan")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, level)
    l2, u2 = wilson_interval(k2, n2, level)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def _spread(rates: np.ndarray) -> np.ndarray:
    return rates.max(axis=-1) - rates.min(axis=-1)


def _permutation_null(
    n: np.ndarray, x: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> tuple[float, np.ndarray] | None:
    """Observed max - min of ``x / n`` and its permutation distribution (None: < 2 groups).

    Permuting the group labels of the stays holding ``n.sum()`` outcomes, ``x.sum()`` of them
    positive decisions, gives each group a multivariate hypergeometric count of them: drawing
    those counts is the permutation test without materialising a single permutation.
    """
    keep = n > 0
    n, x = n[keep].astype(np.int64), x[keep].astype(np.int64)
    if n.size < 2:
        return None
    draws = rng.multivariate_hypergeometric(n, int(x.sum()), size=n_permutations)
    return float(_spread(x / n)), _spread(draws / n)


def _p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + B): never 0, exact level under the permutation null."""
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


def gap_inference(
    y: np.ndarray,
    decision: np.ndarray,
    groups: np.ndarray,
    compared: Sequence[str],
    *,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> tuple[dict, dict]:
    """Permutation tests of the max - min gaps and group-vs-rest differences with CIs.

    Returns (``gap_test``, ``vs_rest``) over the ``compared`` groups: ``gap_test[name]`` holds
    the observed ``difference`` and its permutation ``p_value`` for ``tpr_difference``,
    ``fpr_difference``, ``equalized_odds_difference`` and ``demographic_parity_difference``;
    ``vs_rest[rate]`` lists, per group, the rate with its Wilson CI and the difference from the
    other compared groups pooled with its Newcombe CI, for ``tpr`` and ``fpr``.
    """
    rng = np.random.default_rng(seed)
    codes = pd.Index(list(compared)).get_indexer(pd.Index(np.asarray(groups).astype(str)))
    inside = codes >= 0
    pos = np.asarray(y).astype(int) == 1
    d = np.asarray(decision).astype(np.float64)
    k = len(compared)

    def counts(mask):
        m = mask & inside
        return (
            np.bincount(codes[m], minlength=k).astype(np.int64),
            np.bincount(codes[m], weights=d[m], minlength=k).round().astype(np.int64),
        )

    n_pos, tp = counts(pos)
    n_neg, fp = counts(~pos)
    n_all, sel = counts(np.ones_like(pos))
    nulls = {
        "tpr_difference": _permutation_null(n_pos, tp, n_permutations, rng),
        "fpr_difference": _permutation_null(n_neg, fp, n_permutations, rng),
        "demographic_parity_difference": _permutation_null(n_all, sel, n_permutations, rng),
    }
    if nulls["tpr_difference"] and nulls["fpr_difference"]:
        (t_obs, t_null), (f_obs, f_null) = nulls["tpr_difference"], nulls["fpr_difference"]
        nulls["equalized_odds_difference"] = (max(t_obs, f_obs), np.maximum(t_null, f_null))
    gap_test = {
        name: {"difference": null[0], "p_value": _p_value(*null)}
        for name in GAP_TEST_NAMES
        if (null := nulls.get(name))
    }
    vs_rest: dict[str, list[dict]] = {}
    for rate, n, x in (("tpr", n_pos, tp), ("fpr", n_neg, fp)):
        rows = []
        for j, group in enumerate(compared):
            n_rest, x_rest = n.sum() - n[j], x.sum() - x[j]
            if n[j] == 0 or n_rest == 0:
                continue
            low, high = wilson_interval(x[j], n[j], level)
            d_low, d_high = newcombe_interval(x[j], n[j], x_rest, n_rest, level)
            rows.append(
                {
                    "group": group,
                    "value": float(x[j] / n[j]),
                    "ci_low": low,
                    "ci_high": high,
                    "difference": float(x[j] / n[j] - x_rest / n_rest),
                    "difference_ci_low": d_low,
                    "difference_ci_high": d_high,
                }
            )
        vs_rest[rate] = rows
    return gap_test, vs_rest


def binary_fairness(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    groups: pd.DataFrame,
    *,
    threshold: float | np.ndarray,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    min_class_count: int = MIN_CLASS_COUNT,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> dict:
    """Fairness tables for one binary target over every column of ``groups``.

    ``threshold`` is a scalar or one value per stay (chosen on validation, see module docs).
    Each attribute with two or more compared groups gets ``gap_test`` (permutation p-values of
    the TPR, FPR, equalized-odds and demographic-parity gaps, ``n_permutations`` draws with
    ``seed``) and ``vs_rest`` (each group's TPR and FPR against the other groups, with CIs).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(y_prob, dtype=np.float64)
    if len(groups) != y.shape[0]:
        raise InputError(
            f"groups table has {len(groups)} rows but there are {y.shape[0]} predictions",
            fix="pass one groups row per scored stay, in the same order",
        )
    decision = (p >= np.asarray(threshold, dtype=np.float64)).astype(int)
    attributes = {}
    for attr in groups.columns:
        g = groups[attr].to_numpy().astype(str)
        table = group_table(
            y, p, g, decision=decision, min_group_size=min_group_size,
            min_class_count=min_class_count,
        )  # fmt: skip
        kept = [r["group"] for r in table["groups"] if not r["suppressed"]]
        compared = [group for group in kept if not is_unknown(group)]
        if len(compared) >= 2:
            table["gap_test"], table["vs_rest"] = gap_inference(
                y, decision, g, compared, n_permutations=n_permutations, seed=seed
            )
        attributes[attr] = table
    return {
        "threshold_rule": THRESHOLD_RULE,
        "min_group_size": min_group_size,
        "min_class_count": min_class_count,
        "gap_inference": {
            "test": GAP_TEST,
            "n_permutations": int(n_permutations),
            "seed": int(seed),
            "vs_rest_ci": VS_REST_CI,
            "level": CI_LEVEL,
        },
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
        "attributes": attributes,
    }
