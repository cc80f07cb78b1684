"""Integrity of built cohorts and of the feature store: damage is detected, named and repairable.

Cohort builds: loading recomputes the fingerprint from stays.parquet and checks the sha256 of the
data files recorded in the manifest; the fix it names (a rebuild) really rewrites a damaged build.
Feature store: every chunk read is verified against its checksum; `harness encode --repair`
re-encodes missing or damaged chunks and ends with the bytes of a clean run. Cohort build inputs:
duplicated ids, implausible ages, inverted ICU times, empty code lists, empty tables, unreadable
values and truncated manifests each give one clear error or their own funnel step.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from encode_fixtures import make_cohort
from test_cohort_build import write_mini

from harness.cohort import load_cohort
from harness.cohort.build import build_cohorts
from harness.cohort.spec import load_phenotypes
from harness.encode.registry import encoder_key_for, get_encoder
from harness.encode.run import encode_cohort, encode_ehr
from harness.errors import InputError, SpecError
from harness.store import (
    CHECKSUMS_ATTR,
    cxr_store_path,
    ehr_store_path,
    read_cxr,
    read_ehr,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ cohort builds


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written mini dataset (planted edge cases), not the session's tiny pipeline: the
    tests damage copies of its files and builds, and need stays they can name."""
    return write_mini(tmp_path_factory.mktemp("integrity-mini"))


@pytest.fixture(scope="module")
def mini_build(mini_root: Path) -> dict[str, Path]:
    return build_cohorts(
        mini_root / "mimic-iv", mini_root / "mimic-cxr-jpg", dataset="integrity", threads=1
    )


