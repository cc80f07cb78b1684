"""MEDS input: the synthetic MIMIC-IV tree written as MEDS (as the MIMIC-IV MEDS ETL writes it)
builds the same cohorts, labels and hourly series as the MIMIC-IV files themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import InputError, SpecError


def _read(root: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{table}.csv.gz")


def _ts(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s)


def write_meds(mimic_iv: Path, mimic_cxr: Path | None, out: Path) -> Path:
    """A MEDS folder from a MIMIC-IV tree, with the codes and conversions of the MIMIC-IV MEDS
    ETL (MIMIC_IV_MEDS event_configs and pre_MEDS): an independent writer, plain pandas."""
    events: list[pd.DataFrame] = []

    def add(frame: pd.DataFrame, **extra: pd.Series) -> None:
        events.append(frame.assign(**extra))

    pat = _read(mimic_iv, "hosp/patients")
    adm = _read(mimic_iv, "hosp/admissions")
    death = _ts(adm.dropna(subset=["deathtime"]).groupby("subject_id")["deathtime"].min())
    dod = _ts(pat.set_index("subject_id")["dod"])
    died = death.reindex(dod.index).fillna(dod).dropna()
    add(pd.DataFrame({"subject_id": pat["subject_id"], "time": pd.NaT,
                      "code": "GENDER//" + pat["gender"]}))  # fmt: skip
    born = pd.to_datetime((pat["anchor_year"] - pat["anchor_age"]).astype(str), format="%Y")
    add(pd.DataFrame({"subject_id": pat["subject_id"], "time": born, "code": "MEDS_BIRTH"}))
    add(pd.DataFrame({"subject_id": died.index, "time": died.to_numpy(), "code": "MEDS_DEATH"}))
    add(
        pd.DataFrame({"subject_id": adm["subject_id"], "time": _ts(adm["admittime"]),
                      "code": "HOSPITAL_ADMISSION//" + adm["admission_type"].fillna("UNK")
                      + "//" + adm["admission_location"].fillna("UNK")}),
        hadm_id=adm["hadm_id"], race=adm["race"], insurance=adm["insurance"],
    )  # fmt: skip
    add(
        pd.DataFrame({"subject_id": adm["subject_id"], "time": _ts(adm["dischtime"]),
                      "code": "HOSPITAL_DISCHARGE//" + adm["discharge_location"].fillna("UNK")}),
        hadm_id=adm["hadm_id"],
    )  # fmt: skip
    dx = _read(mimic_iv, "hosp/diagnoses_icd").merge(adm[["hadm_id", "dischtime"]], on="hadm_id")
    add(
        pd.DataFrame({"subject_id": dx["subject_id"], "time": _ts(dx["dischtime"]),
                      "code": "DIAGNOSIS//ICD//" + dx["icd_version"].astype(str) + "//"
                      + dx["icd_code"].astype(str)}),
        hadm_id=dx["hadm_id"],
    )  # fmt: skip
    icu = _read(mimic_iv, "icu/icustays")
    for code, col, unit in (("ICU_ADMISSION", "intime", "first_careunit"),
                            ("ICU_DISCHARGE", "outtime", "last_careunit")):  # fmt: skip
        add(
            pd.DataFrame({"subject_id": icu["subject_id"], "time": _ts(icu[col]),
                          "code": code + "//" + icu[unit].fillna("UNK")}),
            hadm_id=icu["hadm_id"], icustay_id=icu["stay_id"],
        )  # fmt: skip
    for table, prefix, value, stay in (
        ("icu/chartevents", "LAB", "valuenum", True),
        ("hosp/labevents", "LAB", "valuenum", False),
        ("icu/outputevents", "SUBJECT_FLUID_OUTPUT", "value", True),
    ):
        ev = _read(mimic_iv, table)
        frame = pd.DataFrame({
            "subject_id": ev["subject_id"], "time": _ts(ev["charttime"]),
            "code": prefix + "//" + ev["itemid"].astype(str) + "//"
            + ev["valueuom"].fillna("UNK").astype(str),
            "numeric_value": pd.to_numeric(ev[value], errors="coerce"),
        })  # fmt: skip
        extra = {"hadm_id": ev["hadm_id"]}
        if "value" in ev and table != "icu/outputevents":
            extra["text_value"] = ev["value"].astype("string")
        if stay:
            extra["icustay_id"] = ev["stay_id"]
        add(frame, **extra)
    if mimic_cxr is not None:
        meta = pd.read_csv(mimic_cxr / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"StudyTime": str})
        clock = meta["StudyTime"].str.split(".", n=1)
        stamp = (meta["StudyDate"].astype(str) + clock.str[0].str.zfill(6)
                 + clock.str[1].fillna("0").str.ljust(6, "0").str[:6])  # fmt: skip
        add(
            pd.DataFrame({"subject_id": meta["subject_id"],
                          "time": pd.to_datetime(stamp, format="%Y%m%d%H%M%S%f"),
                          "code": "CXR//" + meta["ViewPosition"].fillna("UNK")}),
            dicom_id=meta["dicom_id"], study_id=meta["study_id"],
        )  # fmt: skip
    data = pd.concat(events, ignore_index=True)
    data = data.astype({"subject_id": "int64", "hadm_id": "Int64", "icustay_id": "Int64",
                        "study_id": "Int64", "numeric_value": "float32"})  # fmt: skip
    data["time"] = data["time"].astype("datetime64[us]")
    data = data.sort_values(["subject_id", "time"], na_position="first", kind="stable")
    (out / "data").mkdir(parents=True)
    (out / "metadata").mkdir()
    data.to_parquet(out / "data" / "0.parquet", index=False)
    codes = pd.DataFrame({"code": sorted(data["code"].unique())})
    codes.assign(description=None, parent_codes=None).to_parquet(out / "metadata/codes.parquet")
    subjects = pd.DataFrame({"subject_id": sorted(data["subject_id"].unique())})
    subjects.assign(split="train").to_parquet(out / "metadata/subject_splits.parquet")
    (out / "metadata/dataset.json").write_text(json.dumps({"dataset_name": "synthetic"}))
    return out


@pytest.fixture(scope="module")
def both(tiny_pipeline, tmp_path_factory):
    """The native build of the tiny dataset and the build of its MEDS copy (own caches)."""
    from harness.cohort import load_cohort
    from harness.cohort.build import build_cohorts
    from harness.cohort.meds import build_meds_cohorts

    root = tiny_pipeline / "datasets" / "synthetic-default"
    work = tmp_path_factory.mktemp("meds")
    meds = write_meds(root / "mimic-iv", root / "mimic-cxr-jpg", work / "meds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(work / "cache"))
        native = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset="native")
        built = build_meds_cohorts(meds, root / "mimic-cxr-jpg", threads=1)
        return {c: (load_cohort(path=native[c]), load_cohort(path=built[c])) for c in native}, meds


@pytest.mark.parametrize("cohort", ["base", "matched"])
def test_meds_gives_the_native_cohort_labels_and_series(both, cohort):
    cohorts, _ = both
    native, meds = cohorts[cohort]
    a = native.stays.set_index("stay_id").sort_index()
    b = meds.stays.set_index("stay_id").sort_index()
    assert len(a) > 50 and a.index.equals(b.index)
    assert list(a.columns) == list(b.columns)
    assert a["mortality_in_hospital"].sum() > 0 and (cohort == "base" or a["has_cxr"].all())
    for col in a.columns:
        left, right = a[col], b[col]
        if left.dtype.kind == "f":
            np.testing.assert_allclose(right, left, rtol=1e-6, err_msg=col)
        else:
            assert left.astype(str).equals(right.astype(str)), col
    assert (
        native.manifest["fingerprint_parts"]["labels"]
        == meds.manifest["fingerprint_parts"]["labels"]
    )
    assert [r["n_stays"] for r in native.manifest["funnel"]] == [
        r["n_stays"] for r in meds.manifest["funnel"]
    ]
    h = native.hourly().merge(meds.hourly(), on=["stay_id", "hour", "variable"], how="outer",
                              indicator=True)  # fmt: skip
    assert (h["_merge"] == "both").all() and len(h) > 1000
    np.testing.assert_allclose(h["value_y"], h["value_x"], rtol=1e-5)
    assert meds.manifest["source"]["kind"] == "meds"
    # everything the fingerprint covers agrees, so the cohorts differ only by their source
    parts = ("stays", "folds", "labels", "cxr", "hourly")
    assert all(
        native.manifest["fingerprint_parts"][p] == meds.manifest["fingerprint_parts"][p]
        for p in parts
    )


def test_meds_without_images_links_none_and_bad_folders_are_named(both, tmp_path, monkeypatch):
    from harness.cli.main import main
    from harness.cohort import load_cohort
    from harness.cohort.meds import build_meds_cohorts

    _, meds = both
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    out = build_meds_cohorts(meds, dataset="meds-noimg")
    assert load_cohort(path=out["base"]).stays["has_cxr"].sum() == 0
    assert len(load_cohort(path=out["matched"]).stays) == 0
    assert main(["cohort", "build", "--source", str(meds), "--dataset", "meds-cli"]) == 0
    with pytest.raises(InputError, match="not a MEDS folder"):
        build_meds_cohorts(tmp_path)
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    (broken / "metadata").mkdir()
    pd.read_parquet(meds / "data" / "0.parquet").drop(columns=["icustay_id"]).to_parquet(
        broken / "data" / "0.parquet"
    )
    with pytest.raises(InputError, match=r"lack column\(s\) \['icustay_id'\]"):
        build_meds_cohorts(broken)


def test_meds_mapping_errors_name_the_field(tmp_path):
    from harness.cohort.meds import load_meds_mapping

    path = tmp_path / "m.yaml"
    path.write_text("version: 1\ncodes: {icu_admission: 'ICU ADMISSION'}\ncolumns: {}\n")
    with pytest.raises(SpecError, match="codes.icu_admission"):
        load_meds_mapping(path)
