"""`harness demo` end to end on a tiny default dataset (what `make demo` runs, scaled down)."""

from __future__ import annotations

import json

import pytest

from harness.cli.main import main


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_demo_runs_every_stage_and_prints_the_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    args = ["demo", "--n-patients", "300", "-t", "mortality_in_hospital"]
    assert main([*args, "-s", "ehr_lstm", "-s", "cxr_probe", "--folds", "1,2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for stage in (
        "1. synthetic",
        "2. cohorts",
        "3. encode",
        "4. leak audit",
        "5. evaluate",
        "6. leaderboard",
        "7. report",
    ):
        assert stage in out
    assert "folds 1,2, seeds 0" in out
    for cohort in ("base", "matched"):  # the audit's one-line verdict
        assert f"audit of synthetic-default/{cohort} (" in out
    assert out.count("): passed") >= 2
    assert "mortality_in_hospital · base · auroc" in out
    assert "Robustness to missing CXR" in out and "Lowest-TPR group" in out
    board = json.loads((tmp_path / "leaderboard" / "leaderboard.json").read_text())
    names = {e["name"] for e in board["entries"]}
    assert names == {"ehr_lstm", "cxr_probe"}
    assert all(e["provenance"]["folds"] == [1, 2] for e in board["entries"])
    rows = [r for t in board["rankings"] for r in t["rows"]]
    assert rows and all(r["audit"] == "passed" for r in rows)
    # the demo ends with the report; with no fusion entry it says so instead of answering
    report = (tmp_path / "leaderboard" / "report.md").read_text()
    assert "No answers: the report needs a fusion entry" in report
    assert "Modality reliance" in out  # the leaderboard's reliance table
    # a second run reuses everything: nothing is trained again
    assert main([*args, "-s", "ehr_lstm", "--folds", "1,2"]) == 0
    assert "0 trained, 4 reused" in " ".join(capsys.readouterr().out.split())
    assert main([*args, "--folds", "1,x"]) == 2


def test_demo_refuses_an_unknown_submission_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["demo", "-s", "late_fusio"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown submission(s) 'late_fusio' (did you mean 'late_fusion'?)" in err
    assert not (tmp_path / "datasets").exists()  # nothing was generated


def test_evaluate_of_a_missing_folder_fails_before_drawing_a_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert "no submission.yaml found" in err
    assert "units" not in out  # no progress bar was drawn first
