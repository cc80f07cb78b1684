"""Declarative tasks: every task file's metadata, the label rules on hand-made stays, the data
source registry, and a new task added as one YAML file (built, checked against pandas, evaluated).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli.main import main
from harness.cohort.labels import (
    LABEL_RULES,
    GivenLabels,
    LabelUnavailableError,
    StayEvents,
    label_stays,
)
from harness.cohort.spec import TaskSpec, list_tasks, load_task
from harness.config import REPO_ROOT
from harness.errors import SpecError, UsageError
from harness.metrics.registry import TASK_KINDS, metrics_for

# ------------------------------------------------------------------ every registered task


@pytest.mark.parametrize("name", list_tasks())
def test_task_metadata(name):
    task = load_task(name)
    assert isinstance(task, TaskSpec) and task.name == name and task.version >= 1
    assert task.kind in TASK_KINDS
    # one vocabulary: the YAML names the scorer's registered metric, not an alias
    assert task.main_metric in metrics_for(task.kind), task.main_metric
    assert task.label_columns and all(isinstance(c, str) and c for c in task.label_columns)
    assert task.description.strip()
    assert task.rule.kind in LABEL_RULES
    assert task.kind in LABEL_RULES.get(task.rule.kind).task_kinds
    scored = [c.name for c in task.rule.columns() if c.role != "value"]
    assert scored == task.label_columns
    if task.kind == "multiclass":
        assert task.n_classes == len(task.class_names) >= 2
    else:
        assert len(task.label_names) == len(task.label_columns)


def _tasks_copy(tmp_path: Path, monkeypatch, **extra: str) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for f in (REPO_ROOT / "tasks").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    for name, text in extra.items():
        (folder / f"{name}.yaml").write_text(text)
    monkeypatch.setenv("HARNESS_TASKS", str(folder))
    return folder


BINARY_HEAD = """name: {name}
version: 1
kind: binary
main_metric: auroc
label_columns: [{name}]
description: a test task
"""


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("label: {rule: death_in_windw}", r"unknown label rule 'death_in_windw'.*death_in_window"),
        (
            "label: {rule: death_in_window, window: {start: intime, end: outime}, "
            "evidence: [admission_death_time]}",
            r"label.window.end: 'outime' is not an anchor time",
        ),
        (
            "label: {rule: death_in_window, window: {start: intime, end: outtime}, "
            "evidence: [deathtime]}",
            r"unknown death record 'deathtime'; valid: admission_death_time",
        ),
        (
            "label: {rule: death_in_window, window: {start: intime, end: outtime}, "
            "evidence: [patient_death_date], when: now}",
            r"unknown key 'when' in label",
        ),
        ("label: {rule: duration_bins, start: intime, end: outtime}", r"gives multiclass labels"),
        ("label: {rule: code_list, codes: {other: {icd9: ['5845']}}}", r"map each label column"),
    ],
)
def test_bad_label_declarations_name_file_and_field(tmp_path, monkeypatch, label, message):
    _tasks_copy(tmp_path, monkeypatch, bad=BINARY_HEAD.format(name="bad") + label + "\n")
    with pytest.raises(SpecError, match=message) as err:
        load_task("bad")
    assert "bad.yaml" in str(err.value)


def test_task_without_label_declaration_is_rejected(tmp_path, monkeypatch):
    _tasks_copy(tmp_path, monkeypatch, bare=BINARY_HEAD.format(name="bare"))
    with pytest.raises(SpecError, match=r"bare.yaml: missing key\(s\) 'label'"):
        load_task("bare")


# ------------------------------------------------------------------ the rules on hand-made stays


def _rule(text: str, tmp_path: Path, monkeypatch, name: str = "t"):
    _tasks_copy(tmp_path, monkeypatch, **{name: BINARY_HEAD.format(name=name) + text})
    return load_task(name)


T = pd.Timestamp


def _events(evidence: set[str], **cols) -> StayEvents:
    n = len(next(iter(cols.values())))
    frame = pd.DataFrame(
        {
            "stay_id": np.arange(n),
            "hadm_id": np.arange(n) + 100,
            "intime": [T("2150-01-01 10:00")] * n,
            "outtime": [T("2150-01-04 10:00")] * n,
            "prediction_time": [T("2150-01-03 10:00")] * n,
            "admittime": [T("2150-01-01 08:00")] * n,
            "dischtime": [T("2150-01-10 12:00")] * n,
            **{e: pd.Series([pd.NaT] * n, dtype="datetime64[ns]") for e in evidence},
            **cols,
        }
    )
    return StayEvents("hand-made", frame, frozenset(evidence))


def test_death_in_window_first_record_decides(tmp_path, monkeypatch):
    icu = _rule(
        "label:\n  rule: death_in_window\n  window: {start: intime, end: outtime}\n"
        "  evidence: [admission_death_time, patient_death_date]\n",
        tmp_path,
        monkeypatch,
    )
    nat = pd.NaT
    events = _events(
        {"admission_death_time", "patient_death_date"},
        admission_death_time=[T("2150-01-04 10:00"), T("2150-01-05"), nat, nat, nat],
        # a date counts by calendar day: the 4th (outtime's day) is in, even after 10:00
        patient_death_date=[nat, T("2150-01-04"), T("2150-01-04"), T("2150-01-05"), nat],
    )
    got = label_stays([icu], events).frame["t"].tolist()
    # stay 1: the recorded death time (outside) decides; its dod inside is not consulted
    assert got == [1, 0, 1, 0, 0]


def test_admission_records_lie_inside_their_admission(tmp_path, monkeypatch):
    hosp = _rule(
        "label:\n  rule: death_in_window\n  window: {start: null, end: dischtime}\n"
        "  evidence: [admission_death_time, admission_expired, patient_death_time]\n",
        tmp_path,
        monkeypatch,
    )
    nat = pd.NaT
    events = _events(
        {"admission_death_time", "admission_expired", "patient_death_time"},
        # a recorded in-hospital death after the administrative discharge time still counts
        admission_death_time=[T("2150-01-11"), nat, nat, nat],
        admission_expired=[False, True, False, False],
        # a patient-level death time must not be after the discharge
        patient_death_time=[nat, nat, T("2150-01-10 12:00"), T("2150-01-10 12:01")],
    )
    assert label_stays([hosp], events).frame["t"].tolist() == [1, 1, 1, 0]


def test_shifted_bounds_and_unavailable_sources(tmp_path, monkeypatch):
    week = _rule(
        "label:\n  rule: death_in_window\n  window: {start: intime, end: intime + 7d}\n"
        "  evidence: [patient_death_time]\n",
        tmp_path,
        monkeypatch,
    )
    assert str(week.rule.window) == "[intime, intime + 168h]"
    events = _events(
        {"patient_death_time"},
        patient_death_time=[T("2150-01-08 10:00"), T("2150-01-08 10:01"), T("2150-01-01 09:59")],
    )
    assert label_stays([week], events).frame["t"].tolist() == [1, 0, 0]
    with pytest.raises(LabelUnavailableError, match=r"task 't'.*cannot be labelled from .*"):
        week.rule.evaluate(_events({"patient_death_date"}, patient_death_date=[pd.NaT]))
    given = GivenLabels("a folder", pd.DataFrame({"icu": [1]}), deaths={"[intime, outtime]": "icu"})
    with pytest.raises(LabelUnavailableError, match=r"gives only death in \[intime, outtime\]"):
        week.rule.from_given(given)


def test_duration_bins_and_code_lists():
    los = load_task(next(n for n in list_tasks() if load_task(n).rule.kind == "duration_bins"))
    first = los.bin_edges_days[0]
    days = [first - 0.5, first, los.bin_edges_days[-1] + 1, np.nan]
    out = [T("2150-01-01 10:00") + pd.Timedelta(days=d) if d == d else pd.NaT for d in days]
    events = _events(set(), outtime=out)
    frame = los.rule.evaluate(events)
    cls = frame[los.label_columns[0]]
    assert str(cls.dtype) == "Int8"
    assert cls.isna().tolist() == [True, False, False, True]
    assert cls[1] == 0 and cls[2] == len(los.bin_edges_days) - 1

    codes = next(load_task(n) for n in list_tasks() if load_task(n).rule.kind == "code_list")
    lst = codes.rule.lists[0]
    dx = pd.DataFrame(
        {
            "hadm_id": [100, 101, 102],
            "icd_version": [9, 10, 10],
            # the right code under the wrong version does not count
            "icd_code": [lst.icd9[0], lst.icd10[0], lst.icd9[0]],
        }
    )
    events = _events(set(), intime=[T("2150-01-01")] * 4)
    events.diagnoses = dx
    got = codes.rule.evaluate(events)[lst.id].tolist()
    assert got == [1, 1, 0, 0]


# ------------------------------------------------------------------ the data source registry


def test_source_registry_detects_folders_and_spells_rebuilds(tmp_path):
    from harness.cli.cohort import _choose_source
    from harness.cohort.datasources import DATA_SOURCES, detect_source
    from harness.cohort.load import rebuild_command

    assert set(DATA_SOURCES) >= {"mimic", "clif", "carebench"}
    (tmp_path / "ds/mimic-iv/hosp").mkdir(parents=True)
    (tmp_path / "ds/mimic-iv/icu").mkdir()
    (tmp_path / "clif").mkdir()
    (tmp_path / "clif/clif_adt.parquet").write_bytes(b"")
    (tmp_path / "cb/splits/fold1").mkdir(parents=True)
    assert detect_source(tmp_path / "ds").name == "mimic"
    assert detect_source(tmp_path / "ds/mimic-iv").name == "mimic"
    assert detect_source(tmp_path / "clif").name == "clif"
    assert detect_source(tmp_path / "cb").name == "carebench"
    with pytest.raises(UsageError, match="no known source layout.*--carebench"):
        detect_source(tmp_path)

    none = {"--mimic-iv": None, "--clif": None, "--carebench": None, "--source": None}
    images = {"--mimic-cxr": None, "--cxr-root": None}
    assert _choose_source(none, images)[0].name == "mimic"
    chosen, path, _ = _choose_source({**none, "--source": tmp_path / "cb"}, images)
    assert chosen.name == "carebench" and path == tmp_path / "cb"
    chosen, path, _ = _choose_source({**none, "--source": Path("clif")}, images)
    assert chosen.name == "clif" and path is None  # a source name: its default data
    with pytest.raises(UsageError, match="give one source"):
        _choose_source({**none, "--clif": Path("demo"), "--carebench": tmp_path}, images)
    with pytest.raises(UsageError, match=r"--mimic-cxr needs --mimic-iv \(the default"):
        _choose_source(none, {**images, "--mimic-cxr": tmp_path})
    with pytest.raises(UsageError, match="--cxr-root needs --carebench"):
        _choose_source({**none, "--clif": Path("demo")}, {**images, "--cxr-root": tmp_path})

    src = {"kind": "carebench", "carebench": "/d/cb", "mimic_cxr": "/d/jpg"}
    cmd = rebuild_command({"source": src, "dataset": "x"})
    assert cmd == "harness cohort build --carebench /d/cb --cxr-root /d/jpg --dataset x"
    assert rebuild_command({"source": {"kind": "clif", "clif": "/c"}}) == (
        "harness cohort build --clif /c"
    )
    assert "original build" in rebuild_command({"source": {"kind": "meds"}})


# ------------------------------------------------------------------ a new task = one YAML file

MORTALITY_7D = """name: mortality_7d
version: 1
kind: binary
main_metric: auroc
label_columns: [mortality_7d]
label_names: [Death within 7 days of ICU admission]
label:
  rule: death_in_window
  window: {start: intime, end: intime + 168h}
  evidence: [admission_death_time, admission_expired, patient_death_time, patient_death_date]
