"""Write stays and hourly frames read from a non-MIMIC source (CLIF, CareBench) as harness cohorts.

The readers produce the stay columns the MIMIC builder computes in SQL and the label columns of
the task rules (:mod:`harness.cohort.labels`); this module fills the derived ones (CXR columns,
folds, age and race groups) and hands the frames to the cohort builder's own writer, so the
directory layout, manifest, fingerprint, splits file and ``.latest`` pointers are exactly those of
``harness cohort build``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__, config
from harness.cohort.labels import LabelTable
from harness.errors import InputError

log = logging.getLogger(__name__)

#: CXR linkage columns of stays.parquet with their empty values (sources without images).
CXR_COLUMNS: dict[str, Any] = {
    "dicom_id": pd.NA,
    "study_id": pd.NA,
    "cxr_path": pd.NA,
    "cxr_time_hours": np.nan,
    "cxr_view": pd.NA,
    "n_cxr_candidates": 0,
    "has_cxr": 0,
}


def file_stats(paths: list[Path]) -> dict[str, list[int]]:
    """(size, mtime_ns) of source files: part of the input key that makes rebuilds no-ops."""
    out = {}
    for p in sorted(paths):
        st = p.stat()
        out[str(p)] = [st.st_size, st.st_mtime_ns]
    return out


def write_cohorts(
    stays: pd.DataFrame,
    hourly: pd.DataFrame,
    *,
    dataset: str,
    source: dict[str, Any],
    funnel: list[dict[str, Any]],
    variables: list[str],
    variable_info: dict[str, dict[str, Any]],
    input_parts: dict[str, Any],
    dropped_values: dict[str, int] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    labels: LabelTable | None = None,
    extra_files: Callable[[Path, pd.DataFrame], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``base`` and ``matched`` cohorts through the builder's writer (the same layout as a
    MIMIC build: :func:`harness.cohort.build.write_cohort`).

    ``stays`` needs the identity, time and demographic columns of stays.parquet; ``labels`` holds
    the label columns (same index) and the tasks the source could not label, which are named in
    the manifest (None: no label column). CXR columns default to "no image"; ``fold`` defaults
    to the subject-hash folds.
    ``extra_files(dir, stays)`` may add source-specific files to each cohort directory.
    Returns ``{"base": dir, "matched": dir}``; an unchanged rebuild returns the existing ones.
    """
    from harness.cohort import build
    from harness.cohort.folds import assign_folds
    from harness.cohort.spec import load_cohort_spec, spec_hashes

    t0 = time.perf_counter()
    if labels is None:
        labels = LabelTable(pd.DataFrame(index=stays.index), [], {}, [])
    spec = load_cohort_spec()
    hashes = spec_hashes()
    input_key = hashlib.sha256(
        json.dumps(
            {
                "source": input_parts,
                "specs": hashes,
                "harness": __version__,
                "schema": build.SCHEMA_VERSION,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    if not overwrite and (existing := build.existing_build(dataset, input_key)):
        log.info("cohorts of %s are up to date: %s", dataset, existing)
        if extra_files is not None:
            for path in existing.values():
                extra_files(path, pd.read_parquet(path / "stays.parquet"))
        return existing

    where = source.get(source.get("kind", ""), dataset)  # the source folder
    dup = stays["stay_id"].duplicated(keep=False)
    if dup.any():  # would crash the encode stage later: reject here, naming the source
        ids = sorted(stays.loc[dup, "stay_id"].unique())
        raise InputError(
            f"{len(ids)} stay_id value(s) appear on more than one row (e.g. "
            f"{', '.join(str(x) for x in ids[:3])}); each stay must be listed once",
            path=where,
            fix="remove the duplicated rows from the source tables",
        )
    if stays.empty:
        raise InputError(
            "no ICU stay passes the cohort rules: the cohort would be empty",
            path=where,
            fix="check the source tables (and tasks/cohort.yaml); a cohort needs at least one stay",
        )
    stays = pd.concat([stays, labels.frame], axis=1)
    for col, empty in CXR_COLUMNS.items():
        if col not in stays:
            stays[col] = empty
    if "fold" not in stays:
        stays["fold"] = assign_folds(stays["subject_id"].to_numpy(), spec.n_folds)
    stays["fold"] = stays["fold"].astype("int8")
    stays["has_cxr"] = stays["has_cxr"].astype("int8")
    for col in ("insurance", "first_careunit", "admission_type"):
        if col not in stays:
            stays[col] = pd.Series(pd.NA, index=stays.index, dtype="string")
    # The builder's finishing step casts hadm_id to int64; a source without admission ids keeps
    # them null (nullable Int64) instead of inventing values.
    hadm = stays["hadm_id"].astype("Int64")
    stays["hadm_id"] = hadm.fillna(0)
    stays = build.finish_stays(stays, spec)
    stays["hadm_id"] = hadm.to_numpy()
    stays = stays.sort_values("stay_id").reset_index(drop=True)

    common = {
        "schema_version": build.SCHEMA_VERSION,
        "dataset": dataset,
        "source": source,
        "spec_hashes": hashes,
        "rules": {
            "version": spec.version,
            "min_age": spec.min_age,
            "min_icu_hours": spec.min_icu_hours,
            "prediction_hours": spec.prediction_hours,
        },
        "variables": list(variables),
        "variable_info": variable_info,
        "dropped_values": dropped_values or {},
        "missing_itemids": {},
        "labels_unavailable": list(labels.unavailable_columns),
        "tasks_unavailable": dict(labels.unavailable),
        **(extra_manifest or {}),
        "input_key": input_key,
        "harness_version": __version__,
        "build": {"memory_limit": None, "threads": None},
    }
    tmp_root = config.cache_root() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="cohort-external-") as tmp:
        work = Path(tmp)
        hourly_path = work / "hourly.parquet"
        h = hourly[hourly["stay_id"].isin(stays["stay_id"])]
        h = h.astype(
            {"stay_id": "int64", "hour": "int16", "variable": "string", "value": "float32"}
        )
        h = h.sort_values(["stay_id", "hour", "variable"]).reset_index(drop=True)
        h[["stay_id", "hour", "variable", "value"]].to_parquet(
            hourly_path, index=False, compression="zstd"
        )
        out = build.write_cohorts(
            work, stays, funnel, hourly_path, common, labels, overwrite, t0, extra_files
        )
    return out
