"""Accuracy metrics: one signature, one direction map, one registry, vectorised bootstrap forms.

Every metric is ``f(y_true, y_score, *, sample_weight=None) -> float`` on probabilities and is
registered in :data:`METRICS` with its task kind and direction (:data:`HIGHER_IS_BETTER`).
Undefined cases (a single class present, zero total weight) return NaN instead of raising.

Most metrics also register a *batched* form ``g(y_true, y_score, weights) -> ndarray`` that
evaluates the metric for many weight vectors at once (``weights`` is resamples x samples of
bootstrap multiplicities). Integer weights are equivalent to repeating rows, so a batched value
equals the plain metric on the resampled rows; ``tests/test_bootstrap.py`` checks that to 1e-9.

Definitions worth stating:

- ``ece``: expected calibration error of the positive-class probability with 10 equal-width bins
  on [0, 1] (edges ``b / 10``, so p = 0.3 falls in [0.3, 0.4)); bin ``b`` holds
  ``edge[b] <= p < edge[b+1]`` and the last bin also holds ``p == 1``.
  ECE = sum over bins of (bin weight / total weight) * |mean label - mean probability|.
- multilabel ``*_macro`` averages the per-label values over labels where the metric is defined
  (both classes present); ``*_weighted`` weights labels by their (weighted) positive count, as
  scikit-learn does; ``*_micro`` scores the flattened label matrix.
- multiclass metrics take ``y_score`` of shape (n, K) probabilities; the predicted class is the
  argmax; ``f1_macro`` averages over all K classes (absent classes score 0); ``kappa_linear`` is
  Cohen's kappa with linear disagreement weights |i - j| over the K ordered classes;
  ``kappa_unweighted`` counts every disagreement alike (what the CareBench profile reports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.registry import Registry

MetricFn = Callable[..., float]
BatchedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

TASK_KINDS = ("binary", "multilabel", "multiclass")
ECE_BINS = 10


@dataclass(frozen=True)
class Metric:
    """A registered metric: the plain function, its batched form (if any), its direction and
    the range its values must lie in (publication rejects a value outside it)."""

    name: str
    kind: str
    fn: MetricFn
    higher_is_better: bool
    batched: BatchedFn | None = None
    bounds: tuple[float, float] = (0.0, 1.0)

    def __call__(self, y_true, y_score, *, sample_weight=None) -> float:
        return self.fn(y_true, y_score, sample_weight=sample_weight)


METRICS: Registry[Metric] = Registry("metric")
HIGHER_IS_BETTER: dict[str, bool] = {}
#: The value of a metric for a model that ranks or labels at random, where it does not depend on
#: the labels (AUROC 0.5 for any prevalence, Cohen's kappa 0); the robustness curves' area above
#: chance uses it. Metrics whose chance level depends on the data (AUPRC: the prevalence; F1,
#: accuracy) are absent, and their area above chance is left null.
CHANCE_LEVEL: dict[str, float] = {
    "auroc": 0.5, "auroc_macro": 0.5, "auroc_micro": 0.5, "auroc_weighted": 0.5,
    "auroc_ovr_macro": 0.5, "kappa_linear": 0.0, "kappa_unweighted": 0.0,
}  # fmt: skip
#: The headline metric per task kind: ranks, paired deltas and robustness curves use it.
MAIN_METRIC = {"binary": "auroc", "multilabel": "auroc_macro", "multiclass": "kappa_linear"}
#: Task-YAML spellings of a main metric (the one model selection uses) -> the scorer's name, per
#: kind. Training's ``selection_score`` understands the same spellings.
_TASK_METRIC_NAMES = {
    "binary": {"auroc": "auroc", "auc": "auroc", "roc_auc": "auroc", "auprc": "auprc",
               "prauc": "auprc", "average_precision": "auprc"},
    "multilabel": {"auroc": "auroc_macro", "auc": "auroc_macro", "roc_auc": "auroc_macro",
                   "auprc": "auprc_macro", "prauc": "auprc_macro",
                   "average_precision": "auprc_macro"},
    "multiclass": {"f1": "f1_macro", "macro_f1": "f1_macro", "f1_macro": "f1_macro",
                   "kappa": "kappa_linear", "cohen_kappa": "kappa_linear",
                   "kappa_linear": "kappa_linear", "accuracy": "accuracy", "acc": "accuracy",
                   "auroc": "auroc_ovr_macro", "auroc_ovr_macro": "auroc_ovr_macro"},
}  # fmt: skip


def main_metric_for(kind: str, task_metric: str | None = None) -> str:
    """The registered metric a task's YAML ``main_metric`` names (its headline and selection).

    Checkpoint selection (`harness.models.train.selection_score`) and the headline (ranks,
    paired deltas, robustness curves) read this one registry, with its direction
    (:data:`HIGHER_IS_BETTER`). ``macro_auroc`` and ``auroc_macro`` are the same name; an absent
    name gives :data:`MAIN_METRIC` for the kind; a name the registry does not know raises
    :class:`~harness.errors.UnknownNameError` listing the valid ones (:func:`metric_names`).
    """
    text = (task_metric or "").strip()
    if not text:
        return MAIN_METRIC[kind]
    names = _TASK_METRIC_NAMES.get(kind, {})
    key = text.lower().replace("-", "_")
    if key in metrics_for(kind):
        return key
    found = names.get(key.replace("macro_", "").replace("_macro", ""))
    if found is None:
        from harness.errors import UnknownNameError

        raise UnknownNameError(
            f"{task_metric!r} is not a {kind} metric; valid names: {', '.join(metric_names(kind))}"
        )
    return found


def metric_names(kind: str) -> list[str]:
    """Every spelling a task's ``main_metric`` may use for ``kind`` (registered names + aliases)."""
    return sorted(set(metrics_for(kind)) | set(_TASK_METRIC_NAMES.get(kind, {})))