def _copy_build(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / src.name  # keep the <cohort>-<fingerprint12> name
    shutil.copytree(src, dest)
    return dest


def test_flipped_labels_are_detected_at_load(mini_build, tmp_path):
    build = _copy_build(mini_build["base"], tmp_path)
    assert load_cohort(path=build).fingerprint  # intact copy loads
    stays = pd.read_parquet(build / "stays.parquet")
    stays["mortality_in_hospital"] = 1 - stays["mortality_in_hospital"]
    stays.to_parquet(build / "stays.parquet", index=False)
    with pytest.raises(InputError, match=r"stays\.parquet: .*labels part") as err:
        load_cohort(path=build)
    # the fix is the real command that rebuilds this dataset from its sources
    assert "harness cohort build --mimic-iv" in str(err.value)
    assert "--dataset integrity" in str(err.value)


@pytest.mark.parametrize("name", ["hourly.parquet", "splits.csv"])
def test_modified_data_files_are_detected_at_load(mini_build, tmp_path, name):
    build = _copy_build(mini_build["base"], tmp_path)
    manifest = json.loads((build / "manifest.json").read_text())
    assert set(manifest["files"]) == {"stays.parquet", "hourly.parquet", "splits.csv"}
    if name == "hourly.parquet":
        hourly = pd.read_parquet(build / name)
        hourly.loc[0, "value"] = hourly.loc[0, "value"] + 1
        hourly.to_parquet(build / name, index=False)
    else:
        splits = pd.read_csv(build / name)
        splits.loc[0, "fold"] = splits.loc[0, "fold"] % 5 + 1
        splits.to_csv(build / name, index=False)
    with pytest.raises(InputError, match=rf"{name}: file differs .*sha256") as err:
        load_cohort(path=build)
    assert "Fix: rebuild it with `harness cohort build" in str(err.value)
    (build / name).unlink()
    with pytest.raises(InputError, match=rf"{name}: file of the build is missing"):
        load_cohort(path=build)


def test_old_builds_without_file_checksums_verify_the_fingerprint_only(
    mini_build, tmp_path, caplog
):
    build = _copy_build(mini_build["base"], tmp_path)
    manifest = json.loads((build / "manifest.json").read_text())
    del manifest["files"], manifest["label_columns"]  # as written before this change
    (build / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        cohort = load_cohort(path=build)
    assert cohort.fingerprint == manifest["fingerprint"]
    assert "built before file checksums existed" in caplog.text
    stays = pd.read_parquet(build / "stays.parquet")
    stays.loc[0, "acute_renal_failure"] = 1 - stays.loc[0, "acute_renal_failure"]
    stays.to_parquet(build / "stays.parquet", index=False)
    with pytest.raises(InputError, match=r"stays\.parquet: .*labels part"):
        load_cohort(path=build)


def test_edited_fingerprint_in_the_manifest_is_detected(mini_build, tmp_path):
    build = _copy_build(mini_build["base"], tmp_path)
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"manifest\.json: the fingerprint does not match"):
        load_cohort(path=build)


def test_truncated_manifest_is_one_error_naming_the_file(mini_build, tmp_path, capsys):
    from harness.cli.main import main

    build = _copy_build(mini_build["base"], tmp_path)
    text = (build / "manifest.json").read_text()
    (build / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=r"manifest\.json: unreadable manifest") as err:
        load_cohort(path=build)
    assert "Fix: rebuild it with `harness cohort build" in str(err.value)
    assert main(["cohort", "diff", str(build), str(build)]) == 2
    out = capsys.readouterr()
    assert "manifest.json" in out.err and "Traceback" not in out.err + out.out
    # the message is printed unwrapped: the whole path, however long, on one line
    assert str(build / "manifest.json") in out.err.splitlines()[0]


def test_cli_errors_are_not_read_as_markup(capsys):
    from harness.cli.main import main

    assert main(["evaluate", "submissions/[bold]nope[/bold]"]) != 0
    err = capsys.readouterr().err
    assert "[bold]nope[/bold]" in err


def test_rebuild_rewrites_a_damaged_build(mini_root, tmp_path):
    """The fix the errors name works: a plain rebuild notices the damage and rewrites."""
    iv, cxr = mini_root / "mimic-iv", mini_root / "mimic-cxr-jpg"
    out = build_cohorts(iv, cxr, dataset="integrity-rebuild", threads=1)
    stays = pd.read_parquet(out["base"] / "stays.parquet")
    stays["mortality_icu"] = 1 - stays["mortality_icu"]
    stays.to_parquet(out["base"] / "stays.parquet", index=False)
    text = (out["matched"] / "manifest.json").read_text()
    (out["matched"] / "manifest.json").write_text(text[:100])
    again = build_cohorts(iv, cxr, dataset="integrity-rebuild", threads=1)
    assert again == out
    for path in again.values():
        load_cohort(path=path)  # verifies


# ------------------------------------------------------------------------------ feature store


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    return root


def _run(cohort, **kw):
    kw.setdefault("num_workers", 0)
    return encode_cohort(cohort, get_encoder("test_tiny"), chunk_rows=4, batch_size=3, **kw)


def _store_state(store: Path) -> tuple[dict[str, bytes], dict]:
    import zarr

    files = {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }
    return files, dict(zarr.open_group(str(store), mode="r").attrs)[CHECKSUMS_ATTR]


def _damage(store: Path, array: str, how: str) -> None:
    path = store / array / "c" / "1"
    if array == "embedding":
        path = path / "0"
    if how == "delete":
        path.unlink()
    else:
        path.write_bytes(b"\x00not a zstd frame\x00" * 4)


@pytest.mark.parametrize(
    "array,how",
    [
        ("embedding", "delete"),
        ("embedding", "garbage"),
        ("status", "delete"),
        ("dicom_id", "delete"),
        ("dicom_id", "garbage"),
        ("committed", "garbage"),
    ],
)
def test_damaged_cxr_chunk_is_an_error_and_repair_restores_clean_bytes(cache, tmp_path, array, how):
    cohort = make_cohort(tmp_path / "data", 16, seed=7)
    ids = [d for d in cohort.stays["dicom_id"] if isinstance(d, str)]
    report = _run(cohort)
    store = cxr_store_path(report.cxr_key)
    clean = _store_state(store)
    expected = read_cxr(report.cxr_key, ids)

    _damage(store, array, how)
    with pytest.raises(InputError, match=rf"array '{array}' rows 4-7 \(chunk 1\)") as err:
        read_cxr(report.cxr_key, ids)
    message = str(err.value)
    assert str(store) in message and "harness encode --repair" in message
    # a plain run no longer says "nothing to encode": it stops with the same error
    with pytest.raises(InputError, match=rf"array '{array}' rows 4-7"):
        _run(cohort)

    repaired = _run(cohort, repair=True)
    assert repaired.repair is not None and repaired.repair.damaged
    assert not repaired.repair.left and not repaired.repair.retired
    assert _store_state(store) == clean  # same bytes (and checksums) as the clean run
    got = read_cxr(report.cxr_key, ids)
    np.testing.assert_array_equal(got.embedding, expected.embedding)
    np.testing.assert_array_equal(got.status, expected.status)
    assert _run(cohort).forward_calls == 0


def test_lost_commit_marker_is_not_read_as_zeros(cache, tmp_path):
    cohort = make_cohort(tmp_path / "data", 16, seed=7)
    ids = [d for d in cohort.stays["dicom_id"] if isinstance(d, str)]
    report = _run(cohort)
    store = cxr_store_path(report.cxr_key)
    clean = _store_state(store)
    (store / "committed" / "c" / "1").unlink()
    feats = read_cxr(report.cxr_key, ids)
    lost = feats.status == "not_encoded"
    assert lost.sum() == 4 and not feats.ok[lost].any()  # reported missing, not zero vectors
    repaired = _run(cohort, repair=True)
    assert repaired.repair.restored_markers == [1] and repaired.forward_calls == 0
    assert _store_state(store) == clean


def test_damaged_chunk_of_another_cohort_is_left_and_named(cache, tmp_path):
    first = make_cohort(tmp_path / "a", 16, seed=7)
    other = make_cohort(tmp_path / "b", 6, seed=8, name="other")
    r1 = _run(first)
    _run(other)
    store = cxr_store_path(r1.cxr_key)
    _damage(store, "embedding", "delete")  # chunk 1 holds images of the first cohort only
    r = _run(other, repair=True)
    assert r.repair.left == [1] and r.repair.left_owners[1] == ["tiny/base"]
    read_cxr(r1.cxr_key, [d for d in other.stays["dicom_id"] if isinstance(d, str)])
    with pytest.raises(InputError, match="rows 4-7"):
        read_cxr(r1.cxr_key, [d for d in first.stays["dicom_id"] if isinstance(d, str)])


def test_store_without_checksums_gets_weaker_checks_and_repair_records_them(
    cache, tmp_path, caplog
):
    import zarr

    cohort = make_cohort(tmp_path / "data", 16, seed=7)
    ids = [d for d in cohort.stays["dicom_id"] if isinstance(d, str)]
    report = _run(cohort)
    store = cxr_store_path(report.cxr_key)
    clean = _store_state(store)
    g = zarr.open_group(str(store), mode="r+")
    g.attrs.update({CHECKSUMS_ATTR: {}})  # as written before checksums existed
    with caplog.at_level(logging.WARNING):
        assert read_cxr(report.cxr_key, ids).ok.all()
    assert "before chunk checksums existed" in caplog.text
    _damage(store, "status", "delete")
    with pytest.raises(InputError, match=r"array 'status' rows 4-7 .*no status"):
        read_cxr(report.cxr_key, ids)
    repaired = _run(cohort, repair=True)
    assert repaired.repair.reencode == [1] and repaired.repair.adopted == 3
    assert _store_state(store) == clean


def _labelled(cohort):
    stays = cohort.stays
    stays["mortality_in_hospital"] = (np.arange(len(stays)) % 3 == 0).astype(int)
    stays["cxr_time_hours"] = np.where(stays["has_cxr"], 12.0, np.nan)
    stays["has_cxr"] = stays["has_cxr"].astype(int)
    return cohort


def test_load_feature_set_never_passes_missing_embeddings_as_present(cache, tmp_path):
    from harness.models.data import load_feature_set

    cohort = _labelled(make_cohort(tmp_path / "data", 16, seed=7))
    report = _run(cohort)
    clean = load_feature_set(cohort, "mortality_in_hospital", encoder="test_tiny")
    assert clean.has_cxr.sum() == 15
    _damage(cxr_store_path(report.cxr_key), "embedding", "delete")
    with pytest.raises(InputError, match=r"'embedding' rows 4-7.*\n.*--repair"):
        load_feature_set(cohort, "mortality_in_hospital", encoder="test_tiny")
    _run(cohort, repair=True)
    fs = load_feature_set(cohort, "mortality_in_hospital", encoder="test_tiny")
    np.testing.assert_array_equal(fs.has_cxr, clean.has_cxr)
    np.testing.assert_array_equal(fs.cxr, clean.cxr)
    assert fs.cxr[fs.has_cxr].any(axis=1).all()


@pytest.mark.parametrize("how", ["delete", "garbage"])
def test_damaged_ehr_block_is_an_error_and_repair_rewrites(cache, tmp_path, how):
    cohort = make_cohort(tmp_path / "data", 9, seed=3)
    encode_ehr(cohort)
    clean = read_ehr(cohort)
    chunk = ehr_store_path(cohort) / "values" / "c" / "0" / "0" / "0"
    if how == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"garbage" * 9)
    with pytest.raises(InputError, match=r"array 'values' rows 0-8 \(chunk 0\)") as err:
        read_ehr(cohort)
    assert "harness encode --repair" in str(err.value)
    with pytest.raises(InputError, match="'values'"):
        encode_ehr(cohort)
    assert encode_ehr(cohort, repair=True) == (clean.key, False)
    again = read_ehr(cohort)
    np.testing.assert_array_equal(again.values, clean.values)
    np.testing.assert_array_equal(again.observed, clean.observed)
    assert encode_ehr(cohort) == (clean.key, True)


