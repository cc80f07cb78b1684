"""The distinctive mechanism of each zoo model: healnet, flexmoe, umse, shaspec, m3care, smil."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from harness.models.data import FeatureSet, prepare_split
from harness.models.submission import load_submission
from harness.models.train import build_spec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    fs = FeatureSet.synthetic(120, seed=5, kind="multilabel")
    return fs, prepare_split(fs, 1)


def build(name: str, data, *, train: bool = False, **params):
    """The submission's model class built as the harness does, with params overridden."""
    fs, sp = data
    sub = load_submission(f"submissions/{name}")
    torch.manual_seed(0)
    model = sub.load_class()(build_spec(sub, fs.task, sp.train, fs, 0), **{**sub.params, **params})
    if hasattr(model, "fit_setup"):
        model.fit_setup(sp.train)
    return model.train(train)


def logits(model, batch) -> torch.Tensor:
    out = model(batch)
    return out["logits"] if isinstance(out, dict) else out


def with_cxr(batch, present: bool):
    has = torch.full_like(batch.has_cxr, 1.0 if present else 0.0)
    cxr = torch.ones_like(batch.cxr) if present else torch.zeros_like(batch.cxr)
    return batch.replace(has_cxr=has, cxr=cxr, cxr_time_hours=has * 12.0)


def test_healnet_skips_cxr_attention_per_stay(split):
    model = build("healnet", split)
    batch = split[1].test.batch(slice(0, 6))
    with torch.no_grad():
        with_img, without = (
            logits(model, with_cxr(batch, True)),
            logits(model, with_cxr(batch, False)),
        )
        # Mixed batch: the stays without an image ignore whatever sits in their CXR slot.
        mixed = batch.replace(has_cxr=torch.tensor([1.0, 0, 1, 0, 1, 0]))
        noisy = mixed.replace(cxr=mixed.cxr + 5 * torch.randn_like(mixed.cxr))
        a, b = logits(model, mixed), logits(model, noisy)
    assert torch.isfinite(with_img).all() and torch.isfinite(without).all()
    assert not torch.allclose(with_img, without, atol=1e-4)
    absent = mixed.has_cxr == 0
    assert torch.allclose(a[absent], b[absent], atol=1e-6)
    assert not torch.allclose(a[~absent], b[~absent], atol=1e-4)


def test_flexmoe_has_ehr_from_observed_mask_and_bank(split):
    model = build("flexmoe", split)
    batch = split[1].test.batch(slice(0, 4))
    no_ehr = batch.replace(ehr_mask=torch.zeros_like(batch.ehr_mask))
    one_obs = torch.zeros_like(batch.ehr_mask)
    one_obs[:, 5, 2] = 1.0
    has_ehr, _ = model.availability(no_ehr)
    assert not has_ehr.any()
    assert model.availability(batch.replace(ehr_mask=one_obs))[0].all()
    with torch.no_grad():
        # Without observed EHR the EHR patches come from the bank: EHR values play no role.
        a = logits(model, no_ehr)
        b = logits(model, no_ehr.replace(ehr=no_ehr.ehr + 3.0))
        with_img, without = (
            logits(model, with_cxr(batch, True)),
            logits(model, with_cxr(batch, False)),
        )
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(with_img).all() and torch.isfinite(without).all()
    assert not torch.allclose(with_img, without, atol=1e-4)
    out = model(batch)
    assert out["loss_balance"] > 0 and out["loss_specialise"] > 0


def test_flexmoe_runs_only_the_routed_experts(split):
    model = build("flexmoe", split, experts=16, top_k=1, dropout=0.0)
    seen = {}
    model.moe[0].register_forward_hook(lambda m, i, o: seen.update(top=o[2]))
    logits(model, split[1].test.batch(slice(0, 1))).sum().backward()
    chosen = set(seen["top"].flatten().tolist())
    assert 0 < len(chosen) < 16
    for e, expert in enumerate(model.moe[0].experts):
        grads = [p.grad for p in expert.parameters()]
        if e in chosen:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_umse_triplets_are_the_observed_values(split):
    from importlib import import_module

    model = build("umse", split)
    module = import_module(type(model).__module__)
    batch = split[1].test.batch(slice(0, 5))
    hour, var, value, valid = module.observed_triplets(batch, max_triplets=10_000)
    mask = batch.ehr_mask.numpy() > 0
    for i in range(len(batch)):
        t, f = np.nonzero(mask[i])  # row-major: time order, then variable
        n = len(t)
        assert int(valid[i].sum()) == n
        np.testing.assert_array_equal(hour[i, :n].numpy(), t)
        np.testing.assert_array_equal(var[i, :n].numpy(), f)
        np.testing.assert_allclose(value[i, :n].numpy(), batch.ehr.numpy()[i, t, f])
    # Truncation keeps the latest observations.
    hour3, _, _, valid3 = module.observed_triplets(batch, max_triplets=3)
    t, _ = np.nonzero(mask[0])
    np.testing.assert_array_equal(hour3[0, : int(valid3[0].sum())].numpy(), t[-3:])


