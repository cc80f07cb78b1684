"""Feature store readers and EHR tensors, checked against plain pandas on the hourly frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from encode_fixtures import VARIABLES, make_cohort

from harness.encode.ehr import SUMMARY_STATS, build_ehr_tensors
from harness.encode.run import encode_ehr
from harness.errors import InputError
from harness.store import ehr_store_path, read_cxr, read_ehr


def test_ehr_values_match_pandas_pivot(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 9, seed=3)
    key, reused = encode_ehr(cohort)
    assert not reused
    feats = read_ehr(cohort)
    assert feats.key == key and ehr_store_path(cohort).name == f"{key}.zarr"
    assert feats.variables == VARIABLES
    np.testing.assert_array_equal(feats.stay_id, cohort.stays["stay_id"].to_numpy())
    hourly = cohort.hourly()
    pivot = hourly.pivot_table(index=["stay_id", "hour"], columns="variable", values="value")
    full = pd.MultiIndex.from_product(
        [cohort.stays["stay_id"], range(48)], names=["stay_id", "hour"]
    )
    expected = pivot.reindex(index=full, columns=VARIABLES).to_numpy(np.float32).reshape(9, 48, 3)
    np.testing.assert_array_equal(feats.values, expected)
    np.testing.assert_array_equal(feats.observed, ~np.isnan(expected))
    # a second call reuses the store
    assert encode_ehr(cohort) == (key, True)


def test_ehr_summary_matches_groupby(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 10, seed=4)
    feats = build_ehr_tensors(cohort.hourly(), cohort.stays["stay_id"], VARIABLES)
    s = feats.summary.reshape(10, len(VARIABLES), len(SUMMARY_STATS))
    df = cohort.hourly().sort_values("hour")
    grouped = df.groupby(["stay_id", "variable"])
    for (sid, var), g in grouped:
        i = int(np.flatnonzero(feats.stay_id == sid)[0])
        j = VARIABLES.index(var)
        v, h = g["value"].to_numpy(np.float64), g["hour"].to_numpy(np.float64)
        expected = {
            "mean": v.mean(),
            "min": v.min(),
            "max": v.max(),
            "last": v[-1],
            "std": v.std(ddof=0),
            "slope": np.polyfit(h, v, 1)[0] if len(v) > 1 else np.nan,
            "count": len(v),
        }
        for k, name in enumerate(SUMMARY_STATS):
            np.testing.assert_allclose(s[i, j, k], expected[name], rtol=1e-4, atol=1e-4)
    # never-observed (stay, variable) pairs: count 0 and NaN statistics
    seen = set(grouped.groups)
    for i, sid in enumerate(feats.stay_id):
        for j, var in enumerate(VARIABLES):
            if (sid, var) not in seen:
                assert s[i, j, SUMMARY_STATS.index("count")] == 0
                assert np.isnan(s[i, j, SUMMARY_STATS.index("mean")])


def test_hourly_duplicates_and_bad_hours_are_errors(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 3, seed=5)
    h = cohort.hourly()
    dup = pd.concat([h, h.iloc[:1]])
    with pytest.raises(InputError, match="more than one value"):
        build_ehr_tensors(dup, cohort.stays["stay_id"], VARIABLES, source="hourly.parquet")
    bad = h.copy()
    bad.loc[bad.index[0], "hour"] = 48
    with pytest.raises(InputError, match="0..47"):
        build_ehr_tensors(bad, cohort.stays["stay_id"], VARIABLES)
    with pytest.raises(InputError, match="'value'"):
        build_ehr_tensors(h.drop(columns="value"), cohort.stays["stay_id"], VARIABLES)


def test_readers_say_to_run_encode(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 2, seed=6)
    with pytest.raises(InputError, match="harness encode"):
        read_ehr(cohort)
    with pytest.raises(InputError, match="harness encode"):
        read_cxr("no-such-key-0000", ["a"])
