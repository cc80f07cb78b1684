"""`harness evaluate`: scenarios, resumable units, pooled scoring, failures, leaderboard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from harness import config
from harness.cli.main import main
from harness.evaluate.scenarios import RATES, SCENARIOS, severity_proxy
from harness.models.data import FeatureSet, split_indices

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Scenarios on generated data


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return FeatureSet.synthetic(n=800, seed=3, kind="binary", p_cxr=0.7)


def _test_idx(fs: FeatureSet, fold: int = 1) -> np.ndarray:
    return split_indices(fs.fold, fold)[2]


@pytest.mark.parametrize("name", ["cxr_missing_mcar", "cxr_missing_acuity", "cxr_missing_subgroup"])
def test_cxr_scenarios_drop_the_stated_share_nested_and_only_in_test(fs, name):
    scenario = SCENARIOS.get(name)
    test = _test_idx(fs)
    eligible = test[fs.has_cxr[test]]
    dropped_before: set[int] = set()
    for rate in RATES:
        out = scenario.degrade(fs, test, rate, fold=1)
        lost = np.flatnonzero(fs.has_cxr & ~out.has_cxr)
        assert len(lost) == int(round(rate * eligible.size))
        assert set(lost) <= set(eligible)  # only test stays that had an image
        assert dropped_before <= set(lost)  # nested across rates
        dropped_before = set(lost)
        assert np.all(out.cxr[lost] == 0) and np.all(np.isnan(out.cxr_time_hours[lost]))
        keep = np.setdiff1d(np.arange(len(fs)), lost)
        np.testing.assert_array_equal(out.cxr[keep], fs.cxr[keep])
        np.testing.assert_array_equal(out.ehr_values, fs.ehr_values)
    again = scenario.degrade(fs, test, 0.5, fold=1)
    np.testing.assert_array_equal(again.has_cxr, scenario.degrade(fs, test, 0.5, fold=1).has_cxr)


def test_acuity_scenario_prefers_the_sickest():
    fs = FeatureSet.synthetic(n=4000, seed=3, kind="binary", p_cxr=0.7)
    values = fs.ehr_values.copy()
    observed = fs.ehr_observed.copy()
    sick = np.zeros(len(fs), dtype=bool)
    sick[::2] = True  # plant a deranged heart rate in every other stay
    variables = ["heart_rate", *fs.variables[1:]]
    values[:, :, 0] = np.where(sick[:, None], 140.0, 80.0)
    observed[:, :, 0] = True
    planted = fs.replace(ehr_values=values, ehr_observed=observed, variables=variables)
    sev = severity_proxy(planted)
    assert np.all(sev[sick] == 1.0) and np.all(sev[~sick] == 0.0)
    test = _test_idx(planted)
    out = SCENARIOS.get("cxr_missing_acuity").degrade(planted, test, 0.25, fold=1)
    lost = planted.has_cxr & ~out.has_cxr
    # tied average ranks give the sick half weight 4 and the others 2; drawn without
    # replacement the sick supply clearly more drops, while MCAR takes both halves alike
    assert lost[sick].sum() / lost[~sick].sum() > 1.4
    mcar = SCENARIOS.get("cxr_missing_mcar").degrade(planted, test, 0.25, fold=1)
    lost_mcar = planted.has_cxr & ~mcar.has_cxr
    assert 0.75 < lost_mcar[sick].sum() / lost_mcar[~sick].sum() < 1.3


def test_subgroup_scenario_follows_observed_missingness():
    fs = FeatureSet.synthetic(n=2000, seed=5, kind="binary", p_cxr=0.9)
    group = fs.demographics["race_group"].to_numpy()
    has = fs.has_cxr.copy()
    rng = np.random.default_rng(0)
    has[(group == "ASIAN") & (rng.random(len(fs)) < 0.7)] = False  # ASIAN lack images most
    fs = fs.replace(has_cxr=has, cxr=np.where(has[:, None], fs.cxr, 0))
    test = _test_idx(fs)
    out = SCENARIOS.get("cxr_missing_subgroup").degrade(fs, test, 0.25, fold=1)
    lost = fs.has_cxr & ~out.has_cxr
    eligible = np.zeros(len(fs), bool)
    eligible[test] = fs.has_cxr[test]
    share = pd.Series(lost[eligible]).groupby(group[eligible]).mean()
    assert share["ASIAN"] == share.max() and share["ASIAN"] > 2 * share.drop("ASIAN").mean()


def test_ehr_scenarios_mask_exactly_their_features():
    fs = FeatureSet.synthetic(n=300, seed=1, kind="binary", n_variables=3)
    fs = fs.replace(variables=["heart_rate", "creatinine", "gcs_eye"])
    test = _test_idx(fs)
    out = SCENARIOS.get("ehr_drop_labs").degrade(fs, test, 1.0, fold=1)
    assert not out.ehr_observed[test][:, :, 1].any()
    np.testing.assert_array_equal(out.ehr_observed[:, :, [0, 2]], fs.ehr_observed[:, :, [0, 2]])
    other = np.setdiff1d(np.arange(len(fs)), test)
    np.testing.assert_array_equal(out.ehr_observed[other], fs.ehr_observed[other])
    # the summary statistics of degraded stays are recomputed from the degraded series
    assert not np.array_equal(out.ehr_summary[test], fs.ehr_summary[test])

    cut = SCENARIOS.get("ehr_truncate_24h").degrade(fs, test, 0.5, fold=1)
    hit = np.flatnonzero(
        cut.ehr_observed[:, 24:].sum(axis=(1, 2)) < fs.ehr_observed[:, 24:].sum(axis=(1, 2))
    )
    assert len(hit) == int(round(0.5 * len(test))) and set(hit) <= set(test)
    np.testing.assert_array_equal(cut.ehr_observed[:, :24], fs.ehr_observed[:, :24])
    assert not cut.ehr_observed[hit, 24:].any()


def test_unknown_scenario_suggests_names():
    with pytest.raises(KeyError, match="Did you mean 'cxr_missing_mcar'"):
        SCENARIOS.get("cxr_missing_mcr")


# --------------------------------------------------------------------------------------------
# The whole command on a tiny synthetic pipeline


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    """The session's tiny pipeline, copied: the module writes results and a leaderboard."""
    return tiny_pipeline_copy


