"""Every registered metric against scikit-learn (or a plain pandas computation) on seeded data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from harness.cohort.spec import list_tasks
from harness.errors import UnknownNameError
from harness.metrics.registry import (
    HIGHER_IS_BETTER,
    MAIN_METRIC,
    METRICS,
    metrics_for,
    per_label,
    task_metrics,
)

N = 400
K = 7
L = 5


def _ece_pandas(y, p, w):
    w = np.ones(len(y)) if w is None else w
    df = pd.DataFrame({"y": y, "p": p, "w": w})
    # edges b / 10 (the decimals): linspace's 0.30000000000000004 would put p = 0.3 a bin low
    df["bin"] = pd.cut(df["p"], np.arange(11) / 10, right=False, include_lowest=True)
    df.loc[df["p"] == 1.0, "bin"] = df["bin"].cat.categories[-1]
    df["wy"] = df.w * df.y
    df["wp"] = df.w * df.p
    g = df.groupby("bin", observed=True)[["w", "wy", "wp"]].sum()
    g = g[g.w > 0]
    return float(((g.w / g.w.sum()) * (g.wy / g.w - g.wp / g.w).abs()).sum())


def _reference(name: str, y, s, w):
    """Independent reference values: scikit-learn's public functions on the same inputs."""
    pred = (
        s.argmax(axis=1)
        if s.ndim == 2 and name in {"accuracy", "f1_macro", "kappa_linear", "kappa_unweighted"}
        else None
    )
    refs = {
        "auroc": lambda: skm.roc_auc_score(y, s, sample_weight=w),
        "auprc": lambda: skm.average_precision_score(y, s, sample_weight=w),
        "brier": lambda: skm.brier_score_loss(y, s, sample_weight=w),
        "ece": lambda: _ece_pandas(y, s, w),
        "accuracy": lambda: skm.accuracy_score(y, pred, sample_weight=w),
        "f1_macro": lambda: skm.f1_score(
            y, pred, average="macro", labels=range(K), sample_weight=w, zero_division=0
        ),
        "kappa_linear": lambda: skm.cohen_kappa_score(
            y, pred, weights="linear", labels=list(range(K)), sample_weight=w
        ),
        "kappa_unweighted": lambda: skm.cohen_kappa_score(
            y, pred, labels=list(range(K)), sample_weight=w
        ),
        "auroc_ovr_macro": lambda: skm.roc_auc_score(
            y, s, multi_class="ovr", average="macro", sample_weight=w
        ),
    }
    for base, fn in (("auroc", skm.roc_auc_score), ("auprc", skm.average_precision_score)):
        for avg in ("macro", "micro", "weighted"):
            refs[f"{base}_{avg}"] = lambda fn=fn, avg=avg: fn(y, s, average=avg, sample_weight=w)
    return refs[name]()


def make_data(kind: str, seed: int = 0, n: int = N):
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n)
        s = np.clip(np.round(0.3 * y + 0.7 * rng.random(n), 2), 0, 1)  # ties on purpose
    elif kind == "multilabel":
        y = (rng.random((n, L)) < rng.uniform(0.1, 0.5, L)).astype(int)
        s = np.clip(np.round(0.3 * y + 0.7 * rng.random((n, L)), 2), 0, 1)
    else:
        y = rng.integers(0, K, n)
        logits = rng.normal(size=(n, K)) + 1.5 * np.eye(K)[y]
        s = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, s


@pytest.mark.parametrize("name", METRICS.names())
@pytest.mark.parametrize("weighted", [False, True])
def test_metric_matches_reference(name, weighted):
    metric = METRICS.get(name)
    y, s = make_data(metric.kind, seed=len(name))
    w = np.random.default_rng(1).integers(0, 4, y.shape[0]).astype(float) if weighted else None
    expected = _reference(name, y, s, w)
    assert metric(y, s, sample_weight=w) == pytest.approx(expected, abs=1e-12)


def test_every_metric_has_a_direction_and_kind():
    assert set(HIGHER_IS_BETTER) == set(METRICS.names())
    assert HIGHER_IS_BETTER["brier"] is False and HIGHER_IS_BETTER["ece"] is False
    for kind, main in MAIN_METRIC.items():
        assert main in metrics_for(kind)
    assert sorted(sum((metrics_for(k) for k in MAIN_METRIC), [])) == METRICS.names()


def test_ece_hand_computed_and_probability_one_is_counted():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.05, 0.05, 1.0, 0.95])
    # bin 0: two stays, mean y 0.5, mean p 0.05 -> gap 0.45 ; bin 9: y 1, p 0.975 -> gap 0.025
    expected = 0.5 * 0.45 + 0.5 * 0.025
    assert METRICS.get("ece")(y, p) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["auroc", "auprc"])
def test_single_class_is_nan_not_a_crash(name):
    assert np.isnan(METRICS.get(name)(np.zeros(10), np.linspace(0, 1, 10)))
    # zero weight on every positive is also "one class present"
    y = np.array([0, 1, 0, 1])
    assert np.isnan(METRICS.get(name)(y, [0.1, 0.2, 0.3, 0.4], sample_weight=[1, 0, 1, 0]))


def test_macro_skips_undefined_labels():
    y, s = make_data("multilabel")
    y[:, 2] = 0
    values = per_label("auroc", y, s)
    assert np.isnan(values[2])
    assert METRICS.get("auroc_macro")(y, s) == pytest.approx(np.nanmean(values))
    keep = [0, 1, 3, 4]
    assert METRICS.get("auroc_macro")(y, s) == pytest.approx(
        skm.roc_auc_score(y[:, keep], s[:, keep], average="macro")
    )


def test_task_metrics_and_unknown_name():
    y, s = make_data("binary")
    out = task_metrics("binary", y, s)
    assert set(out) == {"auroc", "auprc", "brier", "ece"}
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    with pytest.raises(UnknownNameError, match="Did you mean 'auroc'"):
        METRICS.get("aurocc")


@pytest.mark.parametrize("task_name", list_tasks())
def test_headline_metric_is_the_one_model_selection_uses(task_name):
    """The scorer's headline follows each task YAML's main_metric, the same number that early
    stopping maximises on validation (selection computes it with scikit-learn directly)."""
    from harness.cohort.spec import load_task
    from harness.metrics.registry import main_metric_for
    from harness.models.protocol import TaskInfo
    from harness.models.train import selection_score

    spec = load_task(task_name)
    task = TaskInfo.coerce(spec)
    main = main_metric_for(task.kind, task.main_metric)
    assert main in metrics_for(task.kind)
    y, s = make_data(task.kind, seed=3)
    if task.kind == "multilabel":
        task = TaskInfo(
            task.name, task.kind, tuple(f"l{j}" for j in range(L)), None, task.main_metric
        )
    assert METRICS.get(main)(y, s) == pytest.approx(selection_score(task, y, s), abs=1e-12)


def test_main_metric_names():
    from harness.metrics.registry import main_metric_for

    assert main_metric_for("multiclass", "macro_f1") == "f1_macro"
    assert main_metric_for("multiclass", "kappa") == "kappa_linear"
    assert main_metric_for("multilabel", "macro_auroc") == "auroc_macro"
    assert main_metric_for("multilabel", "auprc_macro") == "auprc_macro"
    assert main_metric_for("binary", "AUPRC") == "auprc"
    for kind, default in MAIN_METRIC.items():  # absent: the kind's default; unknown: an error
        assert main_metric_for(kind, None) == default
        with pytest.raises(KeyError, match="valid names"):
            main_metric_for(kind, "nonsense")
