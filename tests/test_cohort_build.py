"""The cohort builder against an independent plain-pandas computation and hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pipeline_fixtures import copy_dataset

from harness.cohort import load_cohort
from harness.cohort.build import build_cohorts
from harness.cohort.folds import split_masks
from harness.cohort.spec import load_cohort_spec, load_phenotypes, load_variables
from harness.errors import InputError

# ------------------------------------------------------------------ a hand-made MIMIC-shaped copy


def write_mini(root: Path) -> Path:
    """Seven patients with planted edge cases (see the expectations in test_planted_cases)."""
    iv = root / "mimic-iv"
    cxr = root / "mimic-cxr-jpg"
    (iv / "hosp").mkdir(parents=True)
    (iv / "icu").mkdir()
    cxr.mkdir()

    def w(df, rel):
        df.to_csv(iv / f"{rel}.csv.gz", index=False)

    # subjects: 10 adult alive long stay; 11 minor; 12 short stay; 13 died at 30 h;
    # 14 died in ICU at 60 h; 15 died on ward after ICU; 16 LoS 20 days
    w(
        pd.DataFrame(
            {
                "subject_id": [10, 11, 12, 13, 14, 15, 16],
                "gender": list("MFMFMFM"),
                "anchor_age": [50, 17, 60, 70, 80, 45, 30],
                "anchor_year": [2150] * 7,
                "anchor_year_group": ["2008 - 2010"] * 7,
                "dod": [None, None, None, "2150-01-02", "2150-01-03", "2150-01-10", None],
            }
        ),
        "hosp/patients",
    )
    adm = pd.DataFrame(
        {
            "subject_id": [10, 11, 12, 13, 14, 15, 16],
            "hadm_id": [100, 110, 120, 130, 140, 150, 160],
            "admittime": ["2150-01-01 00:00:00"] * 7,
            "dischtime": ["2150-01-09 00:00:00"] * 4
            + ["2150-01-03 12:00:00", "2150-01-10 08:00:00", "2150-01-30 00:00:00"],
            "deathtime": [
                None,
                None,
                None,
                "2150-01-02 06:00:00",
                "2150-01-03 12:00:00",
                "2150-01-10 08:00:00",
                None,
            ],
            "admission_type": ["EW EMER."] * 7,
            "admit_provider_id": [None] * 7,
            "admission_location": [None] * 7,
            "discharge_location": [None] * 7,
            "insurance": ["Medicare"] * 7,
            "language": ["ENGLISH"] * 7,
            "marital_status": [None] * 7,
            "race": [
                "WHITE",
                "BLACK/AFRICAN AMERICAN",
                "HISPANIC/LATINO - PUERTO RICAN",
                "ASIAN - CHINESE",
                "UNKNOWN",
                "PORTUGUESE",
                "WHITE - OTHER EUROPEAN",
            ],
            "edregtime": [None] * 7,
            "edouttime": [None] * 7,
            "hospital_expire_flag": [0, 0, 0, 1, 1, 1, 0],
        }
    )
    w(adm, "hosp/admissions")
    w(
        pd.DataFrame(
            {
                "subject_id": [10, 11, 12, 13, 14, 15, 16],
                "hadm_id": [100, 110, 120, 130, 140, 150, 160],
                "stay_id": [1000, 1100, 1200, 1300, 1400, 1500, 1600],
                "first_careunit": ["MICU"] * 7,
                "last_careunit": ["MICU"] * 7,
                "intime": ["2150-01-01 00:30:00"] * 7,
                "outtime": [
                    "2150-01-04 00:30:00",
                    "2150-01-04 00:30:00",
                    "2150-01-02 12:00:00",
                    "2150-01-04 00:30:00",
                    "2150-01-04 00:30:00",
                    "2150-01-05 00:30:00",
                    "2150-01-21 12:30:00",
                ],
                "los": [3, 3, 1.5, 3, 3, 4, 20.5],
            }
        ),
        "icu/icustays",
    )
    w(
        pd.DataFrame(
            {
                "subject_id": [10, 10, 15, 16],
                "hadm_id": [100, 100, 150, 160],
                "seq_num": [1, 2, 1, 1],
                "icd_code": ["5845", "I10", "N179", "4019"],
                "icd_version": [9, 10, 10, 9],
            }
        ),
        "hosp/diagnoses_icd",
    )
    ce = pd.DataFrame(
        [
            # stay, time, item, value, valuenum
            (1000, "2150-01-01 00:40:00", 220045, "80", 80.0),
            (1000, "2150-01-01 01:10:00", 220045, "90", 90.0),
            (1000, "2150-01-01 00:50:00", 220045, "900", 900.0),  # out of range
            (1000, "2150-01-01 02:00:00", 223761, "98.6", 98.6),  # F
            (1000, "2150-01-01 02:10:00", 223762, "37.4", 37.4),
            (1000, "2150-01-01 03:00:00", 223835, "0.5", 0.5),  # fraction
            (1000, "2150-01-01 03:00:00", 220048, "SR (Sinus Rhythm)", None),
            (1000, "2150-01-01 03:20:00", 220048, "AF (Atrial Fibrillation)", None),
            (1000, "2150-01-03 00:30:00", 220045, "70", 70.0),  # at prediction time: excluded
            (1000, "2150-01-01 00:10:00", 220045, "70", 70.0),  # before intime: excluded
            (1000, "2150-01-03 00:29:00", 220045, "75", 75.0),  # hour 47
        ],
        columns=["stay_id", "charttime", "itemid", "value", "valuenum"],
    )
    ce.insert(0, "subject_id", ce.stay_id // 100)
    ce.insert(1, "hadm_id", ce.stay_id // 10)
    ce.insert(3, "caregiver_id", 1)
    ce.insert(5, "storetime", ce.charttime)
    ce["valueuom"] = None
    ce["warning"] = 0
    w(ce, "icu/chartevents")
    le = pd.DataFrame(
        {
            "labevent_id": [1, 2],
            "subject_id": [10, 10],
            "hadm_id": [None, None],
            "specimen_id": [1, 2],
            "itemid": [50912, 50912],
            "order_provider_id": [None, None],
            "charttime": ["2150-01-01 05:00:00", "2150-01-01 05:30:00"],
            "storetime": [None, None],
            "value": ["1.0", "2.0"],
            "valuenum": [1.0, 2.0],
            "valueuom": ["mg/dL"] * 2,
            "ref_range_lower": [None] * 2,
            "ref_range_upper": [None] * 2,
            "flag": [None] * 2,
            "priority": [None] * 2,
            "comments": [None] * 2,
        }
    )
    w(le, "hosp/labevents")
    oe = pd.DataFrame(
        {
            "subject_id": [10, 10, 10],
            "hadm_id": [100] * 3,
            "stay_id": [1000] * 3,
            "caregiver_id": [1] * 3,
            "charttime": ["2150-01-01 04:00:00", "2150-01-01 04:30:00", "2150-01-01 04:45:00"],
            "storetime": [None] * 3,
            "itemid": [226559, 226560, 227488],
            "value": [100.0, 50.0, 30.0],
            "valueuom": ["ml"] * 3,
        }
    )
    w(oe, "icu/outputevents")
    items = [
        220045,
        220050,
        220179,
        220051,
        220180,
        220052,
        220181,
        225312,
        220210,
        224690,
        220277,
        223762,
        223761,
        220621,
        225664,
        226537,
        223835,
        220739,
        223900,
        223901,
        226512,
        220048,
        226559,
        226560,
        226561,
        226584,
        226563,
        226564,
        226565,
        226567,
        226557,
        226558,
        227489,
        227488,
    ]
    w(
        pd.DataFrame(
            {
                "itemid": items,
                "label": "x",
                "abbreviation": "x",
                "linksto": "chartevents",
                "category": "x",
                "unitname": None,
                "param_type": "x",
                "lownormalvalue": None,
                "highnormalvalue": None,
            }
        ),
        "icu/d_items",
    )
    w(
        pd.DataFrame(
            {"itemid": [50912, 51006], "label": "x", "fluid": "Blood", "category": "Chem"}
        ),
        "hosp/d_labitems",
    )
    meta = pd.DataFrame(
        {
            "dicom_id": ["a1", "a2", "a3", "a4", "a5"],
            "subject_id": [10, 10, 10, 10, 16],
            "study_id": [501, 502, 503, 504, 505],
            "PerformedProcedureStepDescription": None,
            "ViewPosition": ["AP", "LATERAL", "PA", "AP", "PA"],
            "Rows": 64,
            "Columns": 64,
            "StudyDate": [21500101, 21500102, 21500102, 21500103, 21500101],
            "StudyTime": [13000.0, 120000.0, 5042.0, 3000.0, 3000.0],
            "ProcedureCodeSequence_CodeMeaning": None,
            "ViewCodeSequence_CodeMeaning": None,
            "PatientOrientationCodeSequence_CodeMeaning": None,
        }
    )
    meta.to_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    return root


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = write_mini(tmp_path_factory.mktemp("mini"))
    out = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset="mini", threads=1)
    return root, out


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Its own build, not the session's tiny pipeline: another seed and size than the default
    data (the pandas reference is checked on a second draw, under a non-default dataset name),
    and small, since the reference is computed row by row."""
    from harness.data import synthetic as synth

    root = tmp_path_factory.mktemp("synth") / "ds"
    synth.generate(root, n_patients=150, seed=3, image_size=64)
    out = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset="synth150", threads=1)
    return root, out