DATASET = config.DEFAULT_DATASET  # results live in cache/results/<dataset>/<name>/
ARGS = ["--quick", "-t", "mortality_in_hospital", "--encoder", "test_tiny", "--max-epochs", "3"]


@pytest.fixture(scope="module")
def evaluated(cache):
    """The EHR-only and the CXR-only references, evaluated once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(cache))
        assert main(["evaluate", "submissions/ehr_lstm", *ARGS]) == 0
        assert main(["evaluate", "submissions/cxr_probe", *ARGS]) == 0
    return cache


def _result(cache: Path, name: str) -> dict:
    return json.loads((cache / "results" / DATASET / name / "result.json").read_text())


@pytest.mark.slow
def test_evaluate_scores_pooled_predictions_and_resumes(evaluated, monkeypatch):
    cache = evaluated
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    from harness.cohort import load_cohort
    from harness.evaluate.run import read_unit
    from harness.models.data import load_feature_set
    from harness.models.train import train_model

    result = _result(cache, "ehr_lstm")
    assert result["status"] == "ok"
    block = result["tasks"]["mortality_in_hospital"]["base"]

    # the unit file holds what a direct training run with the same seed predicts
    preds = cache / "results" / DATASET / "ehr_lstm/predictions/mortality_in_hospital"
    units = list(preds.glob("base-*/*/*"))
    assert len(units) == 1
    frame, meta = read_unit(units[0])
    cohort = load_cohort("base")
    fs = load_feature_set(cohort, "mortality_in_hospital", encoder="test_tiny")
    tm = train_model(REPO / "submissions/ehr_lstm", fs, None, 1, 0, max_epochs=3)
    test = split_indices(fs.fold, 1)[2]
    direct = tm.predict_feature_set(fs, test)
    clean = frame[(frame["part"] == "test") & (frame["scenario"] == "clean")]
    stored = clean.set_index("stay_id").loc[fs.stay_id[test], "prob_0"].to_numpy()
    np.testing.assert_allclose(stored, direct, rtol=1e-6, atol=1e-9)
    # the reported AUROC is scikit-learn's on those pooled predictions
    assert block["metrics"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(fs.y[test], direct), abs=1e-9
    )
    assert block["n_stays"] == len(test)

    # an EHR-only model ignores the image: every CXR-missing curve is exactly flat,
    # while the CXR-only model's curve ends at chance-level information
    for name in ("cxr_missing_mcar", "cxr_missing_acuity", "cxr_missing_subgroup"):
        assert block["robustness"][name]["rates"] == list(RATES)
        assert block["robustness"][name]["auc_normalised"] == pytest.approx(1.0)
    probe = _result(cache, "cxr_probe")["tasks"]["mortality_in_hospital"]["base"]
    values = probe["robustness"]["cxr_missing_mcar"]["values"]
    assert values[-1] == pytest.approx(0.5, abs=1e-9)  # no image left: constant prediction
    assert "ehr_lstm" in probe["paired_deltas"]
    # the probe is itself the CXR-only reference, so it is not scored against itself
    assert probe["references"] == {
        "ehr_only": "ehr_lstm",
        "cxr_only": None,
        "best_unimodal": "ehr_lstm",
    }
    assert "base->matched" in block["cross_cohort"]

    # modality reliance: removing the image changes nothing the EHR-only model reads (its
    # predictions are the clean ones, the drop exactly 0), removing the EHR changes nothing
    # the CXR-only model reads: the imbalance index takes its two extremes exactly
    reliance = block["reliance"]
    assert reliance["drop_without_cxr"]["delta"] == 0.0
    assert reliance["without_cxr"] == reliance["full"]
    assert reliance["imbalance_index"]["value"] == 1.0
    # dominant only when the drop is significant, which the tiny models' may not be
    assert reliance["dominant"] == ("ehr" if reliance["drop_without_ehr"]["ci_low"] > 0
                                    else "neither")  # fmt: skip
    probe_reliance = probe["reliance"]
    assert probe_reliance["drop_without_ehr"]["delta"] == 0.0
    assert probe_reliance["imbalance_index"]["value"] in (0.0, None)  # None: no drop at all
    assert probe_reliance["dominant"] in ("cxr", "neither")
    assert probe["robustness"]["ehr_missing"]["auc_normalised"] == 1.0
    # the probe's image-removal curve against its EHR-only reference at every rate: with no
    # image left it is worse than the EHR model (unless the tiny model learnt nothing)
    versus = probe["robustness"]["cxr_missing_mcar"]["versus"]["ehr_lstm"]
    assert len(versus["delta"]) == len(RATES)
    ehr_auroc = block["metrics"]["auroc"]["value"]
    assert versus["delta"][-1] == pytest.approx(values[-1] - ehr_auroc, abs=1e-12)

    # resumable: a second run trains nothing and reproduces the numbers
    from harness.evaluate.run import EvalSettings, evaluate

    settings = EvalSettings.quick(
        tasks=("mortality_in_hospital",), encoder="test_tiny", max_epochs=3
    )
    outcome = evaluate(REPO / "submissions/ehr_lstm", settings)
    assert outcome.units_run == 0 and outcome.units_reused == outcome.units_total == 2
    again = outcome.result["tasks"]["mortality_in_hospital"]["base"]["metrics"]["auroc"]
    assert again == block["metrics"]["auroc"]


@pytest.mark.slow
def test_failed_submission_never_replaces_a_good_result(evaluated, monkeypatch, tmp_path):
    cache = evaluated
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    bad = tmp_path / "nan_model"
    shutil.copytree(REPO / "tests/fixtures/bad_submissions/nan_output", bad)
    name = _yaml_name(bad)
    assert main(["evaluate", str(bad), *ARGS]) != 0
    failed = _result(cache, name)
    assert failed["status"] == "failed"
    assert "nan" in failed["error"].lower() and "model.py" in failed["error"]

    good_before = (cache / "results" / DATASET / "ehr_lstm/result.json").read_bytes()
    broken = tmp_path / "ehr_lstm"
    shutil.copytree(REPO / "submissions/ehr_lstm", broken)
    (broken / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
    assert main(["evaluate", str(broken), *ARGS]) != 0
    assert (cache / "results" / DATASET / "ehr_lstm/result.json").read_bytes() == good_before


def _yaml_name(folder: Path) -> str:
    import yaml

    return yaml.safe_load((folder / "submission.yaml").read_text())["name"]


@pytest.mark.slow
def test_leaderboard_ranks_results_without_patient_rows(evaluated, monkeypatch):
    cache = evaluated
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    assert main(["leaderboard"]) == 0
    board_text = (cache / "leaderboard/leaderboard.json").read_text()
    board = json.loads(board_text)
    from harness.cohort import load_cohort

    stays = load_cohort("base").stays
    for sid in stays["stay_id"].astype(str).head(200):
        assert sid not in board_text
    names = {row["name"] for r in board["rankings"] for row in r["rows"]}
    assert {"ehr_lstm", "cxr_probe"} <= names


@pytest.mark.slow
def test_train_cxr_dropout_sweep_is_a_separate_entry(evaluated, monkeypatch, capsys):
    """--train-cxr-dropout: one entry per rate, own units, rate in provenance; bad rates exit 2."""
    cache = evaluated
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    assert main(["evaluate", "submissions/cxr_probe", *ARGS, "--train-cxr-dropout", "0.5"]) == 0
    plain, dropped = _result(cache, "cxr_probe"), _result(cache, "cxr_probe.cxrdrop0.5")
    assert plain["provenance"]["train_cxr_dropout"] == 0.0
    assert dropped["provenance"]["train_cxr_dropout"] == 0.5
    assert dropped["provenance"]["submission"] == "cxr_probe"
    assert dropped["provenance"]["run_key"] != plain["provenance"]["run_key"]
    # hiding half the training images changed the model (its Brier score)
    block = lambda r: r["tasks"]["mortality_in_hospital"]["base"]["metrics"]["brier"]  # noqa: E731
    assert block(dropped)["value"] != block(plain)["value"]
    capsys.readouterr()
    assert main(["evaluate", "submissions/cxr_probe", *ARGS, "--train-cxr-dropout", "1.5"]) == 2
    assert "not a rate in [0, 1)" in capsys.readouterr().err
