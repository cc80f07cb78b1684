"""The evaluation protocol's statistics: one EHR summary, references chosen on validation,
base-cohort subgroup weights, one metric vocabulary, folds from the cohort, protocols kept apart.

Each test reproduces a defect a statistics review found (see the README's "Evaluation protocol").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from pipeline_fixtures import copy_dataset

from harness.cli.main import main
from harness.models.data import FeatureSet, split_indices
from harness.models.protocol import TaskInfo

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# A tiny store-built cache (synth -> cohort build -> encode), shared by the module


@pytest.fixture(scope="module")
def store_cache(tiny_pipeline_copy):
    """The session's tiny pipeline, copied: the module writes results and a leaderboard."""
    return tiny_pipeline_copy


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows where two arrays differ, NaN equal to NaN."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return ~same.reshape(len(a), -1).all(axis=1)


# --------------------------------------------------------------------------------------------
# 1. EHR degradation reaches the stored summary


def test_ehr_degradation_recomputes_the_stored_summary(store_cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(store_cache))
    from harness.encode.ehr import summarise
    from harness.evaluate.scenarios import SCENARIOS
    from harness.models.data import load_feature_set, summarise_ehr

    fs = load_feature_set("base", "mortality_in_hospital", encoder="test_tiny")
    # one summary function: what the encode stage stored is what the harness recomputes
    recomputed, names = summarise_ehr(fs.ehr_values, fs.variables)
    assert names == fs.summary_names
    np.testing.assert_array_equal(recomputed, fs.ehr_summary)

    test = fs.split(1)[2]
    for name in ("ehr_truncate_24h", "ehr_drop_vitals"):
        out = SCENARIOS.get(name).degrade(fs, test, 1.0, fold=1)
        values_changed = _changed_rows(out.ehr_values[test], fs.ehr_values[test])
        summary_changed = _changed_rows(out.ehr_summary[test], fs.ehr_summary[test])
        assert values_changed.sum() > 0.5 * len(test)
        # every stay whose hourly values changed has a changed summary, and it is the summary
        # of the degraded series
        np.testing.assert_array_equal(summary_changed, values_changed)
        np.testing.assert_array_equal(out.ehr_summary[test], summarise(out.ehr_values[test]))
        other = np.setdiff1d(np.arange(len(fs)), test)
        np.testing.assert_array_equal(out.ehr_summary[other], fs.ehr_summary[other])

    # a summary of another layout is an error, never silently left alone
    narrow = fs.replace(ehr_summary=fs.ehr_summary[:, : 5 * len(fs.variables)])
    with pytest.raises(ValueError, match="summary"):
        SCENARIOS.get("ehr_truncate_24h").degrade(narrow, test, 0.5, fold=1)


# --------------------------------------------------------------------------------------------
# 2 and 7. References: the EHR-only fusion gain, chosen on validation


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _probs(y: np.ndarray, strength: np.ndarray, rng) -> np.ndarray:
    """Probabilities whose separation of the labels grows with ``strength`` (per label)."""
    return _sigmoid(strength * (2 * y - 1) + rng.standard_normal(y.shape))


