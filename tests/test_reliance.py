"""Modality reliance and robustness judged on absolute values: checked against scikit-learn on
the same resamples, hand-computed cases and planted models (what each model uses is known)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.evaluate.score import score_predictions
from harness.evaluate.score.robustness import area_above_chance, helps_up_to, imbalance_index
from harness.metrics.bootstrap import bootstrap_indices

N = 600
RATES = (0.0, 0.5, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def planted():
    """A binary label that needs both sources: an EHR signal and an image signal, each alone
    informative; models whose use of each source is known by construction."""
    rng = np.random.default_rng(3)
    ehr, cxr = rng.normal(size=N), rng.normal(size=N)
    y = (ehr + cxr + 0.7 * rng.normal(size=N) > 0).astype(int)
    subj = rng.integers(0, 400, N)
    noise = rng.normal(size=N)
    r = bootstrap_indices(subj, n_resamples=200)
    return {"y": y, "ehr": ehr, "cxr": cxr, "noise": noise, "subj": subj, "r": r}


def _score(planted, clean, without_cxr, without_ehr, **kwargs):
    half_cxr = [np.where(np.arange(N) % 2 == 0, without_cxr[0], clean[0])]
    half_ehr = [np.where(np.arange(N) % 2 == 0, without_ehr[0], clean[0])]
    return score_predictions(
        "binary", planted["y"], clean, planted["subj"], resamples=planted["r"],
        scenario_probs={
            "cxr_missing_mcar": {0.0: clean, 0.5: half_cxr, 1.0: without_cxr},
            "ehr_missing": {0.0: clean, 0.5: half_ehr, 1.0: without_ehr},
        },
        **kwargs,
    )  # fmt: skip


def test_imbalance_index_hand_cases():
    drop_ehr = np.array([0.2, 0.0, 0.1, -0.1, -0.1, 0.0])
    drop_cxr = np.array([0.0, 0.2, 0.1, 0.1, -0.05, 0.0])
    index = imbalance_index(drop_ehr, drop_cxr)
    # a removal that helps counts as no reliance: (-0.1, 0.1) relies on the image only
    np.testing.assert_array_equal(index[:4], [1.0, 0.0, 0.5, 0.0])
    assert np.isnan(index[4]) and np.isnan(index[5])  # no removal hurts: undefined


def test_area_above_chance_hand_case():
    x = np.array([0.0, 0.5, 1.0])
    v = np.array([0.8, 0.7, 0.5])
    # trapezoids of v - 0.5: 0.5 * (0.3 + 0.2) / 2 + 0.5 * (0.2 + 0.0) / 2 = 0.175
    assert area_above_chance(x, v, 0.5) == pytest.approx(0.175, abs=1e-15)
    assert area_above_chance(x, np.full(3, 0.5), 0.5) == 0.0


def test_model_that_ignores_the_image_is_ehr_dominant(planted):
    """It declares the image but never uses it: removing the image leaves its answers as
    they were (index exactly 1); removing the EHR leaves it guessing."""
    clean = [_sigmoid(planted["ehr"])]
    without_ehr = [_sigmoid(0.0 * planted["ehr"] + 0.01 * planted["noise"])]
    block = _score(planted, clean, [clean[0].copy()], without_ehr)
    rel = block["reliance"]
    assert rel["drop_without_cxr"]["delta"] == 0.0
    assert rel["imbalance_index"]["value"] == 1.0
    assert rel["dominant"] == "ehr"
    # the values are scikit-learn's
    y = planted["y"]
    assert rel["full"]["value"] == pytest.approx(roc_auc_score(y, clean[0]), abs=1e-12)
    assert rel["without_ehr"]["value"] == pytest.approx(roc_auc_score(y, without_ehr[0]), abs=1e-12)
    assert rel["drop_without_ehr"]["delta"] == pytest.approx(
        roc_auc_score(y, clean[0]) - roc_auc_score(y, without_ehr[0]), abs=1e-12
    )


def test_image_only_and_balanced_models(planted):
    y, ehr, cxr, noise = planted["y"], planted["ehr"], planted["cxr"], planted["noise"]
    image_only = [_sigmoid(cxr)]
    block = _score(planted, image_only, [_sigmoid(0.01 * noise)], [image_only[0].copy()])
    assert block["reliance"]["imbalance_index"]["value"] == 0.0
    assert block["reliance"]["dominant"] == "cxr"

    both = [_sigmoid(ehr + cxr)]
    block = _score(planted, both, [_sigmoid(ehr)], [_sigmoid(cxr)])
    rel = block["reliance"]
    d_cxr = roc_auc_score(y, both[0]) - roc_auc_score(y, _sigmoid(ehr))
    d_ehr = roc_auc_score(y, both[0]) - roc_auc_score(y, _sigmoid(cxr))
    assert rel["imbalance_index"]["value"] == pytest.approx(d_ehr / (d_ehr + d_cxr), abs=1e-12)
    assert rel["dominant"] == "balanced"  # the two sources are equally strong by construction
    low, high = rel["imbalance_index"]["ci_low"], rel["imbalance_index"]["ci_high"]
    assert low < 0.5 < high


def test_curves_carry_absolute_cis_and_the_comparison_with_the_references(planted):
    """Per-rate CIs and paired differences against an independent computation: scikit-learn's
    AUROC with the resample multiplicities as sample weights."""
    y, ehr, cxr, r = planted["y"], planted["ehr"], planted["cxr"], planted["r"]
    both = [_sigmoid(ehr + cxr)]
    reference = [_sigmoid(ehr)]  # the EHR-only reference: removing images changes nothing
    block = _score(
        planted, both, [_sigmoid(ehr + 0.05 * planted["noise"])], [_sigmoid(cxr)],
        reference_scenarios={"ehr_lstm": {"cxr_missing_mcar": dict.fromkeys(RATES, reference)}},
    )  # fmt: skip
    curve = block["robustness"]["cxr_missing_mcar"]
    mcar = {0.0: both[0], 1.0: _sigmoid(ehr + 0.05 * planted["noise"])}
    mcar[0.5] = np.where(np.arange(N) % 2 == 0, mcar[1.0], both[0])
    for j, rate in enumerate(RATES):
        boot = np.array([roc_auc_score(y, mcar[rate], sample_weight=w) for w in r.counts])
        ref_boot = np.array([roc_auc_score(y, reference[0], sample_weight=w) for w in r.counts])
        assert curve["values_ci_low"][j] == pytest.approx(np.quantile(boot, 0.025), abs=1e-9)
        assert curve["values_ci_high"][j] == pytest.approx(np.quantile(boot, 0.975), abs=1e-9)
        versus = curve["versus"]["ehr_lstm"]
        delta = roc_auc_score(y, mcar[rate]) - roc_auc_score(y, reference[0])
        assert versus["delta"][j] == pytest.approx(delta, abs=1e-12)
        assert versus["ci_low"][j] == pytest.approx(np.quantile(boot - ref_boot, 0.025), abs=1e-9)
    # with every image, fusion beats the EHR model; without any, it is the EHR model plus
    # noise: the rate up to which it helps is one of the curve's rates, below 1
    assert curve["versus"]["ehr_lstm"]["ci_low"][0] > 0
    assert curve["helps_up_to"] in (0.0, 0.5)
    values = np.array(curve["values"])
    assert curve["area_above_chance"] == pytest.approx(
        float(area_above_chance(np.array(RATES), values, 0.5)), abs=1e-15
    )
    # the EHR scenarios are never compared rate by rate (the EHR-only reference has no EHR)
    assert "versus" not in block["robustness"]["ehr_missing"]


def test_helps_up_to_stops_at_the_first_rate_that_does_not_beat_every_reference():
    rates = [0.0, 0.25, 0.5, 0.75, 1.0]
    a = {"ci_low": [0.02, 0.01, 0.001, -0.01, 0.02], "ci_high": [0.1] * 5}
    b = {"ci_low": [0.03, 0.02, 0.01, 0.01, 0.01], "ci_high": [0.1] * 5}
    assert helps_up_to(rates, {"a": a, "b": b}, "auroc") == 0.5
    assert helps_up_to(rates, {"b": b}, "auroc") == 1.0
    never = {"ci_low": [-0.01] * 5, "ci_high": [0.1] * 5}
    assert helps_up_to(rates, {"a": a, "never": never}, "auroc") is None
    assert helps_up_to(rates, {}, "auroc") is None
    # lower is better: the CI must lie below 0
    low_better = {"ci_low": [-0.2] * 5, "ci_high": [-0.01, -0.01, 0.01, -0.01, -0.01]}
    assert helps_up_to(rates, {"a": low_better}, "brier") == 0.25