def test_umse_ignores_imputed_values_and_exchanges_through_bottleneck(split):
    model = build("umse", split)
    batch = with_cxr(split[1].test.batch(slice(0, 4)), True)
    unobserved = batch.ehr_mask == 0
    with torch.no_grad():
        base = logits(model, batch)
        imputed_changed = batch.replace(ehr=torch.where(unobserved, batch.ehr + 7.0, batch.ehr))
        assert torch.allclose(base, logits(model, imputed_changed), atol=1e-5)
        observed_changed = batch.replace(ehr=torch.where(unobserved, batch.ehr, batch.ehr + 7.0))
        assert not torch.allclose(base, logits(model, observed_changed), atol=1e-4)
        # The EHR CLS never attends to the CXR token: a change can only arrive via the bottleneck.
        cls_a, _ = model.encode(batch)
        cls_b, _ = model.encode(batch.replace(cxr=batch.cxr * -2.0))
    assert not torch.allclose(cls_a, cls_b, atol=1e-4)
    with pytest.raises(ValueError, match="layers >= 2"):
        build("umse", split, layers=1)


def test_shaspec_substitutes_shared_ehr_feature_and_aux_losses(split):
    model = build("shaspec", split)
    batch = split[1].test.batch(slice(0, 8))
    has = batch.has_cxr > 0
    assert has.any() and (~has).any()
    with torch.no_grad():
        f = model.features(batch)
        out = model(batch)
        noisy = logits(
            model, batch.replace(cxr=batch.cxr + torch.randn_like(batch.cxr) * ~has[:, None])
        )
    assert torch.equal(f["f_cxr"][~has], f["s_ehr"][~has])
    assert torch.allclose(out["logits"], noisy, atol=1e-6)
    expected = model.alpha * (f["s_ehr"][has] - f["s_cxr"][has]).abs().mean()
    assert torch.allclose(out["loss_align"], expected)
    assert out["loss_domain"] > 0
    # The domain loss trains the specific encoders.
    model.train()
    model(batch)["loss_domain"].backward()
    assert model.spec_ehr.embed.weight.grad.abs().sum() > 0
    assert model.spec_cxr[0].weight.grad.abs().sum() > 0


def test_m3care_predictions_do_not_depend_on_the_batch(split):
    model = build("m3care", split)
    test = split[1].test
    n = len(test)
    with torch.no_grad():
        full = logits(model, test.all())
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
        shuffled = logits(model, test.batch(perm))
        singles = torch.cat([logits(model, test.batch(slice(i, i + 1))) for i in range(n)])
        # The same test stays in one batch with training stays.
        others = split[1].train.batch(slice(0, 10))
        first = test.batch(slice(0, 5))
        joined = first.replace(
            **{
                f.name: torch.cat([getattr(first, f.name), getattr(others, f.name)])
                for f in dataclasses.fields(first)
                if getattr(first, f.name) is not None
            }
        )
        mixed = logits(model, joined)[:5]
    assert torch.allclose(full[perm], shuffled, atol=1e-5)
    assert torch.allclose(full, singles, atol=1e-5)
    assert torch.allclose(full[:5], mixed, atol=1e-5)
    assert (test.has_cxr == 0).any()  # the imputation path is exercised


def test_m3care_neighbours_match_sklearn_and_exclude_self(split):
    model = build("m3care", split, neighbours=4)
    train = split[1].train
    bank = train.ehr_summary[train.has_cxr > 0].numpy()
    bank_ids = train.stay_id[train.has_cxr > 0].numpy()
    nn_ref = NearestNeighbors(n_neighbors=5).fit(bank)
    batch = train.batch(slice(0, 6))
    rows, valid = model.neighbours(batch)
    assert valid.all()
    _, ref = nn_ref.kneighbors(batch.ehr_summary.numpy())
    for i in range(len(batch)):
        expected = [r for r in ref[i] if bank_ids[r] != int(batch.stay_id[i])][:4]
        assert rows[i].tolist() == expected
    # A stay without an image still gets a non-zero imputed representation.
    with torch.no_grad():
        imputed = model.impute(with_cxr(split[1].test.batch(slice(0, 3)), False))
    assert imputed.abs().sum(dim=1).min() > 0


def test_smil_prototypes_are_kmeans_centres_of_training_embeddings(split):
    fs, sp = split
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(3, sp.train.cxr.shape[1])).astype(np.float32)
    which = np.arange(len(sp.train)) % 3
    cxr = centres[which] + rng.normal(0, 0.05, size=(len(sp.train), centres.shape[1]))
    train = dataclasses.replace(
        sp.train, cxr=torch.from_numpy(cxr.astype(np.float32)), has_cxr=torch.ones(len(sp.train))
    )
    model = build("smil", (fs, dataclasses.replace(sp, train=train)), prototypes=3)
    got = model.prototypes.numpy()
    for c in centres:  # each planted centre is recovered by exactly one prototype
        assert np.min(np.linalg.norm(got - c, axis=1)) < 0.1


def test_smil_reconstructs_a_missing_cxr_at_inference(split):
    model = build("smil", split)
    assert model.prototypes.abs().sum() > 0
    batch = with_cxr(split[1].test.batch(slice(0, 5)), False)
    seen = {}
    model.cxr_proj.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        a = logits(model, batch)
        expected = model.reconstruct(model.ehr(batch))
    assert not model.training
    assert torch.allclose(seen["x"], expected) and expected.abs().sum() > 0
    model.prototypes.zero_()  # without reconstruction the prediction would differ
    with torch.no_grad():
        b = logits(model, batch)
    assert not torch.allclose(a, b, atol=1e-5)


def test_smil_meta_step_trains_all_parts(split):
    model = build("smil", split, train=True)
    batch, y = next(split[1].train.iter_batches(20))
    loss = model.training_step(batch, y, torch.nn.BCEWithLogitsLoss(), None)
    assert torch.isfinite(loss)
    loss.backward()
    for part in (model.ehr, model.recon, model.head):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0
