"""Death windows on admission anchors and label names that would shadow stay columns."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cohort.labels import StayEvents, label_stays
from harness.cohort.spec import load_task
from harness.config import REPO_ROOT
from harness.errors import SpecError

HEAD = """name: {name}
version: 1
kind: binary
main_metric: auroc
label_columns: [{column}]
description: a test task
"""
T = pd.Timestamp


def _task(tmp_path: Path, monkeypatch, window: str, column: str = "t"):
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    for f in (REPO_ROOT / "tasks").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    text = HEAD.format(name="t", column=column) + (
        f"label:\n  rule: death_in_window\n  window: {window}\n"
        "  evidence: [admission_death_time, admission_expired]\n"
    )
    (folder / "t.yaml").write_text(text)
    monkeypatch.setenv("HARNESS_TASKS", str(folder))
    return load_task("t")


def _events(deaths: list) -> StayEvents:
    n = len(deaths)
    frame = pd.DataFrame(
        {
            "stay_id": np.arange(n),
            "hadm_id": np.arange(n) + 100,
            "intime": [T("2150-01-01 10:00")] * n,
            "outtime": [T("2150-01-04 10:00")] * n,
            "prediction_time": [T("2150-01-03 10:00")] * n,
            "admittime": [T("2150-01-01 08:00")] * n,
            "dischtime": [T("2150-01-10 12:00")] * n,
            "admission_death_time": pd.Series(deaths, dtype="datetime64[ns]"),
            "admission_expired": [d is not pd.NaT for d in deaths],
        }
    )
    return StayEvents("hand-made", frame, frozenset({"admission_death_time", "admission_expired"}))


def test_shifted_admission_anchors_bound_admission_death_records(tmp_path, monkeypatch):
    deaths = [T("2150-01-02 08:00"), T("2150-01-09"), T("2150-01-11"), pd.NaT]
    first_72h = _task(tmp_path, monkeypatch, "{start: admittime, end: admittime + 72h}")
    assert label_stays([first_72h], _events(deaths)).frame["t"].tolist() == [1, 0, 0, 0]
    after = _task(tmp_path, monkeypatch, "{start: dischtime, end: dischtime + 720h}")
    # a death recorded during the admission is not a death after discharge; one recorded after
    # the administrative discharge time is
    assert label_stays([after], _events(deaths)).frame["t"].tolist() == [0, 0, 1, 0]
    in_hospital = _task(tmp_path, monkeypatch, "{start: null, end: dischtime}")
    # the admission's own record counts even when written after dischtime (MIMIC-IV does this)
    assert label_stays([in_hospital], _events(deaths)).frame["t"].tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("column", ["insurance", "age", "fold", "has_cxr"])
def test_a_label_may_not_shadow_a_stay_column(tmp_path, monkeypatch, column):
    with pytest.raises(SpecError, match=rf"(?s)\['{column}'\] would overwrite stays.parquet"):
        _task(tmp_path, monkeypatch, "{start: intime, end: outtime}", column=column)