# ------------------------------------------------------------------ independent pandas reference
def reference(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stays with labels and CXR link, computed row by row in pandas from the CSV files."""
    spec = load_cohort_spec()
    iv = root / "mimic-iv"
    pat = pd.read_csv(iv / "hosp/patients.csv.gz")
    adm = pd.read_csv(iv / "hosp/admissions.csv.gz", parse_dates=["dischtime", "deathtime"])
    icu = pd.read_csv(iv / "icu/icustays.csv.gz", parse_dates=["intime", "outtime"])
    dx = pd.read_csv(iv / "hosp/diagnoses_icd.csv.gz", dtype={"icd_code": str})
    meta = pd.read_csv(root / "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz")
    s = icu.merge(pat, on="subject_id").merge(adm, on=["subject_id", "hadm_id"])
    s["age"] = s["anchor_age"] + s["intime"].dt.year - s["anchor_year"]
    s["pred"] = s["intime"] + pd.Timedelta(hours=spec.prediction_hours)
    death = s["deathtime"].where(
        s["deathtime"].notna(), s["dischtime"].where(s["hospital_expire_flag"] == 1)
    )
    dod = pd.to_datetime(s["dod"].astype("string").str[:10])
    alive = (death.isna() | (death >= s["pred"])) & (dod.isna() | (dod >= s["pred"].dt.normalize()))
    hours = (s["outtime"] - s["intime"]).dt.total_seconds() / 3600
    s = s[(s["age"] >= spec.min_age) & (hours >= spec.min_icu_hours) & alive].copy()
    s["mortality_in_hospital"] = (s["deathtime"].notna() | (s["hospital_expire_flag"] == 1)).astype(
        int
    )
    dod = pd.to_datetime(s["dod"].astype("string").str[:10])
    in_icu = (s["deathtime"] >= s["intime"]) & (s["deathtime"] <= s["outtime"])
    dod_in = (dod >= s["intime"].dt.normalize()) & (dod <= s["outtime"].dt.normalize())
    s["mortality_icu"] = np.where(s["deathtime"].notna(), in_icu, dod_in).astype(int)
    s["los_days"] = (s["outtime"] - s["intime"]).dt.total_seconds() / 86400
    s["los_class"] = np.digitize(s["los_days"], [3, 4, 5, 6, 7, 14])
    for p in load_phenotypes():
        codes = {9: set(p.icd9), 10: set(p.icd10)}
        hit = dx[
            [
                code.replace(".", "").upper() in codes[v]
                for code, v in zip(dx.icd_code, dx.icd_version, strict=True)
            ]
        ]
        s[p.id] = s["hadm_id"].isin(hit["hadm_id"]).astype(int)
    # CXR: latest AP/PA image in [intime - lookback, prediction time), ties by smallest dicom_id.
    t = meta["StudyTime"]
    sec = (t // 10000) * 3600 + (t // 100 % 100) * 60 + t % 100
    meta["time"] = pd.to_datetime(meta["StudyDate"].astype(str)) + pd.to_timedelta(sec, unit="s")
    meta = meta[meta["ViewPosition"].isin(spec.cxr_view_positions)]
    chosen, n_cand = {}, {}
    lookback = pd.Timedelta(hours=spec.cxr_lookback_hours)
    for row in s.itertuples():
        m = meta[
            (meta.subject_id == row.subject_id)
            & (meta.time >= row.intime - lookback)
            & (meta.time < row.pred)
        ]
        n_cand[row.stay_id] = len(m)
        if len(m):
            chosen[row.stay_id] = m.sort_values(["time", "dicom_id"], ascending=[False, True]).iloc[
                0
            ]["dicom_id"]
    s["dicom_id"] = s["stay_id"].map(chosen)
    s["n_cxr_candidates"] = s["stay_id"].map(n_cand)
    return s.sort_values("stay_id").reset_index(drop=True), meta


def reference_hourly(root: Path, stays: pd.DataFrame) -> pd.DataFrame:
    """Hourly values of the numeric chart/lab variables and urine output, in pandas."""
    iv = root / "mimic-iv"
    variables = {v.name: v for v in load_variables()}
    ce = pd.read_csv(iv / "icu/chartevents.csv.gz", parse_dates=["charttime"], low_memory=False)
    le = pd.read_csv(iv / "hosp/labevents.csv.gz", parse_dates=["charttime"], low_memory=False)
    oe = pd.read_csv(iv / "icu/outputevents.csv.gz", parse_dates=["charttime"])
    rows = []
    for st in stays.itertuples():
        for v in variables.values():
            if v.aggregate == "onehot_last":
                continue
            if v.source == "labevents":
                ev = le[(le.subject_id == st.subject_id) & le.itemid.isin(v.itemids)]
            elif v.source == "chartevents":
                ev = ce[(ce.stay_id == st.stay_id) & ce.itemid.isin(v.itemids)]
            else:
                ev = oe[(oe.stay_id == st.stay_id) & oe.itemid.isin(v.all_itemids)]
            ev = ev[(ev.charttime >= st.intime) & (ev.charttime < st.pred)].copy()
            if ev.empty:
                continue
            ev["hour"] = ((ev.charttime - st.intime).dt.total_seconds() // 3600).astype(int)
            col = "value" if v.source == "outputevents" else "valuenum"
            x = pd.to_numeric(ev[col], errors="coerce")
            if 223761 in v.itemids:
                x = x.where(ev.itemid != 223761, (x - 32) * 5 / 9)
            if v.name == "fio2":
                x = x.where(x > 1, x * 100)
            ev["x"] = x
            ev = ev[ev["x"].between(*v.range)]
            for hour, g in ev.groupby("hour"):
                if v.source == "outputevents":
                    urine = g[g.itemid.isin(v.itemids)]
                    if urine.empty:
                        continue
                    val = urine.x.sum() - g[g.itemid.isin(v.subtract_itemids)].x.sum()
                    if val < 0:
                        continue
                else:
                    val = g.x.mean()
                rows.append((st.stay_id, hour, v.name, val))
    return pd.DataFrame(rows, columns=["stay_id", "hour", "variable", "value"])


LABELS = ["mortality_in_hospital", "mortality_icu", "los_class"]


def check_against_reference(root: Path, out: dict[str, Path], n_hourly: int) -> None:
    ref, _ = reference(root)
    base = load_cohort(path=out["base"])
    got = base.stays.sort_values("stay_id").reset_index(drop=True)
    assert got["stay_id"].tolist() == ref["stay_id"].tolist(), "exclusions differ"
    pheno = [p.id for p in load_phenotypes()]
    assert len(pheno) == 25
    for col in [*LABELS, *pheno]:
        assert got[col].astype(int).tolist() == ref[col].tolist(), col
    np.testing.assert_allclose(got["los_days"], ref["los_days"])
    assert got["dicom_id"].fillna("").tolist() == ref["dicom_id"].fillna("").tolist()
    assert got["n_cxr_candidates"].tolist() == ref["n_cxr_candidates"].tolist()
    linked = got[got.has_cxr == 1]
    assert (linked["cxr_time_hours"] < 48).all() and (linked["cxr_time_hours"] >= 0).all()
    matched = load_cohort("matched", path=out["matched"])
    assert set(matched.stays.stay_id) == set(linked.stay_id)
    # hourly values for a sample of stays
    sample = ref.sample(min(n_hourly, len(ref)), random_state=0)
    want = reference_hourly(root, sample)
    h = base.hourly()
    h = h[h.stay_id.isin(sample.stay_id) & h.variable.isin(want.variable.unique())]
    merged = want.merge(h, on=["stay_id", "hour", "variable"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    np.testing.assert_allclose(merged.value_x, merged.value_y, rtol=1e-5, atol=1e-4)


def test_mini_matches_reference(mini):
    check_against_reference(*mini, n_hourly=10)


def test_synthetic_matches_reference(synthetic):
    check_against_reference(*synthetic, n_hourly=8)


def test_planted_cases(mini):
    """Hand-computed expectations for the planted edge cases of write_mini."""
    root, out = mini
    base = load_cohort(path=out["base"])
    s = base.stays.set_index("stay_id")
    assert sorted(s.index) == [1000, 1400, 1500, 1600]  # 1100 minor, 1200 short, 1300 died at 30 h
    funnel = {r["step"]: r["n_stays"] for r in base.manifest["funnel"]}
    assert funnel == {
        "icu_stays": 7,
        "linked_patient_and_admission": 7,
        "intime_not_after_outtime": 7,
        "age_between_0_and_120": 7,
        "age_at_least_18": 6,
        "icu_stay_at_least_48h": 5,
        "alive_at_prediction": 4,
    }
    assert s.loc[1400, ["mortality_in_hospital", "mortality_icu"]].tolist() == [1, 1]
    assert s.loc[1500, ["mortality_in_hospital", "mortality_icu"]].tolist() == [1, 0]
    assert s.loc[1600, "los_class"] == 6 and s.loc[1000, "los_class"] == 1
    assert s.loc[1000, ["acute_renal_failure", "essential_hypertension"]].tolist() == [1, 1]
    assert s.loc[1500, "race_group"] == "WHITE" and s.loc[1400, "race_group"] == "OTHER"
    # image a4 is exactly at the prediction time: never linked; a2 is LATERAL
    assert s.loc[1000, "dicom_id"] == "a3" and s.loc[1000, "n_cxr_candidates"] == 2
    assert s.loc[1000, "cxr_path"] == "files/p10/p10/s503/a3.jpg"
    assert s.loc[1000, "cxr_time_hours"] == pytest.approx(24 + (20 * 60 + 42) / 3600)
    h = base.hourly().set_index(["stay_id", "hour", "variable"])["value"]
    assert h[(1000, 0, "heart_rate")] == pytest.approx(85.0)  # 900 bpm dropped
    assert h[(1000, 47, "heart_rate")] == pytest.approx(75.0)
    assert (1000, 48, "heart_rate") not in h.index
    assert h[(1000, 1, "temperature")] == pytest.approx(37.2, abs=1e-4)  # 98.6 F and 37.4 C
    assert h[(1000, 2, "fio2")] == pytest.approx(50.0)
    assert h[(1000, 4, "urine_output")] == pytest.approx(20.0)  # 50 mL minus 30 mL irrigant
    assert h[(1000, 2, "rhythm_atrial_fibrillation")] == 1 and h[(1000, 2, "rhythm_sinus")] == 0
    assert base.manifest["dropped_values"]["heart_rate"] == 1
    assert 50983 in base.manifest["missing_itemids"]["sodium"]
    assert base.variables[-1] == "rhythm_other" and "urine_output" in base.variables


def test_folds_are_subject_disjoint(mini):
    check_folds(mini[1])


def test_synthetic_folds_are_subject_disjoint(synthetic):
    check_folds(synthetic[1])


def check_folds(out: dict[str, Path]) -> None:
    stays = load_cohort(path=out["base"]).stays
    assert stays.groupby("subject_id")["fold"].nunique().max() == 1
    splits = pd.read_csv(out["base"] / "splits.csv")
    assert list(splits.columns) == ["stay_id", "subject_id", "fold"]
    for k in range(1, 6):
        train, val, test = split_masks(stays["fold"].to_numpy(), k)
        assert not (train & val).any() and not (train & test).any() and not (val & test).any()
        subj = [set(stays.subject_id[m]) for m in (train, val, test)]
        assert not (subj[0] & subj[1]) and not (subj[0] & subj[2]) and not (subj[1] & subj[2])


def test_fingerprint_stable_and_label_sensitive(tmp_path, mini):
    root, out = mini
    again = build_cohorts(
        root / "mimic-iv", root / "mimic-cxr-jpg", dataset="mini", overwrite=True, threads=1
    )
    assert again == out
    fp = json.loads((out["base"] / "manifest.json").read_text())["fingerprint"]
    assert out["base"].name == f"base-{fp[:12]}"
    # change one label: subject 16's admission now ends in death after the ICU stay
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(root, copy)
    adm_path = copy / "mimic-iv/hosp/admissions.csv.gz"
    adm = pd.read_csv(adm_path)
    adm.loc[adm.subject_id == 16, ["deathtime", "hospital_expire_flag"]] = [
        "2150-01-29 00:00:00",
        1,
    ]
    adm.to_csv(adm_path, index=False)
    changed = build_cohorts(copy / "mimic-iv", copy / "mimic-cxr-jpg", dataset="mini2", threads=1)
    m2 = json.loads((changed["base"] / "manifest.json").read_text())
    m1 = json.loads((out["base"] / "manifest.json").read_text())
    assert m2["fingerprint"] != m1["fingerprint"]
    differing = [
        k
        for k in m1["fingerprint_parts"]
        if m1["fingerprint_parts"][k] != m2["fingerprint_parts"][k]
    ]
    assert differing == ["labels"]
    from harness.cohort.show import diff_builds

    diff = diff_builds(out["base"], changed["base"])
    assert diff["parts_differing"] == ["labels"] and not diff["identical"]
    assert diff["label_prevalence"][0]["label"] == "mortality_in_hospital"


def _copy_root(root: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(root, dest)
    return dest


def test_missing_file_column_and_v1_layout(tmp_path, mini):
    root, _ = mini
    a = _copy_root(root, tmp_path / "a")
    (a / "mimic-iv/icu/chartevents.csv.gz").unlink()
    with pytest.raises(InputError, match=r"icu/chartevents.*expected icu/chartevents.csv.gz"):
        build_cohorts(a / "mimic-iv", a / "mimic-cxr-jpg", dataset="bad")

    b = _copy_root(root, tmp_path / "b")
    path = b / "mimic-iv/hosp/admissions.csv.gz"
    pd.read_csv(path).drop(columns=["race"]).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"admissions.csv.gz: missing column\(s\) race"):
        build_cohorts(b / "mimic-iv", b / "mimic-cxr-jpg", dataset="bad")

    c = _copy_root(root, tmp_path / "c")
    (c / "mimic-iv/core").mkdir()
    (c / "mimic-iv/hosp/admissions.csv.gz").rename(c / "mimic-iv/core/admissions.csv.gz")
    with pytest.raises(InputError, match=r"v1\.0 layout.*core/") as info:
        build_cohorts(c / "mimic-iv", c / "mimic-cxr-jpg", dataset="bad")
    assert "hosp/admissions.csv.gz" in str(info.value)

    with pytest.raises(InputError, match="mimic-cxr-2.0.0-metadata.csv.gz"):
        build_cohorts(root / "mimic-iv", tmp_path, dataset="bad")


def test_parquet_sources_give_the_same_cohort(tmp_path, mini):
    root, out = mini
    d = _copy_root(root, tmp_path / "pq")
    for gz in (d / "mimic-iv").rglob("*.csv.gz"):
        df = pd.read_csv(gz, low_memory=False)
        for col in df.columns:
            if col.endswith("time") or col == "dod":
                df[col] = pd.to_datetime(df[col])
        df.to_parquet(gz.with_name(gz.name.replace(".csv.gz", ".parquet")))
        gz.unlink()
    got = build_cohorts(d / "mimic-iv", d / "mimic-cxr-jpg", dataset="mini-pq", threads=1)
    fp = lambda p: json.loads((p / "manifest.json").read_text())["fingerprint"]  # noqa: E731
    assert fp(got["base"]) == fp(out["base"])


def test_load_cohort_not_built_names_the_command():
    with pytest.raises(InputError, match="harness cohort build"):
        load_cohort("base", dataset="never-built")


@pytest.mark.slow
def test_three_concurrent_builds_take_turns(tiny_pipeline, tmp_path):
    """Three `harness cohort build` processes at once: all exit 0, one directory per cohort."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    harness = [sys.executable, "-m", "harness.cli.main"]
    copy_dataset(tiny_pipeline, tmp_path / "cache")  # what `harness synth` wrote, no cohorts
    procs = [
        subprocess.Popen([*harness, "cohort", "build"], env=env, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert not any("Traceback" in e for e in errors)
    built = sorted(p.name for p in (tmp_path / "cache/cohorts/synthetic-default").iterdir())
    dirs = [b for b in built if not b.endswith((".lock", ".latest"))]
    assert len(dirs) == 2 and {d.split("-")[0] for d in dirs} == {"base", "matched"}, built