#: Per-label metrics reported for multilabel tasks (each is a binary metric applied per column).
PER_LABEL_METRICS = ("auroc", "auprc")


def _register(
    name: str,
    kind: str,
    higher_is_better: bool,
    batched: BatchedFn | None = None,
    *,
    bounds: tuple[float, float],
):
    """Register a metric; ``bounds`` (required) is the range every value must lie in."""

    def decorator(fn: MetricFn) -> MetricFn:
        METRICS.add(name, Metric(name, kind, fn, higher_is_better, batched, bounds))
        HIGHER_IS_BETTER[name] = higher_is_better
        return fn

    return decorator


def metrics_for(kind: str) -> list[str]:
    """Names of the registered metrics of one task kind, sorted by name."""
    if kind not in TASK_KINDS:
        from harness.errors import UsageError

        raise UsageError(f"unknown task kind {kind!r}; valid kinds: {', '.join(TASK_KINDS)}")
    return [name for name, m in METRICS.items() if m.kind == kind]


def _weights(n: int, sample_weight) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n},)")
    return w


# --------------------------------------------------------------------------------------------
# Batched binary kernels (weights: resamples x samples)


def batched_auroc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for every row of ``weights``: the Mann-Whitney U statistic with multiplicities.

    Scores are sorted once; for each positive the weight of negatives scored strictly below it
    (plus half the tied ones) comes from a cumulative sum over the sorted negatives.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    w = np.asarray(weights)
    if w.ndim == 1:
        w = w[None, :]
    neg_order = np.argsort(s[~y], kind="stable")
    neg_idx = np.flatnonzero(~y)[neg_order]
    neg_scores = s[neg_idx]
    pos_idx = np.flatnonzero(y)
    pos_scores = s[pos_idx]
    left = np.searchsorted(neg_scores, pos_scores, side="left")
    right = np.searchsorted(neg_scores, pos_scores, side="right")
    has_ties = bool(np.any(left != right))
    acc_dtype = np.int32 if np.issubdtype(w.dtype, np.integer) else np.float64
    out = np.empty(w.shape[0], dtype=np.float64)
    chunk = max(1, int(4_000_000 // max(1, w.shape[1])))
    for start in range(0, w.shape[0], chunk):
        wc = w[start : start + chunk]
        w_neg = wc[:, neg_idx]
        cum = np.zeros((wc.shape[0], neg_idx.size + 1), dtype=acc_dtype)
        np.cumsum(w_neg, axis=1, out=cum[:, 1:], dtype=acc_dtype)
        w_pos = wc[:, pos_idx].astype(np.float64)
        below = cum[:, left].astype(np.float64)
        if has_ties:
            below += 0.5 * (cum[:, right] - cum[:, left])
        numer = np.einsum("ij,ij->i", w_pos, below)
        total_pos = w_pos.sum(axis=1)
        total_neg = cum[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = numer / (total_pos * total_neg)
        auc[(total_pos == 0) | (total_neg == 0)] = np.nan
        out[start : start + chunk] = auc
    return out


def batched_auprc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's step definition) for every row of ``weights``.

    AP = sum over positives i of w_i * precision(score >= s_i) / total positive weight, where the
    true- and false-positive weights above each threshold come from cumulative sums over the
    positives and negatives sorted by decreasing score (ties share one threshold).
    """
    y = np.asarray(y_true).astype(bool)
    t = -np.asarray(y_score, dtype=np.float64)  # ascending t = decreasing score
    w = np.asarray(weights)
    if w.ndim == 1:
        w = w[None, :]
    pos_idx = np.flatnonzero(y)
    pos_idx = pos_idx[np.argsort(t[pos_idx], kind="stable")]
    neg_idx = np.flatnonzero(~y)
    neg_idx = neg_idx[np.argsort(t[neg_idx], kind="stable")]
    t_pos = t[pos_idx]
    tp_at = np.searchsorted(t_pos, t_pos, side="right")
    fp_at = np.searchsorted(t[neg_idx], t_pos, side="right")
    acc_dtype = np.int32 if np.issubdtype(w.dtype, np.integer) else np.float64
    out = np.empty(w.shape[0], dtype=np.float64)
    chunk = max(1, int(4_000_000 // max(1, w.shape[1])))
    for start in range(0, w.shape[0], chunk):
        wc = w[start : start + chunk]
        w_pos = wc[:, pos_idx]
        cum_pos = np.zeros((wc.shape[0], pos_idx.size + 1), dtype=acc_dtype)
        np.cumsum(w_pos, axis=1, out=cum_pos[:, 1:], dtype=acc_dtype)
        cum_neg = np.zeros((wc.shape[0], neg_idx.size + 1), dtype=acc_dtype)
        np.cumsum(wc[:, neg_idx], axis=1, out=cum_neg[:, 1:], dtype=acc_dtype)
        tp = cum_pos[:, tp_at].astype(np.float64)
        fp = cum_neg[:, fp_at].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
            total_pos = cum_pos[:, -1].astype(np.float64)
            ap = np.einsum("ij,ij->i", w_pos.astype(np.float64), precision) / total_pos
        total_neg = cum_neg[:, -1].astype(np.float64)
        ap[(total_pos == 0) | (total_neg == 0)] = np.nan
        out[start : start + chunk] = ap
    return out


def _batched_brier(y_true, y_score, weights):
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    err = (np.asarray(y_score, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)) ** 2
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w @ err) / total, np.nan)


#: Inner ECE bin edges 0.1, ..., 0.9 as exact quotients ``b / 10`` (the doubles nearest to the
#: decimals; ``linspace`` gives 0.30000000000000004 and would put p = 0.3 in the bin below).
_ECE_INNER_EDGES = np.arange(1, ECE_BINS) / ECE_BINS


def _ece_bins(p: np.ndarray) -> np.ndarray:
    """Bin index ``b`` with ``b / 10 <= p < (b + 1) / 10``; p = 1 (and above) in the last bin."""
    return np.digitize(np.asarray(p, dtype=np.float64), _ECE_INNER_EDGES, right=False)


def _batched_ece(y_true, y_score, weights):
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    p = np.asarray(y_score, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    onehot = np.eye(ECE_BINS)[_ece_bins(p)]  # n x bins
    bin_w = w @ onehot
    bin_y = w @ (onehot * y[:, None])
    bin_p = w @ (onehot * p[:, None])
    total = bin_w.sum(axis=1)
    gap = np.abs(bin_y - bin_p)  # = bin_w * |mean y - mean p|
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap.sum(axis=1) / total, np.nan)


# --------------------------------------------------------------------------------------------
# Binary


def _both_classes(y: np.ndarray, w: np.ndarray) -> bool:
    return bool(w[y == 1].sum() > 0 and w[y != 1].sum() > 0)


@_register("auroc", "binary", True, batched_auroc, bounds=(0.0, 1.0))
def auroc(y_true, y_score, *, sample_weight=None) -> float:
    """Area under the ROC curve (scikit-learn), NaN when one class is absent."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    w = _weights(y.size, sample_weight)
    if not _both_classes(y, w):
        return float("nan")
    return float(roc_auc_score(y, y_score, sample_weight=sample_weight))


@_register("auprc", "binary", True, batched_auprc, bounds=(0.0, 1.0))
def auprc(y_true, y_score, *, sample_weight=None) -> float:
    """Average precision (scikit-learn), NaN when one class is absent."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true).astype(int)
    w = _weights(y.size, sample_weight)
    if not _both_classes(y, w):
        return float("nan")
    return float(average_precision_score(y, y_score, sample_weight=sample_weight))


@_register("brier", "binary", False, _batched_brier, bounds=(0.0, 1.0))
def brier(y_true, y_score, *, sample_weight=None) -> float:
    """Brier score: weighted mean squared error of the probability."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y_true).astype(int)
    w = _weights(y.size, sample_weight)
    if w.sum() <= 0:
        return float("nan")
    return float(brier_score_loss(y, y_score, sample_weight=sample_weight, pos_label=1))


@_register("ece", "binary", False, _batched_ece, bounds=(0.0, 1.0))
def ece(y_true, y_score, *, sample_weight=None) -> float:
    """Expected calibration error, 10 equal-width bins (see module docstring)."""
    y = np.asarray(y_true, dtype=np.float64)
    return float(_batched_ece(y, y_score, _weights(y.size, sample_weight)[None, :])[0])


# --------------------------------------------------------------------------------------------
# Multilabel


def _per_label(batched: BatchedFn, y_true, y_score, weights) -> np.ndarray:
    """resamples x labels array of a binary batched metric applied to each label column."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    w = np.atleast_2d(weights)
    return np.stack([batched(y[:, j], s[:, j], w) for j in range(y.shape[1])], axis=1)


def per_label(name: str, y_true, y_score, *, sample_weight=None) -> np.ndarray:
    """A binary metric applied to each column of a multilabel problem (NaN where undefined)."""
    metric = METRICS.get(name)
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    return np.array(
        [metric(y[:, j], s[:, j], sample_weight=sample_weight) for j in range(y.shape[1])]
    )


def _macro(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        defined = ~np.isnan(values)
        count = defined.sum(axis=-1)
        total = np.where(defined, values, 0.0).sum(axis=-1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _weighted(values: np.ndarray, y_true, weights) -> np.ndarray:
    support = np.atleast_2d(weights).astype(np.float64) @ np.asarray(y_true, dtype=np.float64)
    defined = ~np.isnan(values)
    support = np.where(defined, support, 0.0)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            total > 0, (np.where(defined, values, 0.0) * support).sum(-1) / total, np.nan
        )


def _micro(batched: BatchedFn, y_true, y_score, weights) -> np.ndarray:
    y = np.asarray(y_true)
    w = np.atleast_2d(weights)
    n_labels = y.shape[1]
    return batched(y.ravel(), np.asarray(y_score).ravel(), np.repeat(w, n_labels, axis=1))


def _make_multilabel(base: BatchedFn, average: str) -> tuple[MetricFn, BatchedFn]:
    def batched(y_true, y_score, weights):
        if average == "micro":
            return _micro(base, y_true, y_score, weights)
        values = _per_label(base, y_true, y_score, weights)
        if average == "macro":
            return _macro(values)
        return _weighted(values, y_true, weights)

    def fn(y_true, y_score, *, sample_weight=None) -> float:
        y = np.asarray(y_true)
        return float(batched(y, y_score, _weights(y.shape[0], sample_weight)[None, :])[0])

    return fn, batched


for _base_name, _base in (("auroc", batched_auroc), ("auprc", batched_auprc)):
    for _avg in ("macro", "micro", "weighted"):
        _fn, _b = _make_multilabel(_base, _avg)
        _fn.__doc__ = f"Multilabel {_base_name.upper()}, {_avg} average (see module docstring)."
        _register(f"{_base_name}_{_avg}", "multilabel", True, _b, bounds=(0.0, 1.0))(_fn)


# --------------------------------------------------------------------------------------------
# Multiclass


def _confusion(y_true, y_score, weights) -> np.ndarray:
    """resamples x K x K weighted confusion matrices (rows: true class, columns: predicted)."""
    s = np.asarray(y_score)
    k = s.shape[1]
    y = np.asarray(y_true).astype(np.int64)
    pred = s.argmax(axis=1)
    cell = np.eye(k * k)[y * k + pred]  # n x K^2
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return (w @ cell).reshape(-1, k, k)


def _batched_accuracy(y_true, y_score, weights):
    cm = _confusion(y_true, y_score, weights)
    total = cm.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.trace(cm, axis1=1, axis2=2) / total, np.nan)


def _batched_f1_macro(y_true, y_score, weights):
    cm = _confusion(y_true, y_score, weights)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=2) + cm.sum(axis=1)  # (tp + fn) + (tp + fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    total = cm.sum(axis=(1, 2))
    return np.where(total > 0, f1.mean(axis=1), np.nan)


def _batched_kappa_linear(y_true, y_score, weights):
    cm = _confusion(y_true, y_score, weights)
    k = cm.shape[1]
    dis = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]).astype(np.float64)
    total = cm.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    expected = np.einsum("bi,bj->bij", cm.sum(axis=2), cm.sum(axis=1)) / safe[:, None, None]
    observed_dis = (cm * dis).sum(axis=(1, 2))
    expected_dis = (expected * dis).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = 1.0 - observed_dis / expected_dis
    return np.where((total > 0) & (expected_dis > 0), kappa, np.nan)


def _batched_kappa_unweighted(y_true, y_score, weights):
    cm = _confusion(y_true, y_score, weights)
    total = cm.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    observed = np.trace(cm, axis1=1, axis2=2) / safe
    expected = np.einsum("bi,bi->b", cm.sum(axis=2), cm.sum(axis=1)) / safe**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (observed - expected) / (1.0 - expected)
    return np.where((total > 0) & (expected < 1.0), kappa, np.nan)


def _batched_auroc_ovr(y_true, y_score, weights):
    s = np.asarray(y_score, dtype=np.float64)
    onehot = np.eye(s.shape[1], dtype=np.int8)[np.asarray(y_true).astype(np.int64)]
    return _macro(_per_label(batched_auroc, onehot, s, weights))


def _multiclass_fn(batched: BatchedFn) -> MetricFn:
    def fn(y_true, y_score, *, sample_weight=None) -> float:
        y = np.asarray(y_true)
        return float(batched(y, y_score, _weights(y.shape[0], sample_weight)[None, :])[0])

    return fn


_KAPPA = (-1.0, 1.0)
for _name, _b, _doc, _bounds in (
    ("accuracy", _batched_accuracy, "Accuracy of the argmax class.", (0.0, 1.0)),
    ("f1_macro", _batched_f1_macro, "F1 averaged over all K classes (absent: 0).", (0.0, 1.0)),
    ("kappa_linear", _batched_kappa_linear, "Cohen's kappa, linear weights.", _KAPPA),
    ("kappa_unweighted", _batched_kappa_unweighted, "Cohen's kappa (CareBench's).", _KAPPA),
    ("auroc_ovr_macro", _batched_auroc_ovr, "One-vs-rest AUROC, macro over classes.", (0.0, 1.0)),
):
    _f = _multiclass_fn(_b)
    _f.__doc__ = _doc
    _register(_name, "multiclass", True, _b, bounds=_bounds)(_f)


def task_metrics(kind: str, y_true, y_score, *, sample_weight=None) -> dict[str, float]:
    """Every registered metric of ``kind`` on one set of predictions (NaN where undefined)."""
    return {
        name: METRICS.get(name)(y_true, y_score, sample_weight=sample_weight)
        for name in metrics_for(kind)
    }


def batched_metric(name: str, y_true, y_score, weights: np.ndarray) -> np.ndarray:
    """Values of metric ``name`` for each row of ``weights`` (fast kernel, else a plain loop)."""
    metric = METRICS.get(name)
    w = np.atleast_2d(weights)
    if metric.batched is not None:
        return np.asarray(metric.batched(y_true, y_score, w), dtype=np.float64)
    return np.array([metric(y_true, y_score, sample_weight=row) for row in w], dtype=np.float64)