def test_ehr_store_without_checksums_is_rewritten_by_repair(cache, tmp_path, caplog):
    import zarr

    cohort = make_cohort(tmp_path / "data", 9, seed=3)
    encode_ehr(cohort)
    g = zarr.open_group(str(ehr_store_path(cohort)), mode="r+")
    g.attrs.update({CHECKSUMS_ATTR: None})  # as written before checksums existed
    with caplog.at_level(logging.WARNING):
        read_ehr(cohort)
    assert "it cannot be verified" in caplog.text
    assert encode_ehr(cohort)[1]  # a plain run keeps it
    assert not encode_ehr(cohort, repair=True)[1]  # repair rewrites it with checksums
    assert zarr.open_group(str(ehr_store_path(cohort)), mode="r").attrs[CHECKSUMS_ATTR]


def test_encode_cli_stops_on_a_damaged_store_and_repairs_it(cache, mini_build, capsys):
    from harness.cli.main import main

    args = ["encode", "--cohort-path", str(mini_build["base"]), "-e", "test_tiny", "--workers", "0"]
    assert main(args) == 0
    store = cxr_store_path(encoder_key_for("test_tiny"))
    (store / "status" / "c" / "0").unlink()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "array 'status' rows 0-255 (chunk 0): missing" in " ".join(err.split())
    assert "harness encode --repair --encoder test_tiny" in " ".join(err.split())
    assert "Traceback" not in err and "nothing to encode" not in err
    assert main([*args, "--repair"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 chunk(s) re-encoded" in out
    assert main(args) == 0
    assert "nothing to encode" in capsys.readouterr().out


# ------------------------------------------------------------------------------ cohort inputs


def _mini_copy(mini_root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "src"
    shutil.copytree(mini_root, dest)
    return dest


def _build(root: Path, dataset: str) -> dict[str, Path]:
    return build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset=dataset, threads=1)


def _edit(root: Path, rel: str, fn) -> None:
    path = root / "mimic-iv" / f"{rel}.csv.gz"
    fn(pd.read_csv(path)).to_csv(path, index=False)


def test_duplicate_stay_rows_are_rejected_at_build(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)
    _edit(root, "icu/icustays", lambda df: pd.concat([df, df.iloc[[0, 2]]]))
    with pytest.raises(InputError, match=r"icustays\.csv\.gz: 2 stay_id value\(s\) appear on more"):
        _build(root, "dup")


def test_duplicate_admissions_are_rejected_at_build(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)
    _edit(root, "hosp/admissions", lambda df: pd.concat([df, df.iloc[[1]]]))
    with pytest.raises(InputError, match=r"admissions\.csv\.gz: 1 hadm_id value\(s\)"):
        _build(root, "dup-adm")


def test_implausible_ages_and_inverted_times_get_their_own_funnel_steps(
    mini_root, tmp_path, caplog
):
    root = _mini_copy(mini_root, tmp_path)

    def ages(df):  # subject 10: 150 years, subject 16: -5 years
        df.loc[df.subject_id == 10, "anchor_age"] = 150
        df.loc[df.subject_id == 16, "anchor_age"] = -5
        return df

    def times(df):  # stay 1600 (20 days) ends before it starts
        df.loc[df.stay_id == 1600, "outtime"] = "2150-01-01 00:00:00"
        return df

    _edit(root, "hosp/patients", ages)
    _edit(root, "icu/icustays", times)
    with caplog.at_level(logging.WARNING):
        out = _build(root, "odd")
    base = load_cohort(path=out["base"])
    funnel = {r["step"]: r["n_stays"] for r in base.manifest["funnel"]}
    assert funnel == {
        "icu_stays": 7,
        "linked_patient_and_admission": 7,
        "intime_not_after_outtime": 6,  # 1600
        "age_between_0_and_120": 5,  # 1000 (150 years); 1600 was already out
        "age_at_least_18": 4,  # 1100
        "icu_stay_at_least_48h": 3,  # 1200
        "alive_at_prediction": 2,  # 1300
    }
    assert sorted(base.stays["stay_id"]) == [1400, 1500]
    assert "1 ICU stays have an intime after their outtime" in caplog.text
    assert "patients.csv.gz: 1 ICU stays have an age outside 0..120" in caplog.text


def test_empty_phenotype_code_list_is_a_spec_error(tmp_path):
    from harness.config import tasks_dir

    data = yaml.safe_load((tasks_dir() / "phenotypes.yaml").read_text())
    data["phenotypes"][3]["icd9"] = []
    data["phenotypes"][3]["icd10"] = None
    name = data["phenotypes"][3]["id"]
    path = tmp_path / "phenotypes.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=rf"phenotypes\.yaml: phenotype '{name}'.*lists no ICD"):
        load_phenotypes(path)
    data["phenotypes"][3]["icd9"] = "5845"  # a string, not a list: would split into characters
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"icd9 must be a list of codes"):
        load_phenotypes(path)


def test_empty_icustays_is_an_error(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)
    _edit(root, "icu/icustays", lambda df: df.iloc[:0])
    with pytest.raises(InputError, match=r"icustays\.csv\.gz: the ICU stays table has no rows"):
        _build(root, "empty")


def test_no_stay_passing_the_rules_is_an_error(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)
    _edit(root, "hosp/patients", lambda df: df.assign(anchor_age=10))
    with pytest.raises(InputError, match=r"icustays\.csv\.gz: no ICU stay passes .*age_at_least"):
        _build(root, "minors")


def test_text_in_valuenum_is_one_line_naming_file_column_and_row(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)

    def text(df):
        df["valuenum"] = df["valuenum"].astype(object)
        df.loc[4, "valuenum"] = "see note"
        return df

    _edit(root, "icu/chartevents", text)
    with pytest.raises(InputError) as err:
        _build(root, "text")
    message = str(err.value)
    assert message.splitlines()[0].endswith(
        "chartevents.csv.gz: line 6, column valuenum: 'see note' is not a DOUBLE value"
    )
    assert len(message.splitlines()) == 2 and message.splitlines()[1].startswith("Fix: ")


def test_text_in_a_parquet_source_names_the_row(mini_root, tmp_path):
    root = _mini_copy(mini_root, tmp_path)
    csv = root / "mimic-iv" / "icu" / "chartevents.csv.gz"
    df = pd.read_csv(csv)
    df["valuenum"] = df["valuenum"].astype("string")
    df.loc[4, "valuenum"] = "see note"
    for col in ("charttime", "storetime"):
        df[col] = pd.to_datetime(df[col])
    df.to_parquet(csv.with_name("chartevents.parquet"), index=False)
    csv.unlink()
    with pytest.raises(InputError) as err:
        _build(root, "text-pq")
    first = str(err.value).splitlines()[0]
    assert first.endswith(
        "chartevents.parquet: row 5, column valuenum: 'see note' is not a DOUBLE value"
    )


def test_duplicate_stays_from_an_external_source_are_rejected(tmp_path):
    from harness.cohort.external import write_cohorts

    stays = pd.DataFrame({"stay_id": [1, 1, 2], "subject_id": [5, 5, 6]})
    with pytest.raises(InputError, match=r"clif-folder: 1 stay_id value\(s\) appear on more"):
        write_cohorts(
            stays,
            pd.DataFrame(columns=["stay_id", "hour", "variable", "value"]),
            dataset="dup-external",
            source={"kind": "clif", "clif": "clif-folder"},
            funnel=[],
            variables=[],
            variable_info={},
            input_parts={"test": str(tmp_path)},
        )
