"""Training data, the training loop and planted-signal recovery (harness.models)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from sklearn.utils.class_weight import compute_class_weight

from harness.models.data import FeatureSet, fit_stats, make_tensors, prepare_split, split_indices
from harness.models.protocol import Batch, TaskInfo
from harness.models.submission import load_submission
from harness.models.train import (
    drop_cxr,
    estimator_proba,
    make_loss,
    selection_score,
    train_model,
)

torch.set_num_threads(1)
SUBMISSIONS = "submissions"


@pytest.fixture(scope="module")
def small() -> FeatureSet:
    return FeatureSet.synthetic(80, seed=3, kind="multilabel")


@pytest.fixture(scope="module")
def planted() -> FeatureSet:
    return FeatureSet.synthetic(1500, seed=0, kind="multilabel")


def test_split_follows_the_fold_rule(small):
    train, val, test = split_indices(small.fold, 5)
    assert set(small.fold[test]) == {5} and set(small.fold[val]) == {1}
    assert set(small.fold[train]) == {2, 3, 4}
    assert len(train) + len(val) + len(test) == len(small)


def test_normalisation_and_imputation_match_a_pandas_reference(small):
    split = prepare_split(small, 2)
    train_idx, _, test_idx = split_indices(small.fold, 2)
    for j, _var in enumerate(small.variables):
        raw = pd.Series(
            np.where(
                small.ehr_observed[train_idx, :, j], small.ehr_values[train_idx, :, j], np.nan
            ).ravel()
        ).dropna()
        median = raw.median()
        iqr = raw.quantile(0.75) - raw.quantile(0.25)
        for row, stay in enumerate(test_idx[:10]):
            series = pd.Series(
                np.where(small.ehr_observed[stay, :, j], small.ehr_values[stay, :, j], np.nan)
            )
            expected = ((series - median) / iqr).ffill().fillna(0.0).to_numpy()
            got = split.test.ehr[row, :, j].numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(
                split.test.ehr_mask[row, :, j].numpy(), small.ehr_observed[stay, :, j]
            )


def test_statistics_come_from_training_stays_only(small):
    train_idx, val_idx, test_idx = split_indices(small.fold, 1)
    before = fit_stats(small, train_idx)
    values = small.ehr_values.copy()
    values[np.concatenate([val_idx, test_idx])] *= 100.0
    demo = small.demographics.copy()
    demo.loc[test_idx, "gender"] = "X"
    after = fit_stats(small.replace(ehr_values=values, demographics=demo), train_idx)
    np.testing.assert_array_equal(before.ehr_median, after.ehr_median)
    np.testing.assert_array_equal(before.ehr_scale, after.ehr_scale)
    assert before.demo_names == after.demo_names  # the unseen test category adds no column


def test_zero_iqr_falls_back_to_std_then_one():
    fs = FeatureSet.synthetic(40, seed=1, kind="binary", n_variables=3)
    values = fs.ehr_values.copy()
    observed = np.ones_like(fs.ehr_observed)
    values[:, :, 0] = 5.0  # constant: IQR 0 and std 0 -> scale 1
    values[:, :, 1] = 1.0
    values[:, 0, 1] = 50.0  # IQR 0 but std > 0 -> scale std
    fs = fs.replace(ehr_values=values, ehr_observed=observed)
    idx = np.arange(len(fs))
    stats = fit_stats(fs, idx)
    assert stats.ehr_scale[0] == 1.0
    assert stats.ehr_scale[1] == pytest.approx(np.std(values[:, :, 1]), rel=1e-5)


def test_missing_cxr_is_only_a_mask(small):
    split = prepare_split(small, 1)
    t = split.test
    missing = t.has_cxr == 0
    assert missing.any()
    assert torch.all(t.cxr[missing] == 0) and torch.all(t.cxr_time_hours[missing] == 0)
    # A scenario hides every image of the test fold: same stats, tensors recomputed.
    degraded = small.replace(has_cxr=np.zeros(len(small), dtype=bool))
    d = make_tensors(degraded, t.index, split.stats)
    assert torch.all(d.cxr == 0) and torch.all(d.has_cxr == 0)
    torch.testing.assert_close(d.ehr, t.ehr)


def test_batches_carry_no_labels_and_cover_every_stay(small):
    split = prepare_split(small, 1)
    seen = []
    for batch, y in split.train.iter_batches(7, shuffle=True, generator=torch.Generator()):
        assert isinstance(batch, Batch) and not hasattr(batch, "y")
        assert len(batch) == len(y)
        seen.append(batch.stay_id)
    assert sorted(torch.cat(seen).tolist()) == sorted(split.train.stay_id.tolist())


def test_demographics_encoded_with_training_fit(small):
    split = prepare_split(small, 1)
    names = split.stats.demo_names
    age = names.index("num__age")
    assert abs(float(split.train.demographics[:, age].mean())) < 1e-5
    gender_cols = [i for i, n in enumerate(names) if n.startswith("cat__gender")]
    assert torch.all(split.test.demographics[:, gender_cols].sum(dim=1) == 1)


def test_selection_score_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, 3)).astype(float)
    p = rng.random((50, 3))
    task = TaskInfo("t", "multilabel", ("a", "b", "c"), None, "macro_auroc")
    assert selection_score(task, y, p) == pytest.approx(roc_auc_score(y, p, average="macro"))
    binary = TaskInfo("t", "binary", ("a",), None, "auprc")
    assert selection_score(binary, y[:, 0], p[:, 0]) == pytest.approx(
        average_precision_score(y[:, 0], p[:, 0])
    )
    # no main_metric: the kind's default headline (one vocabulary with the scorer)
    unnamed = TaskInfo("t", "binary", ("a",), None, None)
    assert selection_score(unnamed, y[:, 0], p[:, 0]) == pytest.approx(
        roc_auc_score(y[:, 0], p[:, 0])
    )
    yc = rng.integers(0, 4, size=50)
    pc = rng.random((50, 4))
    multiclass = TaskInfo("t", "multiclass", ("c",), 4, "accuracy")
    assert selection_score(multiclass, yc, pc) == pytest.approx(
        accuracy_score(yc, pc.argmax(axis=1))
    )


def test_balanced_class_weights_match_sklearn():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    task = TaskInfo("t", "multiclass", ("c",), 3)
    loss = make_loss(task, y, "balanced", "cpu")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    np.testing.assert_allclose(loss.weight.numpy(), expected, rtol=1e-6)
    yb = torch.tensor([0.0, 0.0, 0.0, 1.0])
    bce = make_loss(TaskInfo("t", "binary", ("a",)), yb, "balanced", "cpu")
    assert float(bce.pos_weight) == pytest.approx(3.0)


def test_cxr_dropout_hides_only_present_images(small):
    split = prepare_split(small, 1)
    batch = split.train.all()
    dropped = drop_cxr(batch, 0.5, torch.Generator().manual_seed(0))
    had = batch.has_cxr > 0
    lost = had & (dropped.has_cxr == 0)
    assert 0 < int(lost.sum()) < int(had.sum())
    assert torch.all(dropped.cxr[lost] == 0)
    assert torch.all(dropped.has_cxr[~had] == 0)


def test_estimator_proba_shapes():
    task = TaskInfo("t", "multiclass", ("c",), 4)

    class Est:
        classes_ = np.array([0, 2, 3])

    p = estimator_proba(np.array([[0.2, 0.3, 0.5]]), task, Est(), "model.py")
    np.testing.assert_allclose(p, [[0.2, 0.0, 0.3, 0.5]])
    multilabel = TaskInfo("t", "multilabel", ("a", "b"))
    p = estimator_proba([np.array([[0.9, 0.1]]), np.array([[0.4, 0.6]])], multilabel, None, "m")
    np.testing.assert_allclose(p, [[0.1, 0.6]])


@pytest.mark.parametrize("kind", ["binary", "multilabel", "multiclass"])
def test_same_seed_gives_identical_predictions(kind):
    fs = FeatureSet.synthetic(120, seed=2, kind=kind)
    runs = [
        train_model(f"{SUBMISSIONS}/late_fusion", fs, None, 1, s, max_epochs=2) for s in (7, 7, 8)
    ]
    a, b, c = (r.predict_proba(r.split.test) for r in runs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    if kind == "multiclass":
        np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)
    assert a.min() >= 0 and a.max() <= 1


def test_link_is_applied_by_the_harness(small):
    fs = FeatureSet.synthetic(80, seed=4, kind="binary")
    tm = train_model(f"{SUBMISSIONS}/ehr_lstm", fs, None, 1, 0, max_epochs=1)
    batch = tm.split.test.all()
    with torch.no_grad():
        logits = tm.model(batch).reshape(-1)
    np.testing.assert_allclose(tm.predict_proba(batch), torch.sigmoid(logits).numpy(), rtol=1e-6)


def test_checkpoint_is_the_best_validation_epoch():
    fs = FeatureSet.synthetic(300, seed=5, kind="binary")
    tm = train_model(f"{SUBMISSIONS}/cxr_probe", fs, None, 1, 0, max_epochs=6)
    scores = [h["val_score"] for h in tm.history]
    assert tm.best_epoch == int(np.argmax(scores))
    val = tm.predict_proba(tm.split.val)
    assert selection_score(fs.task, tm.split.val.y.numpy(), val) == pytest.approx(max(scores))


def test_early_stopping_respects_patience():
    fs = FeatureSet.synthetic(120, seed=6, kind="binary")
    sub = load_submission(f"{SUBMISSIONS}/cxr_probe")
    tm = train_model(sub, fs, None, 1, 0, max_epochs=40)
    assert len(tm.history) <= 40
    if len(tm.history) < 40:
        assert len(tm.history) - 1 - tm.best_epoch == sub.train.patience


HOOKED = """
import torch
from torch import nn