def _write_unit(path: Path, frame: pd.DataFrame, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({b"harness_unit": json.dumps(meta).encode()})
    pq.write_table(table, path)


def _unit_frame(fs, val_idx, test_idx, p_val, p_test) -> pd.DataFrame:
    frames = []
    for idx, part, p in ((val_idx, "val", p_val), (test_idx, "test", p_test)):
        cols = {"stay_id": fs.stay_id[idx], "part": part, "scenario": "clean", "rate": 0.0}
        cols.update({f"prob_{j}": p[:, j] for j in range(p.shape[1])})
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


#: Per model, label strength on (validation, test): the EHR models swap places between the two
#: splits, and the image probe is the best model of label_cxr on validation only.
STRENGTHS = {
    "fuser": ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
    "ehr_lstm": ([1.5, 1.5, 1.5], [0.3, 0.3, 0.3]),
    "ehr_transformer": ([0.3, 0.3, 0.3], [1.5, 1.5, 1.5]),
    "cxr_probe": ([0.0, 2.5, 0.0], [0.0, 0.0, 0.0]),
}


@pytest.fixture
def planted_results(tmp_path, monkeypatch):
    """Unit files of a fusion entry and the three unimodal references on one fold and seed."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    from harness.evaluate import paths, run

    fs = FeatureSet.synthetic(n=1500, seed=4, kind="multilabel")
    _, val_idx, test_idx = fs.split(1)
    rng = np.random.default_rng(0)
    cohort_dir = "base-planted"
    for name, (s_val, s_test) in STRENGTHS.items():
        p_val = _probs(fs.y[val_idx], np.asarray(s_val), rng)
        p_test = _probs(fs.y[test_idx], np.asarray(s_test), rng)
        key = f"{name}-key"
        base = paths.predictions_dir(name, fs.task.name, cohort_dir, key)
        meta = {
            "unit_schema": 1,
            "task": fs.task.name,
            "cohort": "base",
            "fold": 1,
            "seed": 0,
            "thresholds": [0.5] * 3,
            "val_score": 0.0,
            "best_epoch": 0,
            "train_seconds": 1.0,
        }
        _write_unit(base / "fold1_seed0.parquet", _unit_frame(fs, val_idx, test_idx, p_val, p_test),
                    meta)  # fmt: skip
        # what a result.json of the reference says: its test value (the old choice read it)
        value = float(np.mean(s_test)) / 2
        result = {
            "name": name,
            "provenance": {"run_key": key, "folds": [1], "seeds": [0], "max_epochs": None},
            "tasks": {fs.task.name: {"base": {"main_metric": "auroc_macro",
                                              "metrics": {"auroc_macro": {"value": value}}}}},
        }  # fmt: skip
        path = paths.result_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    stays = fs.demographics.assign(stay_id=fs.stay_id, has_cxr=fs.has_cxr)
    cohort = SimpleNamespace(name="base", stays=stays)
    settings = run.EvalSettings(folds=(1,), seeds=(0,), n_resamples=100)
    return fs, cohort, settings, cohort_dir


def _score(fs, cohort, settings, cohort_dir):
    from harness.evaluate.paths import predictions_dir
    from harness.evaluate.pooling import pool_units
    from harness.evaluate.score import score_task_cohort

    base = predictions_dir("fuser", fs.task.name, cohort_dir, "fuser-key")
    pooled = pool_units(fs, base, settings.folds, settings.seeds)
    return score_task_cohort("fuser", fs, cohort, pooled, settings, cohort_dir, {})


def test_references_are_chosen_on_validation_predictions(planted_results):
    fs, cohort, settings, cohort_dir = planted_results
    block = _score(fs, cohort, settings, cohort_dir)
    # ehr_transformer is better on the test fold (what result.json holds), ehr_lstm on the
    # validation split: the reference is the one validation picks
    assert block["references"]["ehr_only"] == "ehr_lstm"
    assert block["references"]["best_unimodal"] == "ehr_lstm"
    assert block["references"]["cxr_only"] == "cxr_probe"
    assert block["fusion_gain"]["reference"] == "ehr_lstm"
    # per label, the best single modality is also chosen on validation: the probe for label_cxr
    per_label = block["fusion_gain_unimodal"]["labels"]
    assert per_label["label_cxr"]["reference"] == "cxr_probe"
    assert per_label["label_ehr"]["reference"] == "ehr_lstm"


def test_fusion_gain_needs_an_ehr_only_reference(planted_results):
    from harness.evaluate.paths import result_path

    fs, cohort, settings, cohort_dir = planted_results
    for name in ("ehr_lstm", "ehr_transformer"):
        result_path(name).unlink()
    block = _score(fs, cohort, settings, cohort_dir)
    assert block["references"]["ehr_only"] is None
    assert block["references"]["cxr_only"] == "cxr_probe"
    # no fallback to the image reference: the table says "over the EHR-only reference"
    assert block["fusion_gain"] is None
    assert "EHR-only reference" in block["fusion_gain_reason"]
    assert "fusion_gain_unimodal" not in block
    assert "cxr_probe" in block["paired_deltas"]


def test_validation_choice_is_unbiased_where_the_test_choice_is_not():
    """Simulated null: a fusion model and two EHR references of identical quality.

    Choosing the better reference by its test value picks the one whose test noise is
    favourable, so the reported delta is biased downwards; choosing it on validation (the rule
    `pick_reference` applies) leaves the delta centred on zero.
    """
    from harness.evaluate.score.references import pick_reference
    from harness.metrics.registry import batched_auroc

    rng = np.random.default_rng(7)
    reps, n = 400, 300
    by_test, by_val = [], []
    for _ in range(reps):
        y = {p: (rng.random(n) < 0.3).astype(int) for p in ("val", "test")}
        score = {(m, p): y[p] * 1.0 + rng.standard_normal(n) for m in ("sub", "a", "b") for p in y}
        auc = {k: float(batched_auroc(y[k[1]], v, np.ones(n))[0]) for k, v in score.items()}
        chosen_test = max(("a", "b"), key=lambda m: auc[(m, "test")])
        chosen_val = pick_reference({m: auc[(m, "val")] for m in ("a", "b")}, "auroc")
        by_test.append(auc[("sub", "test")] - auc[(chosen_test, "test")])
        by_val.append(auc[("sub", "test")] - auc[(chosen_val, "test")])
    se = lambda x: np.std(x, ddof=1) / np.sqrt(len(x))  # noqa: E731
    assert np.mean(by_test) < -3 * se(by_test)  # the old rule: biased against fusion
    assert abs(np.mean(by_val)) < 2.5 * se(by_val)  # the rule in use: unbiased
    # lower-is-better metrics pick the smallest value
    assert pick_reference({"a": 0.2, "b": 0.1}, "brier") == "b"
    assert pick_reference({"a": float("nan")}, "auroc") is None


# --------------------------------------------------------------------------------------------
# 3. cxr_missing_subgroup on matched follows base's availability


def test_subgroup_scenario_takes_availability_from_base(store_cache, monkeypatch):
    from harness.evaluate.scenarios import SCENARIOS

    matched = FeatureSet.synthetic(n=3000, seed=5, kind="binary", p_cxr=1.0)  # every stay: image
    group = matched.demographics["race_group"].to_numpy()
    # in base, ASIAN stays lack an image most often
    rng = np.random.default_rng(1)
    has = rng.random(len(group)) < np.where(group == "ASIAN", 0.1, 0.9)
    availability = pd.Series(has).groupby(group).mean().to_dict()
    reference = {"cohort": "base", "attribute": "race_group", "availability": availability}
    fs = matched.replace(provenance={"cxr_availability_reference": reference})
    test = split_indices(fs.fold, 1)[2]
    out = SCENARIOS.get("cxr_missing_subgroup").degrade(fs, test, 0.25, fold=1)
    lost = fs.has_cxr & ~out.has_cxr
    share = pd.Series(lost[test]).groupby(group[test]).mean()
    assert share["ASIAN"] == share.max() and share["ASIAN"] > 2 * share.drop("ASIAN").mean()
    from harness.evaluate.scenarios import with_availability_reference

    base_stays = pd.DataFrame({"race_group": group, "has_cxr": has})
    made = with_availability_reference(matched, base_stays, cohort="base")
    made_ref = made.provenance["cxr_availability_reference"]
    assert made_ref["cohort"] == "base" and made_ref["attribute"] == "race_group"
    assert made_ref["availability"] == pytest.approx(availability)

    # evaluate attaches base's availability to every cohort it scores
    monkeypatch.setenv("HARNESS_CACHE", str(store_cache))
    from harness.cohort import load_cohort
    from harness.evaluate.plan import subgroup_reference
    from harness.models.data import load_feature_set

    base = load_cohort("base")
    fs_m = load_feature_set(load_cohort("matched"), "mortality_in_hospital", encoder="test_tiny")
    ref = subgroup_reference(fs_m, {"matched": load_cohort("matched")}, None)
    avail = ref.provenance["cxr_availability_reference"]
    assert avail["cohort"] == "base"
    expected = base.stays.groupby(base.stays["race_group"].astype(str))["has_cxr"].mean()
    for g, value in expected.items():
        assert avail["availability"][g] == pytest.approx(float(value))
    assert min(avail["availability"].values()) < 1.0  # not matched's own 100 %


# --------------------------------------------------------------------------------------------
# 4 and 8. Protocols: part of the ranking key, one board each


def _entry(name, value, protocol=None, n_resamples=1000, **prov):
    block = {"main_metric": "auroc", "metrics": {"auroc": {"value": value, "ci_low": value - 0.02,
                                                           "ci_high": value + 0.02}},
             "bootstrap": {"n_resamples": n_resamples}}  # fmt: skip
    provenance = {"folds": [1, 2, 3, 4, 5], "seeds": [0, 1, 2], "max_epochs": None, **prov}
    if protocol is not None:
        provenance["protocol"] = protocol
    return {
        "name": name, "version": "1", "dataset": "synthetic-default",
        "cohorts": {"base": {"fingerprint": "f" * 64}},
        "tasks": {"mortality_in_hospital": {"base": block}}, "provenance": provenance,
    }  # fmt: skip


def test_entries_of_different_protocols_are_never_ranked_together():
    from harness.leaderboard.aggregate import rank_results

    full = _entry("full_a", 0.80)
    full_b = _entry("full_b", 0.78)
    quick = _entry("quick_c", 0.85, folds=[1], seeds=[0], max_epochs=15)
    tables = rank_results([full, full_b, quick])
    assert len(tables) == 2
    by_names = {tuple(r["name"] for r in t["rows"]): t for t in tables}
    assert set(by_names) == {("full_a", "full_b"), ("quick_c",)}
    quick_table = by_names[("quick_c",)]
    assert quick_table["protocol"]["max_epochs"] == 15
    assert quick_table["protocol"]["folds"] == [1]
    assert quick_table["rows"][0]["rank"] == 1
    # the profile and the resamples are part of the key too
    from harness.leaderboard.aggregate import protocol_of

    assert protocol_of(full) != protocol_of(_entry("x", 0.5, n_resamples=200))
    carebench = dict(protocol_of(full), profile="carebench")
    assert len(rank_results([full, _entry("cb", 0.9, protocol=carebench)])) == 2


def test_protocol_block_passes_schema_and_publication():
    from harness.evaluate.run import EvalSettings, protocol_record
    from harness.evaluate.score import score_predictions
    from harness.leaderboard.publish import publishable_result
    from harness.results.document import build_result, provenance

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + 0.1 * rng.standard_normal(300), 0.01, 0.99)
    block = score_predictions("binary", y, [p], np.arange(300), n_resamples=50)
    settings = EvalSettings.quick(folds=(1,), protocol="carebench")
    record = protocol_record(settings, ["mortality_icu"])
    assert record["profile"] == "carebench"
    assert record["seeds"] == [42] and record["max_epochs"] == 15
    assert record["selection"] == {"mortality_icu": "auprc"}
    assert record["threshold"] == "fixed_0.5"
    result = build_result(
        "ehr_lstm.carebench", "1", "synthetic-default",
        cohorts={"base": {"fingerprint": "f" * 64}}, tasks={"mortality_icu": {"base": block}},
        provenance_record=provenance(folds=[1], seeds=[42], protocol=record),
    )  # fmt: skip
    published = publishable_result(result)
    assert published["provenance"]["protocol"] == record


def test_leaderboard_shows_one_board_per_protocol_and_names_it():
    from harness.leaderboard.aggregate import rank_results
    from harness.leaderboard.render import render_markdown

    entries = [_entry("full_a", 0.8), _entry("quick_c", 0.85, folds=[1], seeds=[0], max_epochs=15)]
    doc = {
        "harness_version": "x", "schema_version": "1.1", "generated_at": "now", "entries": [],
        "rankings": rank_results(entries), "failed": [], "rejected": [],
    }  # fmt: skip
    text = render_markdown(doc)
    assert text.count("## mortality_in_hospital · base") == 2
    assert "folds 1 · seeds 0 · ≤15 epochs" in text
    assert "folds 1-5 · seeds 0,1,2" in text


# --------------------------------------------------------------------------------------------
# 5. One metric vocabulary for selection and scoring


def test_selection_follows_the_registry_direction():
    from harness.metrics.registry import METRICS, main_metric_for, metrics_for
    from harness.models.train import selection_score

    y = np.array([0] * 80 + [1] * 20, dtype=float)
    # perfectly ranked but uncalibrated (AUPRC 1, Brier ~0.2) vs calibrated with some errors
    ranked = np.where(y == 1, 0.52, 0.48) + np.linspace(0, 0.001, 100)
    rng = np.random.default_rng(0)
    calibrated = np.clip(np.where(y == 1, 0.8, 0.05) + 0.05 * rng.standard_normal(100), 0, 1)
    calibrated[:3] = 0.9  # three confident false positives
    brier = METRICS.get("brier")
    assert brier(y, calibrated) < brier(y, ranked)
    assert METRICS.get("auprc")(y, ranked) > METRICS.get("auprc")(y, calibrated)
    task = TaskInfo("t", "binary", ("y",), None, "brier")
    assert main_metric_for("binary", "brier") == "brier"
    assert selection_score(task, y, calibrated) > selection_score(task, y, ranked)

    # every registered metric selects with its own value (signed by its direction)
    data = {
        "binary": (y, calibrated, None),
        "multilabel": (np.stack([y, y[::-1]], 1), np.stack([calibrated, ranked[::-1]], 1), None),
        "multiclass": (np.arange(100) % 3, np.eye(3)[(np.arange(100) + (np.arange(100) % 7 == 0))
                                                      % 3] * 0.8 + 0.2 / 3, 3),
    }  # fmt: skip
    for kind, (yy, pp, k) in data.items():
        labels = ("a", "b") if kind == "multilabel" else ("a",)
        for name in metrics_for(kind):
            metric = METRICS.get(name)
            sign = 1.0 if metric.higher_is_better else -1.0
            info = TaskInfo("t", kind, labels, k, name)
            assert selection_score(info, yy, pp) == pytest.approx(sign * metric(yy, pp)), name


def test_unknown_main_metric_is_rejected_when_the_task_loads(tmp_path, monkeypatch):
    from harness.cohort.spec import load_task
    from harness.errors import SpecError
    from harness.metrics.registry import main_metric_for

    tasks = tmp_path / "tasks"
    shutil.copytree(REPO / "tasks", tasks)
    path = tasks / "mortality_icu.yaml"
    path.write_text(path.read_text().replace("main_metric: auroc", "main_metric: auroc_typo"))
    monkeypatch.setenv("HARNESS_TASKS", str(tasks))
    with pytest.raises(SpecError) as err:
        load_task("mortality_icu")
    message = str(err.value)
    assert "mortality_icu.yaml" in message and "main_metric" in message
    assert "auroc_typo" in message and "auprc" in message and "brier" in message
    load_task("mortality_in_hospital")  # the others still load
    with pytest.raises(KeyError, match="auroc_typo"):
        main_metric_for("binary", "auroc_typo")


# --------------------------------------------------------------------------------------------
# 6. Folds come from the cohort


def test_folds_come_from_the_cohort(tiny_pipeline, tmp_path, monkeypatch):
    from harness.models.data import prepare_split

    fs = FeatureSet.synthetic(n=2000, seed=1, kind="binary")
    ten = (fs.subject_id % 10 + 1).astype(np.int64)
    fs = fs.replace(fold=ten)
    assert fs.n_folds == 10
    for k in (7, 10):
        train, val, test = fs.split(k)
        assert set(ten[test]) == {k} and set(ten[val]) == {k % 10 + 1}
        assert len(train) + len(val) + len(test) == len(fs)
    train, val, test = split_indices(ten, 7)
    assert set(ten[val]) == {8}
    prepare_split(fs, 10)
    # a cohort built with n_folds: 10 is evaluated on its 10 folds by default
    from harness.evaluate.plan import resolve_folds
    from harness.evaluate.run import EvalSettings

    tasks = tmp_path / "tasks"
    shutil.copytree(REPO / "tasks", tasks)
    spec = tasks / "cohort.yaml"
    spec.write_text(spec.read_text().replace("n_folds: 5", "n_folds: 10"))
    monkeypatch.setenv("HARNESS_TASKS", str(tasks))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    copy_dataset(tiny_pipeline, tmp_path / "cache")  # the generated data, no cohorts yet
    assert main(["cohort", "build"]) == 0
    from harness.cohort import load_cohort

    cohort = load_cohort("base")
    assert int(cohort.stays["fold"].max()) == 10
    settings = resolve_folds(EvalSettings(), {"base": cohort})
    assert settings.folds == tuple(range(1, 11))
    assert EvalSettings().folds is None  # nothing hard-codes five


# --------------------------------------------------------------------------------------------
# 8. The CareBench-compatible profile


def test_carebench_profile_settings():
    from harness.errors import UsageError
    from harness.evaluate.run import PROFILES, EvalSettings, entry_name

    honest = EvalSettings()
    assert honest.protocol == "honest" and honest.seeds == (0, 1, 2)
    cb = EvalSettings(protocol="carebench")
    assert cb.seeds == (42, 123, 1234)
    assert "mortality_icu" in cb.tasks and "mortality_in_hospital" not in cb.tasks
    profile = PROFILES["carebench"]
    assert profile.selection == {"binary": "auprc", "multilabel": "auprc_macro",
                                 "multiclass": "accuracy"}  # fmt: skip
    assert profile.threshold == 0.5
    assert EvalSettings.quick(protocol="carebench").seeds == (42,)
    assert entry_name("ehr_lstm", cb) == "ehr_lstm.carebench"
    assert entry_name("ehr_lstm", honest) == "ehr_lstm"
    with pytest.raises(UsageError, match="protocol"):
        EvalSettings(protocol="nonsense")
    with pytest.raises(UsageError, match="mortality_icu"):
        EvalSettings(protocol="carebench", tasks=("mortality_in_hospital",))


@pytest.mark.slow
def test_carebench_and_honest_entries_are_scored_and_boarded_apart(
    store_cache, monkeypatch, capsys
):
    monkeypatch.setenv("HARNESS_CACHE", str(store_cache))
    from harness.evaluate.run import read_unit
    from harness.metrics.registry import METRICS
    from harness.models.data import load_feature_set

    args = ["--quick", "-t", "mortality_icu", "-c", "base", "--encoder", "test_tiny",
            "--max-epochs", "3", "--no-cross-cohort", "--n-resamples", "50", "--trusted",
            "--scenario", "cxr_missing_mcar"]  # fmt: skip
    for sub in ("ehr_lstm", "cxr_probe"):
        assert main(["evaluate", f"submissions/{sub}", *args]) == 0
        assert main(["evaluate", f"submissions/{sub}", *args, "--protocol", "carebench"]) == 0
    results = store_cache / "results" / "synthetic-default"
    honest = json.loads((results / "ehr_lstm/result.json").read_text())
    cb = json.loads((results / "ehr_lstm.carebench/result.json").read_text())
    assert honest["provenance"]["protocol"]["profile"] == "honest"
    assert cb["provenance"]["protocol"]["profile"] == "carebench"
    assert cb["provenance"]["seeds"] == [42]
    block = cb["tasks"]["mortality_icu"]["base"]
    assert block["main_metric"] == "auprc"
    assert block["fairness"]["threshold_rule"] == "fixed_0.5"
    assert honest["tasks"]["mortality_icu"]["base"]["main_metric"] == "auroc"
    # the carebench probe is compared with the carebench EHR reference only
    probe = json.loads((results / "cxr_probe.carebench/result.json").read_text())
    assert probe["tasks"]["mortality_icu"]["base"]["references"]["ehr_only"] == "ehr_lstm.carebench"

    # checkpoint selection used validation AUPRC under carebench, AUROC under honest
    fs = load_feature_set("base", "mortality_icu", encoder="test_tiny")
    for entry, metric in (("ehr_lstm.carebench", "auprc"), ("ehr_lstm", "auroc")):
        (unit,) = (results / entry / "predictions/mortality_icu").glob("base-*/*/*.parquet")
        frame, meta = read_unit(unit)
        val = frame[frame["part"] == "val"]
        pos = pd.Index(fs.stay_id).get_indexer(val["stay_id"].to_numpy())
        expected = METRICS.get(metric)(fs.y[pos], val["prob_0"].to_numpy())
        assert meta["val_score"] == pytest.approx(expected, abs=1e-6)

    capsys.readouterr()
    assert main(["leaderboard", "--summary"]) == 0
    out = capsys.readouterr().out
    board = json.loads((store_cache / "leaderboard/leaderboard.json").read_text())
    tables = [t for t in board["rankings"] if t["task"] == "mortality_icu"]
    profiles = sorted(t["protocol"]["profile"] for t in tables)
    assert profiles == ["carebench", "honest"]
    for table in tables:
        names = {r["name"] for r in table["rows"]}
        carebench = table["protocol"]["profile"] == "carebench"
        assert all(n.endswith(".carebench") == carebench for n in names)
    assert "carebench" in out and "honest" in out
    assert "Conclusions that change between the honest and carebench profiles" in out