description: >-
  Binary: 1 when the patient dies within 7 days (168 h) of ICU admission, in hospital or after
  discharge, judged on the first death record the stay has.
"""

TOBACCO = """name: tobacco_use
version: 1
kind: binary
main_metric: auroc
label_columns: [tobacco_use]
label:
  rule: code_list
  codes:
    tobacco_use: {icd9: ['305.1', 'V15.82'], icd10: [F17210, Z87891]}
description: >-
  Binary: 1 when a diagnosis of the stay's admission records tobacco use or a history of it.
"""


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline_copy, tmp_path_factory):
    """The session's tiny pipeline, copied, its cohorts rebuilt with two extra task files (the
    generated data and the CXR features are reused; the cohorts and EHR features are new)."""
    folder = tmp_path_factory.mktemp("declared-tasks")
    for f in (REPO_ROOT / "tasks").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    (folder / "mortality_7d.yaml").write_text(MORTALITY_7D)
    (folder / "tobacco_use.yaml").write_text(TOBACCO)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_TASKS", str(folder))
        assert main(["cohort", "build"]) == 0
        assert main(["encode", "-e", "test_tiny"]) == 0
        yield tiny_pipeline_copy


def _reference(iv: Path, stays: pd.DataFrame) -> pd.DataFrame:
    """The two new labels computed from the MIMIC CSV files, stay by stay."""
    adm = pd.read_csv(iv / "hosp/admissions.csv.gz", parse_dates=["dischtime", "deathtime"])
    pat = pd.read_csv(iv / "hosp/patients.csv.gz")
    dx = pd.read_csv(iv / "hosp/diagnoses_icd.csv.gz", dtype={"icd_code": str})
    adm = adm.set_index("hadm_id")
    dod = pd.to_datetime(pat.set_index("subject_id")["dod"].astype("string").str[:10])
    codes = {9: {"3051", "V1582"}, 10: {"F17210", "Z87891"}}
    hits = {
        h
        for h, c, v in zip(dx.hadm_id, dx.icd_code, dx.icd_version, strict=True)
        if c.replace(".", "").strip().upper() in codes[v]
    }
    rows = []
    for s in stays.itertuples():
        a = adm.loc[s.hadm_id]
        start, end = s.intime, s.intime + pd.Timedelta(days=7)
        if pd.notna(a.deathtime):
            died = start <= a.deathtime <= end
        elif a.hospital_expire_flag == 1 and pd.notna(a.dischtime):
            died = start <= a.dischtime <= end
        elif pd.notna(dod.get(s.subject_id)):
            died = start.normalize() <= dod[s.subject_id] <= end.normalize()
        else:
            died = False
        rows.append((s.stay_id, int(died), int(s.hadm_id in hits)))
    return pd.DataFrame(rows, columns=["stay_id", "mortality_7d", "tobacco_use"])


def test_new_task_files_are_built_and_match_pandas(pipeline):
    from harness.cohort import load_cohort

    assert {"mortality_7d", "tobacco_use"} <= set(list_tasks())
    base = load_cohort("base")
    stays = base.stays.sort_values("stay_id").reset_index(drop=True)
    assert {"mortality_7d", "tobacco_use"} <= set(base.manifest["label_columns"])
    want = _reference(pipeline / "datasets/synthetic-default/mimic-iv", stays)
    for col in ("mortality_7d", "tobacco_use"):
        assert stays[col].dtype == np.int8
        assert stays[col].tolist() == want[col].tolist(), col
        assert 0 < stays[col].sum() < len(stays), col
    assert base.manifest["label_prevalence"]["mortality_7d"] == pytest.approx(
        stays["mortality_7d"].mean()
    )


def test_new_task_is_evaluated(pipeline):
    from harness.evaluate.run import EvalSettings, evaluate

    settings = EvalSettings.quick(
        tasks=("mortality_7d",),
        executor="local",
        encoder="test_tiny",
        max_epochs=2,
        cohorts=("base",),
        cross_cohort=False,
        n_resamples=20,
    )
    outcome = evaluate(REPO_ROOT / "submissions/ehr_lstm", settings)
    block = outcome.result["tasks"]["mortality_7d"]["base"]
    assert block["main_metric"] == "auroc"
    assert math.isfinite(block["metrics"]["auroc"]["value"])


@pytest.mark.slow
def test_carebench_cannot_provide_a_new_death_window(pipeline, tmp_path):
    from harness.cohort import load_cohort
    from harness.cohort.carebench import build_carebench_cohorts, export_carebench

    folder = export_carebench(load_cohort("base"), tmp_path / "cb")
    out = build_carebench_cohorts(folder, dataset="cb-declared")
    manifest = load_cohort(path=out["base"]).manifest
    reasons = manifest["tasks_unavailable"]
    assert set(reasons) == {"mortality_7d", "mortality_in_hospital"}
    assert "death in [intime, intime + 168h]" in reasons["mortality_7d"]
    assert "gives only death in [intime, outtime]" in reasons["mortality_7d"]
    assert "mortality_7d" in manifest["labels_unavailable"]
    # the code list is found by its column name in the exported folder
    stays = load_cohort(path=out["base"]).stays.set_index("stay_id").sort_index()
    src = load_cohort("base").stays.set_index("stay_id").sort_index()
    assert stays["tobacco_use"].tolist() == src["tobacco_use"].tolist()


def test_shifted_admission_anchors_bound_admission_death_records(tmp_path, monkeypatch):
    def window(text: str):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))  # a fresh tasks folder each
        folder.mkdir()
        return _rule(
            f"label:\n  rule: death_in_window\n  window: {text}\n"
            "  evidence: [admission_death_time, admission_expired]\n",
            folder,
            monkeypatch,
        )

    deaths = [T("2150-01-02 08:00"), T("2150-01-09"), T("2150-01-11"), pd.NaT]
    events = _events(
        {"admission_death_time", "admission_expired"},
        admission_death_time=deaths,
        admission_expired=[d is not pd.NaT for d in deaths],
    )
    first_72h = window("{start: admittime, end: admittime + 72h}")
    assert label_stays([first_72h], events).frame["t"].tolist() == [1, 0, 0, 0]
    # a death recorded during the admission is not a death after discharge; one recorded after
    # the administrative discharge time is
    after = window("{start: dischtime, end: dischtime + 720h}")
    assert label_stays([after], events).frame["t"].tolist() == [0, 0, 1, 0]
    # the admission's own record counts even when written after dischtime (MIMIC-IV does this)
    in_hospital = window("{start: null, end: dischtime}")
    assert label_stays([in_hospital], events).frame["t"].tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("column", ["insurance", "age", "fold", "has_cxr"])
def test_a_label_may_not_shadow_a_stay_column(tmp_path, monkeypatch, column):
    head = BINARY_HEAD.format(name="t").replace("label_columns: [t]", f"label_columns: [{column}]")
    label = "label:\n  rule: death_in_window\n  window: {start: intime, end: outtime}\n"
    _tasks_copy(tmp_path, monkeypatch, t=head + label + "  evidence: [admission_death_time]\n")
    with pytest.raises(SpecError, match=rf"(?s)\['{column}'\] would overwrite stays.parquet"):
        load_task("t")
