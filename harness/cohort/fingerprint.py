"""Cohort fingerprints: hashes of what defines a cohort, comparable without sharing patient data.

A fingerprint combines one sha256 per part (stay ids, folds, labels, chosen images, hourly values,
definition files); two builds with equal fingerprints hold the same cohort, and ``cohort diff``
compares the parts to say where two builds differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd


def _frame_digest(frame: pd.DataFrame) -> str:
    # CSV text of the id-sorted frame: independent of pandas/pyarrow internals.
    text = frame.sort_values("stay_id").to_csv(index=False, float_format="%.6f", na_rep="")
    return hashlib.sha256(text.encode()).hexdigest()


def hourly_digest(path: Path) -> str:
    """Order-independent digest of an hourly.parquet (row count + xor of per-row md5s)."""
    import duckdb

    con = duckdb.connect()
    try:
        row = con.execute(
            f"""
            SELECT count(*),
                   coalesce(bit_xor(md5_number_upper(r)), 0),
                   coalesce(bit_xor(md5_number_lower(r)), 0)
            FROM (SELECT concat_ws('|', stay_id, hour, variable, printf('%.6g', value)) AS r
                  FROM read_parquet('{path}'))
            """
        ).fetchone()
    finally:
        con.close()
    if row is None:  # an aggregate without GROUP BY always returns one row
        raise RuntimeError(f"{path}: the hourly digest query returned no row")
    n, upper, lower = row
    return hashlib.sha256(f"{n}:{upper}:{lower}".encode()).hexdigest()


def fingerprint_parts(
    stays: pd.DataFrame, label_cols: list[str], hourly: str, spec_hashes: dict[str, str]
) -> dict[str, str]:
    """One digest per part of a cohort (see the module docstring)."""
    return {
        "stays": _frame_digest(stays[["stay_id", "subject_id", "hadm_id"]]),
        "folds": _frame_digest(stays[["stay_id", "fold"]]),
        "labels": _frame_digest(stays[["stay_id", *label_cols]]),
        "cxr": _frame_digest(stays[["stay_id", "dicom_id"]]),
        "hourly": hourly,
        "definitions": hashlib.sha256(json.dumps(spec_hashes, sort_keys=True).encode()).hexdigest(),
    }


def combine(parts: dict[str, str]) -> str:
    """The fingerprint of a set of parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