class Hooked(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.head = nn.Linear(spec.ehr_summary_dim, spec.n_outputs)
        self.extra = torch.zeros(1, requires_grad=True)
        self.calls = {"fit_setup": 0, "step": 0, "after_backward": 0, "epoch_end": 0}

    def fit_setup(self, train):
        self.calls["fit_setup"] += 1
        self.n_train = len(train)

    def extra_parameters(self):
        return [self.extra]

    def forward(self, batch):
        return self.head(batch.ehr_summary)[:, 0] + self.extra

    def training_step(self, batch, y, loss_fn, ctx):
        self.calls["step"] += 1
        return loss_fn(self(batch), y)

    def on_after_backward(self, ctx):
        self.calls["after_backward"] += 1
        assert self.extra.grad is not None

    def on_epoch_end(self, ctx):
        self.calls["epoch_end"] += 1
"""


def test_optional_hooks_are_called(tmp_path):
    folder = tmp_path / "hooked"
    folder.mkdir()
    (folder / "model.py").write_text(HOOKED)
    (folder / "submission.yaml").write_text(
        textwrap.dedent(
            """
            name: hooked
            version: 1
            kind: torch
            entry: model:Hooked
            inputs: [ehr_summary]
            train: {batch_size: 16, max_epochs: 2, patience: 5}
            """
        )
    )
    fs = FeatureSet.synthetic(80, seed=1, kind="binary")
    tm = train_model(folder, fs, None, 1, 0)
    calls = tm.model.calls
    n_batches = -(-len(tm.split.train) // 16)
    assert calls == {
        "fit_setup": 1,
        "step": 2 * n_batches,
        "after_backward": 2 * n_batches,
        "epoch_end": 2,
    }
    assert tm.model.n_train == len(tm.split.train)
    assert float(tm.model.extra.detach()) != 0.0  # the extra parameter was optimised


def _auroc(tm, j):
    t = tm.split.test
    return roc_auc_score(t.y.numpy()[:, j], tm.predict_proba(t)[:, j])


@pytest.mark.slow
def test_planted_signal_is_recovered(planted):
    labels = list(planted.task.label_columns)
    ehr, cxr, both = (labels.index(c) for c in ("label_ehr", "label_cxr", "label_both"))
    runs = {
        name: train_model(f"{SUBMISSIONS}/{name}", planted, None, 1, 0, max_epochs=8)
        for name in ("ehr_lstm", "cxr_probe", "late_fusion")
    }
    auc = {name: [_auroc(tm, j) for j in range(3)] for name, tm in runs.items()}
    assert auc["ehr_lstm"][ehr] > 0.75 and auc["ehr_lstm"][cxr] < 0.62
    assert auc["cxr_probe"][cxr] > 0.7 and auc["cxr_probe"][ehr] < 0.62
    fused = auc["late_fusion"][both]
    assert fused > max(auc["ehr_lstm"][both], auc["cxr_probe"][both]) + 0.03


def test_end_to_end_track_trains_the_backbone():
    from harness.models.pixels import attach_pixels, synthetic_images

    fs = FeatureSet.synthetic(60, seed=0, kind="binary")
    fs = attach_pixels(fs, synthetic_images(fs, size=32), "test_tiny")
    sub = load_submission(f"{SUBMISSIONS}/late_fusion").with_pixels("test_tiny")
    assert "cxr_pixels" in sub.inputs and "cxr" not in sub.inputs
    tm = train_model(sub, fs, None, 1, 0, max_epochs=1)
    assert tm.spec.end_to_end and tm.spec.cxr_dim == 16
    from harness.encode.registry import get_encoder

    fresh = get_encoder("test_tiny").module.state_dict()
    trained = tm.model.cxr.backbone.net.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)  # fine-tuned
    p = tm.predict_proba(tm.split.test)
    assert p.shape == (len(tm.split.test),) and np.isfinite(p).all()
