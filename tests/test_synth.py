"""Tests of `harness synth`: real MIMIC layout, determinism, planted signals, exclusion cases."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harness import config
from harness.cli.main import main
from harness.cohort.spec import list_tasks
from harness.data.synthetic import ensure_default_dataset, generate, summarize_dataset
from harness.errors import UsageError

# Column lists of the real files (MIMIC-IV 2.2 / 3.x and MIMIC-CXR-JPG 2.0.0 documentation).
EXPECTED_COLUMNS = {
    "mimic-iv/hosp/patients.csv.gz": "subject_id gender anchor_age anchor_year "
    "anchor_year_group dod",
    "mimic-iv/hosp/admissions.csv.gz": "subject_id hadm_id admittime dischtime deathtime "
    "admission_type admit_provider_id admission_location discharge_location insurance language "
    "marital_status race edregtime edouttime hospital_expire_flag",
    "mimic-iv/hosp/diagnoses_icd.csv.gz": "subject_id hadm_id seq_num icd_code icd_version",
    "mimic-iv/hosp/labevents.csv.gz": "labevent_id subject_id hadm_id specimen_id itemid "
    "order_provider_id charttime storetime value valuenum valueuom ref_range_lower "
    "ref_range_upper flag priority comments",
    "mimic-iv/hosp/d_labitems.csv.gz": "itemid label fluid category",
    "mimic-iv/icu/icustays.csv.gz": "subject_id hadm_id stay_id first_careunit last_careunit "
    "intime outtime los",
    "mimic-iv/icu/chartevents.csv.gz": "subject_id hadm_id stay_id caregiver_id charttime "
    "storetime itemid value valuenum valueuom warning",
    "mimic-iv/icu/outputevents.csv.gz": "subject_id hadm_id stay_id caregiver_id charttime "
    "storetime itemid value valueuom",
    "mimic-iv/icu/d_items.csv.gz": "itemid label abbreviation linksto category unitname "
    "param_type lownormalvalue highnormalvalue",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz": "dicom_id subject_id study_id "
    "PerformedProcedureStepDescription ViewPosition Rows Columns StudyDate StudyTime "
    "ProcedureCodeSequence_CodeMeaning ViewCodeSequence_CodeMeaning "
    "PatientOrientationCodeSequence_CodeMeaning",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv.gz": "dicom_id study_id subject_id split",
    "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz": [
        "subject_id",
        "study_id",
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Enlarged Cardiomediastinum",
        "Fracture",
        "Lung Lesion",
        "Lung Opacity",
        "No Finding",
        "Pleural Effusion",
        "Pleural Other",
        "Pneumonia",
        "Pneumothorax",
        "Support Devices",
    ],  # fmt: skip
}
TIME_COLUMNS = {
    "mimic-iv/hosp/admissions.csv.gz": ["admittime", "dischtime", "deathtime", "edregtime",
                                        "edouttime"],
    "mimic-iv/hosp/labevents.csv.gz": ["charttime", "storetime"],
    "mimic-iv/icu/icustays.csv.gz": ["intime", "outtime"],
    "mimic-iv/icu/chartevents.csv.gz": ["charttime", "storetime"],
    "mimic-iv/icu/outputevents.csv.gz": ["charttime", "storetime"],
}  # fmt: skip
N_PATIENTS, IMAGE_SIZE = 300, 64


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator called directly with fixed arguments (checked in dataset.json), not the
    session's tiny pipeline: these tests are about what ``generate`` writes for a given seed."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, n_patients=N_PATIENTS, seed=3, image_size=IMAGE_SIZE)
    return out


@pytest.fixture(scope="session")
def tables(dataset: Path) -> dict[str, pd.DataFrame]:
    return {rel: pd.read_csv(dataset / rel, keep_default_na=True) for rel in EXPECTED_COLUMNS}


def _phenotypes() -> list[dict]:
    return yaml.safe_load((config.tasks_dir() / "phenotypes.yaml").read_text())["phenotypes"]


def test_every_table_has_the_real_columns_in_order(tables):
    for rel, cols in EXPECTED_COLUMNS.items():
        expected = cols if isinstance(cols, list) else cols.split()
        assert list(tables[rel].columns) == expected, rel


def test_value_conventions(dataset, tables):
    pat = tables["mimic-iv/hosp/patients.csv.gz"]
    adm = tables["mimic-iv/hosp/admissions.csv.gz"]
    st = tables["mimic-iv/icu/icustays.csv.gz"]
    dx = tables["mimic-iv/hosp/diagnoses_icd.csv.gz"]
    meta = tables["mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"]
    assert pat["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert pat["subject_id"].is_unique and len(pat) == N_PATIENTS
    assert adm["hadm_id"].astype(str).str.fullmatch(r"2\d{7}").all()
    assert st["stay_id"].astype(str).str.fullmatch(r"3\d{7}").all()
    assert meta["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert meta["dicom_id"].str.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}").all()
    assert meta["dicom_id"].str.len().eq(44).all() and meta["dicom_id"].is_unique
    for rel, cols in TIME_COLUMNS.items():
        for col in cols:
            v = tables[rel][col].dropna()
            pd.to_datetime(v, format="%Y-%m-%d %H:%M:%S")  # raises on any other format
            years = v.str[:4].astype(int)
            assert years.between(2100, 2215).all(), (rel, col)
    pd.to_datetime(pat["dod"].dropna(), format="%Y-%m-%d")
    assert set(pat["gender"]) == {"M", "F"}
    assert pat["anchor_year_group"].str.fullmatch(r"20\d\d - 20\d\d").all()
    # deathtime only for in-hospital deaths; death implies the patient's dod.
    assert (adm["deathtime"].notna() == (adm["hospital_expire_flag"] == 1)).all()
    assert adm["discharge_location"].eq("DIED").sum() == adm["hospital_expire_flag"].sum()
    assert {"WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN"} <= set(adm["race"])
    assert {"Medicare", "Medicaid", "Private"} <= set(adm["insurance"])
    assert "EW EMER." in set(adm["admission_type"])
    # ICD codes: no dots, both versions, version matches the code family.
    assert not dx["icd_code"].str.contains(r"\.").any()
    assert set(dx["icd_version"]) == {9, 10}
    assert dx.loc[dx["icd_version"] == 10, "icd_code"].str.match(r"[A-Z]").all()
    assert dx.loc[dx["icd_version"] == 9, "icd_code"].str.match(r"[0-9V]").all()
    # CXR metadata: StudyDate YYYYMMDD int, StudyTime HHMMSS.fff float, image files as listed.
    assert (
        meta["StudyDate"].dtype == np.int64 and meta["StudyDate"].between(21000101, 22151231).all()
    )
    assert meta["StudyTime"].dtype == np.float64 and (meta["StudyTime"] < 240000).all()
    assert (meta["StudyTime"] < 100000).any()  # leading zeros dropped
    row = meta.iloc[0]
    sid = str(row["subject_id"])
    path = dataset / "mimic-cxr-jpg/files" / f"p{sid[:2]}" / f"p{sid}" / f"s{row['study_id']}"
    with Image.open(path / f"{row['dicom_id']}.jpg") as im:
        assert im.format == "JPEG" and im.mode == "L"
        assert im.size == (row["Columns"], row["Rows"]) == (IMAGE_SIZE, IMAGE_SIZE)
    n_files = sum(1 for _ in (dataset / "mimic-cxr-jpg/files").rglob("*.jpg"))
    assert n_files == len(meta)
    chex = tables["mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz"]
    values = set(np.unique(chex.iloc[:, 2:].to_numpy(dtype=float)[~chex.iloc[:, 2:].isna()]))
    assert values == {-1.0, 0.0, 1.0}
    assert set(chex["study_id"]) == set(meta["study_id"])


def test_event_conventions(tables):
    ch = tables["mimic-iv/icu/chartevents.csv.gz"]
    lab = tables["mimic-iv/hosp/labevents.csv.gz"]
    out = tables["mimic-iv/icu/outputevents.csv.gz"]
    d_items = tables["mimic-iv/icu/d_items.csv.gz"]
    d_lab = tables["mimic-iv/hosp/d_labitems.csv.gz"]
    temp_f = ch.loc[ch["itemid"] == 223761, "valuenum"]
    assert temp_f.median() > 90 and (ch["valueuom"] == "°F").any()
    fio2 = ch.loc[ch["itemid"] == 223835, "valuenum"]
    assert (fio2 <= 1).any() and (fio2 > 21).any()
    rhythm = ch[ch["itemid"] == 220048]
    assert rhythm["valuenum"].isna().all() and rhythm["value"].str.startswith("AF ").any()
    assert rhythm["value"].str.startswith("SR ").any()
    hr = ch.loc[ch["itemid"] == 220045, "valuenum"]
    assert (hr > 350).any() and (hr <= 350).mean() > 0.99  # rare out-of-range values
    assert lab["hadm_id"].isna().mean() > 0.1 and lab["hadm_id"].notna().any()
    assert lab["labevent_id"].is_unique
    assert {227488, 227489, 226559} <= set(out["itemid"])
    assert set(ch["itemid"]) | set(out["itemid"]) < set(d_items["itemid"])  # plus unused ones
    assert set(lab["itemid"]) < set(d_lab["itemid"])
    gcs = ch[ch["itemid"] == 220739]
    assert set(gcs["valuenum"]) <= {1, 2, 3, 4} and "Spontaneously" in set(gcs["value"])


def test_same_arguments_give_identical_bytes(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a = digest(Path(generate(tmp_path / "a", n_patients=25, seed=5, image_size=64)["path"]))
    b = digest(Path(generate(tmp_path / "b", n_patients=25, seed=5, image_size=64)["path"]))
    c = digest(Path(generate(tmp_path / "c", n_patients=25, seed=6, image_size=64)["path"]))
    assert a == b and len(a) > 20
    assert a["mimic-iv/icu/chartevents.csv.gz"] != c["mimic-iv/icu/chartevents.csv.gz"]
    raw = (tmp_path / "a/mimic-iv/hosp/patients.csv.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime is zero


# ----------------------------------------------------------------------------- planted signals


@pytest.fixture(scope="session")
def stay_frame(dataset, tables) -> pd.DataFrame:
    """One row per stay: planted phenotype labels (from ICD codes), EHR means, linked image."""
    st = tables["mimic-iv/icu/icustays.csv.gz"].copy()
    st["intime"] = pd.to_datetime(st["intime"])
    st["end"] = st["intime"] + pd.Timedelta(hours=48)
    dx = tables["mimic-iv/hosp/diagnoses_icd.csv.gz"]
    for p in _phenotypes():
        codes = {(9, str(c)) for c in p["icd9"]} | {(10, str(c)) for c in p["icd10"]}
        hit = [(v, c) in codes for v, c in zip(dx["icd_version"], dx["icd_code"], strict=True)]
        st[p["id"]] = st["hadm_id"].isin(dx.loc[hit, "hadm_id"]).astype(int)
    ch = tables["mimic-iv/icu/chartevents.csv.gz"]
    ch = ch[ch["valuenum"].notna() & (ch["valuenum"] < 2000)]
    feats = ch.pivot_table(index="stay_id", columns="itemid", values="valuenum", aggfunc="mean")
    lab = tables["mimic-iv/hosp/labevents.csv.gz"].merge(
        st[["subject_id", "stay_id", "intime", "end"]], on="subject_id"
    )
    t = pd.to_datetime(lab["charttime"])
    lab = lab[(t >= lab["intime"]) & (t < lab["end"])]
    lf = lab.pivot_table(index="stay_id", columns="itemid", values="valuenum", aggfunc="mean")
    ehr = feats.join(lf, how="outer")
    ehr = ehr.fillna(ehr.median())
    ehr.columns = [f"ehr_{c}" for c in ehr.columns]
    st = st.join(ehr, on="stay_id")
    # The latest frontal image in [intime, intime + 48 h): 8 x 8 block means as features.
    meta = tables["mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"].copy()
    meta["t"] = pd.to_datetime(
        meta["StudyDate"].astype(str) + meta["StudyTime"].map(lambda v: f"{int(v):06d}"),
        format="%Y%m%d%H%M%S",
    )
    m = meta[meta["ViewPosition"].isin(["AP", "PA"])].merge(
        st[["subject_id", "stay_id", "intime", "end"]], on="subject_id"
    )
    m = m[(m["t"] >= m["intime"]) & (m["t"] < m["end"])].sort_values("t")
    m = m.groupby("stay_id").tail(1)
    pix = []
    for _, r in m.iterrows():
        sid = str(r["subject_id"])
        f = (
            dataset
            / "mimic-cxr-jpg/files"
            / f"p{sid[:2]}/p{sid}/s{r['study_id']}/{r['dicom_id']}.jpg"
        )
        a = np.asarray(Image.open(f), dtype=float) / 255.0
        pix.append(a.reshape(8, IMAGE_SIZE // 8, 8, IMAGE_SIZE // 8).mean(axis=(1, 3)).ravel())
    img = pd.DataFrame(np.array(pix), index=m["stay_id"].to_numpy())
    img.columns = [f"img_{i}" for i in range(img.shape[1])]
    return st.join(img, on="stay_id")


def _cv_auroc(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    p = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    return roc_auc_score(y, p)


def test_ehr_label_is_in_the_ehr_and_cxr_label_is_not(stay_frame):
    ehr = stay_frame[[c for c in stay_frame.columns if c.startswith("ehr_")]].to_numpy()
    assert _cv_auroc(ehr, stay_frame["acute_renal_failure"].to_numpy()) > 0.8
    assert _cv_auroc(ehr, stay_frame["septicemia"].to_numpy()) > 0.75
    assert _cv_auroc(ehr, stay_frame["pleurisy_pneumothorax_collapse"].to_numpy()) < 0.65
    assert _cv_auroc(ehr, stay_frame["pneumonia"].to_numpy()) < 0.65


def test_cxr_label_is_in_the_pixels_and_ehr_label_is_not(stay_frame):
    matched = stay_frame.dropna(subset=["img_0"])
    assert len(matched) > 150
    pix = matched[[c for c in matched.columns if c.startswith("img_")]].to_numpy()
    assert _cv_auroc(pix, matched["pleurisy_pneumothorax_collapse"].to_numpy()) > 0.7
    assert _cv_auroc(pix, matched["acute_renal_failure"].to_numpy()) < 0.65


def test_both_label_needs_both_modalities(stay_frame):
    m = stay_frame.dropna(subset=["img_0"])
    y = m["chf_nonhypertensive"].to_numpy()
    ehr = m[[c for c in m.columns if c.startswith("ehr_")]].to_numpy()
    pix = m[[c for c in m.columns if c.startswith("img_")]].to_numpy()
    a_ehr, a_img, a_both = _cv_auroc(ehr, y), _cv_auroc(pix, y), _cv_auroc(np.hstack([ehr, pix]), y)
    assert a_ehr > 0.6 and a_img > 0.6
    assert a_both > max(a_ehr, a_img) + 0.03


# ----------------------------------------------------------------------------- exclusion cases


def test_exclusion_cases_exist(tables, stay_frame):
    pat = tables["mimic-iv/hosp/patients.csv.gz"]
    adm = tables["mimic-iv/hosp/admissions.csv.gz"]
    st = stay_frame
    meta = tables["mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"]
    age = st.merge(pat, on="subject_id")
    age = age["anchor_age"] + age["intime"].dt.year - age["anchor_year"]
    assert (age < 18).any() and (age >= 18).mean() > 0.9
    los_h = (pd.to_datetime(st["outtime"]) - st["intime"]).dt.total_seconds() / 3600
    assert (los_h < 48).any() and (los_h >= 48).mean() > 0.4
    death = st.merge(adm[["hadm_id", "deathtime"]], on="hadm_id")
    early = pd.to_datetime(death["deathtime"]) < death["end"]
    assert early.any() and (pd.to_datetime(death["deathtime"]) >= death["end"]).any()
    assert st.groupby("subject_id").size().max() > 1
    assert adm.groupby("subject_id").size().max() > 1
    assert {"AP", "PA", "LATERAL"} <= set(meta["ViewPosition"].dropna())
    assert meta["ViewPosition"].isna().any()
    assert st["img_0"].isna().any() and st["img_0"].notna().any()
    times = pd.to_datetime(
        meta["StudyDate"].astype(str) + meta["StudyTime"].map(lambda v: f"{int(v):06d}"),
        format="%Y%m%d%H%M%S",
    )
    where = meta.assign(t=times).merge(st[["subject_id", "intime", "end"]], on="subject_id")
    assert (where["t"] < where["intime"]).any() and (where["t"] >= where["end"]).any()
    assert meta.groupby("study_id").size().max() > 1  # frontal + lateral in one study


def test_ground_truth_file(dataset):
    gt = json.loads((dataset / "ground_truth.json").read_text())
    assert gt["schema_version"] == 1
    assert set(gt["labels"]) == set(list_tasks())  # every task has planted ground truth
    assert set(gt["labels"]["phenotype"]) == {p["name"] for p in _phenotypes()}
    sources = [v["source"] for v in gt["labels"]["phenotype"].values()]
    assert {s: sources.count(s) >= 3 for s in ("ehr", "cxr", "both", "neither")} == dict.fromkeys(
        ("ehr", "cxr", "both", "neither"), True
    )
    assert gt["fairness"][0]["attribute"] in {"race_group", "gender", "insurance", "age_group"}
    assert gt["fairness"][0]["expected"] == "lowest_tpr"
    assert gt["missingness"]["cxr_availability"]
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["arguments"] == {"n_patients": N_PATIENTS, "seed": 3, "image_size": IMAGE_SIZE}


def test_planted_fairness_group_is_charted_less(tables):
    adm = tables["mimic-iv/hosp/admissions.csv.gz"]
    ch = tables["mimic-iv/icu/chartevents.csv.gz"]
    hr = ch[ch["itemid"] == 220045].merge(adm[["hadm_id", "insurance"]], on="hadm_id")
    per_stay = hr.groupby(["stay_id", "insurance"]).size().groupby("insurance").mean()
    assert per_stay["Medicaid"] < 0.6 * per_stay.drop("Medicaid").min()


def test_summary_matches_files(dataset, tables):
    s = summarize_dataset(dataset)
    for rel, df in tables.items():
        assert s["rows"][rel] == len(df), rel
    assert s["n_images"] == len(tables["mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz"])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_patients": 0}, "--n-patients must be at least 1"),
        ({"n_patients": -5}, "--n-patients must be at least 1"),
        ({"image_size": 32}, "--image-size must be between 64 and 4096"),
        ({"image_size": 5000}, "--image-size must be between 64 and 4096"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="pass --overwrite"):
        generate(out, n_patients=3, image_size=64)
    assert (out / "keep.txt").read_text() == "mine"
    rc = main(["synth", "--out", str(out), "--n-patients", "3", "--image-size", "64"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    rc = main(
        ["synth", "--out", str(out), "--n-patients", "3", "--image-size", "64", "--overwrite"]
    )
    assert rc == 0 and not (out / "keep.txt").exists()
    assert "chartevents" in capsys.readouterr().out


def test_ensure_default_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(config, "DEFAULT_N_PATIENTS", 4)
    monkeypatch.setattr(config, "DEFAULT_IMAGE_SIZE", 64)
    path = ensure_default_dataset()
    assert path == config.default_dataset_dir() and (path / "dataset.json").is_file()
    stamp = (path / "dataset.json").stat().st_mtime_ns
    assert ensure_default_dataset() == path
    assert (path / "dataset.json").stat().st_mtime_ns == stamp  # not regenerated
