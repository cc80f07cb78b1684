"""The distinctive mechanism of utde, daft, mmtm, aug and inforeg, on tiny generated data."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from harness.models.data import FeatureSet, prepare_split
from harness.models.protocol import StepContext, TaskInfo
from harness.models.submission import load_submission
from harness.models.train import build_spec, make_loss, seeded

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1] / "submissions"


def build(name: str, kind: str = "multilabel", n: int = 120, **params):
    """Model ``name`` built as the harness builds it (dropout off), its spec, the fold-1 split,
    a training batch of 32 stays and its labels."""
    sub = load_submission(ROOT / name)
    fs = FeatureSet.synthetic(n, seed=1, kind=kind)
    split = prepare_split(fs, 1)
    spec = build_spec(sub, fs.task, split.train, fs, seed=0)
    with seeded(0):
        model = sub.load_class()(spec, **{**sub.params, "dropout": 0.0, **params})
    rows = slice(0, 32)
    batch, y = split.train.batch(rows), split.train.y[rows]
    assert 0 < float(batch.has_cxr.sum()) < len(batch), "the batch mixes stays with/without CXR"
    return model, spec, split, batch, y


def loss_for(split):
    """The harness loss for the synthetic multilabel task."""
    return make_loss(TaskInfo("t", "multilabel", ("a", "b", "c")), split.train.y, "none", "cpu")


# ------------------------------------------------------------------------------------ utde


def test_utde_query_grid_and_image_time_share_the_hour_clock():
    model, spec, _, batch, _ = build("utde")
    scores = model.cxr_scores
    eye = torch.eye(scores.d_time).repeat(scores.heads, 1)
    with torch.no_grad():
        for lin in (scores.query, scores.key):
            lin.weight.copy_(eye)
            lin.bias.zero_()
    hours = torch.tensor([5.5, 30.5, 47.2])
    b = batch.replace(
        has_cxr=torch.ones(3),
        cxr_time_hours=hours,
        cxr=batch.cxr[:3],
        stay_id=batch.stay_id[:3],
    )
    weight = model.cxr_attention(b)  # (3, heads, 48)
    assert weight.shape == (3, scores.heads, spec.seq_len)
    # Identity projections: the score is sum cos(w (t - s)), maximal at the image's own hour bin.
    assert weight.argmax(dim=-1).tolist() == [[5, 5], [30, 30], [47, 47]]


def test_utde_output_depends_on_cxr_time_only_when_there_is_an_image():
    model, _, _, batch, _ = build("utde")
    model.eval()
    has = batch.has_cxr > 0
    with torch.no_grad():
        early = model(batch.replace(cxr_time_hours=torch.full((len(batch),), 2.5)))
        late = model(batch.replace(cxr_time_hours=torch.full((len(batch),), 40.5)))
        other_image = model(batch.replace(cxr=torch.randn_like(batch.cxr)))
    assert torch.isfinite(early).all()
    assert (early[has] - late[has]).abs().amax() > 1e-4
    torch.testing.assert_close(early[~has], late[~has])
    with torch.no_grad():
        again = model(batch)
    torch.testing.assert_close(other_image[~has], again[~has])


# ------------------------------------------------------------------------------------ daft


def test_daft_scales_and_shifts_every_hour_of_the_ehr_map():
    model, spec, _, batch, _ = build("daft")
    model.eval()
    with torch.no_grad():
        a = model.features(batch)
        b = model.features(batch.replace(cxr=batch.cxr + torch.randn_like(batch.cxr)))
    pre, mod = a["pre"], a["modulated"]
    assert mod.shape == (len(batch), spec.seq_len, pre.shape[-1])  # time dimension kept
    expected = a["alpha"][:, None, :] * pre + a["beta"][:, None, :]
    torch.testing.assert_close(mod, expected)
    assert mod.std(dim=1).mean() > 1e-3  # a temporal map, not one vector repeated over hours
    has = batch.has_cxr > 0
    assert (a["alpha"][has] - b["alpha"][has]).abs().amax() > 1e-4
    assert (a["pooled"][has] - b["pooled"][has]).abs().amax() > 1e-5
    # No image: identity transform, and the (zero-filled) CXR field is never read.
    torch.testing.assert_close(a["alpha"][~has], torch.ones_like(a["alpha"][~has]))
    torch.testing.assert_close(a["beta"][~has], torch.zeros_like(a["beta"][~has]))
    torch.testing.assert_close(a["pooled"][~has], b["pooled"][~has])


# ------------------------------------------------------------------------------------ mmtm


def test_mmtm_excites_the_temporal_ehr_map_and_the_cxr_feature_both_ways():
    model, spec, _, batch, _ = build("mmtm")
    model.eval()
    has = batch.has_cxr > 0
    with torch.no_grad():
        a = model.features(batch)
        other_cxr = model.features(batch.replace(cxr=batch.cxr + torch.randn_like(batch.cxr)))
        other_ehr = model.features(batch.replace(ehr=batch.ehr + torch.randn_like(batch.ehr)))
    before, after, gate = a["ehr_before_0"], a["ehr_after_0"], a["gate_ehr_0"]
    assert after.shape == (len(batch), spec.seq_len, before.shape[-1])
    torch.testing.assert_close(after, before * gate[:, None, :])
    assert float(gate.min()) >= 0.0 and float(gate.max()) <= 2.0
    assert after.std(dim=1).mean() > 1e-3
    # CXR -> EHR: the EHR gates change with the image; EHR -> CXR: the CXR feature with the EHR.
    assert (a["gate_ehr_0"][has] - other_cxr["gate_ehr_0"][has]).abs().amax() > 1e-4
    assert (a["cxr_after_0"][has] - other_ehr["cxr_after_0"][has]).abs().amax() > 1e-5
    for i in range(2):
        torch.testing.assert_close(a[f"gate_ehr_{i}"][~has], torch.ones_like(gate[~has]))
    torch.testing.assert_close(a["joint"][~has], other_cxr["joint"][~has])


# ------------------------------------------------------------------------------------ aug


def _aug_epoch(model, split, ctx, loss_fn, steps: int = 3):
    for i, (batch, y) in enumerate(split.train.iter_batches(32)):
        if i == steps:
            break
        model.train()
        assert model.training_step(batch, y, loss_fn, ctx) is None  # it steps the optimiser
        ctx.step += 1


def test_aug_added_classifier_receives_gradient_updates():
    # balance 100: the EHR / CXR score ratio is far below it, so the EHR is the weak modality.
    model, _, split, _, _ = build("aug", check_every=1, balance=100.0, max_classifiers=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # built before any boosting
    ctx = StepContext(model=model, optimizer=optimizer)
    loss_fn = loss_for(split)
    _aug_epoch(model, split, ctx, loss_fn)
    assert model.n_active("ehr") == 1
    model.on_epoch_end(ctx)  # epoch 0 is a check epoch
    assert model.n_active("ehr") == 2 and model.n_active("cxr") == 1
    assert model.state_dict()["n_active_ehr"].item() == 2  # restored with the checkpoint
    added = copy.deepcopy(model.banks["ehr"][1].state_dict())
    not_added = copy.deepcopy(model.banks["ehr"][2].state_dict())
    cxr_extra = copy.deepcopy(model.banks["cxr"][1].state_dict())
    ctx.epoch = 1
    _aug_epoch(model, split, ctx, loss_fn)
    changed = [not torch.equal(v, model.banks["ehr"][1].state_dict()[k]) for k, v in added.items()]
    assert all(changed), "the classifier added during training must be trained"
    for k, v in not_added.items():
        assert torch.equal(v, model.banks["ehr"][2].state_dict()[k])
    for k, v in cxr_extra.items():
        assert torch.equal(v, model.banks["cxr"][1].state_dict()[k])


def test_aug_fuses_with_alpha_and_uses_ehr_alone_without_an_image():
    model, _, _, batch, _ = build("aug", alpha=0.3)
    model.eval()
    has = batch.has_cxr > 0
    with torch.no_grad():
        fused = model(batch)
        ehr = model.modality_logits(batch, "ehr")
        cxr = model.modality_logits(batch, "cxr")
    torch.testing.assert_close(fused[has], 0.3 * ehr[has] + 0.7 * cxr[has])
    torch.testing.assert_close(fused[~has], ehr[~has])


# ------------------------------------------------------------------------------------ inforeg


def test_inforeg_shrinks_the_dominant_modality_step_in_the_window():
    model, _, split, batch, y = build("inforeg", strength=5.0)
    twin = copy.deepcopy(model)
    model.window_open, twin.window_open = True, False
    loss_fn = loss_for(split)
    start = copy.deepcopy(model.state_dict())
    for m in (model, twin):
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        assert m.training_step(batch, y, loss_fn, StepContext(model=m, optimizer=opt)) is None
    dominant, beta = model.last_regulation
    assert dominant in ("ehr", "cxr") and 0 < beta <= model.max_beta
    assert twin.last_regulation == (None, 0.0)
    other = "cxr" if dominant == "ehr" else "ehr"
    names = {id(p): n for n, p in model.named_parameters()}
    twin_params = dict(twin.named_parameters())
    for p in model.encoder_parameters(dominant):
        n = names[id(p)]
        full = twin_params[n].detach() - start[n]
        torch.testing.assert_close(p.detach() - start[n], (1 - beta) * full)
        assert full.abs().amax() > 0
    for p in model.encoder_parameters(other) + list(model.head.parameters()):
        n = names[id(p)]
        torch.testing.assert_close(p.detach(), twin_params[n].detach())


def test_inforeg_prime_window_closes_when_the_fisher_trace_settles():
    model, _, split, batch, y = build("inforeg", history=2, window_threshold=0.05)
    model.fisher_history = [10.0, 5.0, 3.0]
    model.update_window()
    assert model.window_open  # |3 - 10| / 10 = 0.7: still acquiring fast
    model.fisher_history += [3.05, 3.1]
    model.update_window()
    assert not model.window_open  # |3.1 - 3.0| / 3.0 < 0.05
    model.fisher_history += [100.0]
    model.update_window()
    assert not model.window_open  # the window never reopens
    loss_fn = loss_for(split)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.training_step(batch, y, loss_fn, StepContext(model=model, optimizer=opt))
    assert model.last_regulation == (None, 0.0)


@pytest.mark.parametrize("name", ["utde", "daft", "mmtm", "aug", "inforeg"])
def test_zoo_models_handle_every_task_kind(name):
    for kind, width in (("binary", None), ("multiclass", 3)):
        model, _, _, batch, _ = build(name, kind=kind, n=80)
        model.eval()
        with torch.no_grad():
            out = model(batch)
        assert torch.isfinite(out).all()
        assert out.shape[0] == len(batch) and (width is None or out.shape[-1] == width)
