"""Locate and validate the MIMIC-IV and MIMIC-CXR-JPG source tables and expose them to DuckDB.

Each table is read where it lies (``.csv.gz``, ``.csv`` or a user's ``.parquet`` conversion) with
explicit column types; only the columns the builder needs are required. Layout problems (a missing
file or column, the v1.0 ``core/`` module) raise :class:`InputError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cohort.datasources import DATA_SOURCES
from harness.errors import InputError

logger = logging.getLogger(__name__)

#: The registry of source formats `harness cohort build` reads (:mod:`harness.cohort.datasources`);
#: this module locates the tables of the ``mimic`` one.
SOURCES = DATA_SOURCES

TS = "TIMESTAMP"
#: Required columns and their DuckDB types, per table (module/name relative to the source root).
MIMIC_IV_TABLES: dict[str, dict[str, str]] = {
    "hosp/patients": {
        "subject_id": "BIGINT",
        "gender": "VARCHAR",
        "anchor_age": "INTEGER",
        "anchor_year": "INTEGER",
        "dod": "VARCHAR",  # a date in v2.x; parsed leniently below
    },
    "hosp/admissions": {
        "subject_id": "BIGINT",
        "hadm_id": "BIGINT",
        "admittime": TS,
        "dischtime": TS,
        "deathtime": TS,
        "admission_type": "VARCHAR",
        "insurance": "VARCHAR",
        "race": "VARCHAR",
        "hospital_expire_flag": "INTEGER",
    },
    "icu/icustays": {
        "subject_id": "BIGINT",
        "hadm_id": "BIGINT",
        "stay_id": "BIGINT",
        "first_careunit": "VARCHAR",
        "intime": TS,
        "outtime": TS,
    },
    "hosp/diagnoses_icd": {
        "subject_id": "BIGINT",
        "hadm_id": "BIGINT",
        "icd_code": "VARCHAR",
        "icd_version": "INTEGER",
    },
    "icu/chartevents": {
        "stay_id": "BIGINT",
        "charttime": TS,
        "itemid": "INTEGER",
        "value": "VARCHAR",
        "valuenum": "DOUBLE",
    },
    "hosp/labevents": {
        "subject_id": "BIGINT",
        "charttime": TS,
        "itemid": "INTEGER",
        "valuenum": "DOUBLE",
    },
    "icu/outputevents": {
        "stay_id": "BIGINT",
        "charttime": TS,
        "itemid": "INTEGER",
        "value": "DOUBLE",
    },
    "icu/d_items": {"itemid": "INTEGER"},
    "hosp/d_labitems": {"itemid": "INTEGER"},
}
CXR_METADATA_COLUMNS: dict[str, str] = {
    "dicom_id": "VARCHAR",
    "subject_id": "BIGINT",
    "study_id": "BIGINT",
    "ViewPosition": "VARCHAR",
    "StudyDate": "BIGINT",
    "StudyTime": "DOUBLE",
}
_SUFFIXES = (".csv.gz", ".csv", ".parquet")


@dataclass(frozen=True)
class SourceTable:
    """One located table file and the typed columns the builder reads from it."""

    name: str
    path: Path
    columns: dict[str, str]
    header: tuple[str, ...]

    @property
    def is_parquet(self) -> bool:
        return self.path.name.endswith(".parquet")

    def relation_sql(self) -> str:
        """A DuckDB SELECT over the file with the required columns, typed."""
        path = str(self.path).replace("'", "''")
        if self.is_parquet:
            cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in self.columns.items())
            return f"SELECT {cols} FROM read_parquet('{path}')"
        types = {c: self.columns.get(c, "VARCHAR") for c in self.header}
        spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in types.items()) + "}"
        cols = ", ".join(f'"{c}"' for c in self.columns)
        return (
            f"SELECT {cols} FROM read_csv('{path}', header=true, auto_detect=false, "
            f"delim=',', quote='\"', escape='\"', columns={spec})"
        )

    def stat(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"path": str(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_header(path: Path) -> tuple[str, ...]:
    try:
        if path.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return tuple(pq.read_schema(path).names)
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            line = fh.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the file header: {exc}", path=path, fix="re-download the file"
        ) from None
    import csv

    return tuple(next(csv.reader([line]), []))


def _locate(root: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        candidate = root / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _open_table(name: str, path: Path, columns: dict[str, str]) -> SourceTable:
    header = _read_header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; expected at least "
            f"{', '.join(columns)} (found {', '.join(header) or 'no header'})",
            path=path,
            fix="point the builder at an unmodified MIMIC-IV v2.2+ / MIMIC-CXR-JPG 2.x copy",
        )
    return SourceTable(name=name, path=path, columns=columns, header=header)


def open_mimic_iv(root: Path) -> dict[str, SourceTable]:
    """Validate a MIMIC-IV root (``hosp/`` and ``icu/`` modules) and return its tables."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            "MIMIC-IV directory not found", path=root, fix="pass the folder holding hosp/ and icu/"
        )
    if (root / "core").is_dir() and not (root / "hosp" / "admissions.csv.gz").exists():
        raise InputError(
            "this looks like the MIMIC-IV v1.0 layout (a core/ module holding patients, "
            "admissions and transfers); expected the v2.0+ layout with hosp/patients.csv.gz, "
            "hosp/admissions.csv.gz and icu/icustays.csv.gz",
            path=root / "core",
            fix="download MIMIC-IV v2.2 or later (the cohort definitions use its column names)",
        )
    tables = {}
    for name, columns in MIMIC_IV_TABLES.items():
        path = _locate(root, name)
        if path is None:
            raise InputError(
                f"missing MIMIC-IV table {name}: expected {name}.csv.gz (or .csv / .parquet)",
                path=root / f"{name}.csv.gz",
                fix="pass --mimic-iv the MIMIC-IV root that contains hosp/ and icu/",
            )
        tables[name] = _open_table(name, path, columns)
    return tables


def open_mimic_cxr(root: Path) -> SourceTable:
    """Validate a MIMIC-CXR-JPG root and return its metadata table."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            "MIMIC-CXR-JPG directory not found",
            path=root,
            fix="pass --mimic-cxr the folder holding mimic-cxr-2.0.0-metadata.csv.gz and files/",
        )
    found = sorted(p for p in root.glob("mimic-cxr-*-metadata*") if p.name.endswith(_SUFFIXES))
    if not found:
        raise InputError(
            "missing the MIMIC-CXR-JPG metadata table: expected mimic-cxr-2.0.0-metadata.csv.gz",
            path=root / "mimic-cxr-2.0.0-metadata.csv.gz",
            fix="pass --mimic-cxr the MIMIC-CXR-JPG root (it holds the metadata CSV and files/)",
        )
    return _open_table("mimic-cxr-metadata", found[-1], CXR_METADATA_COLUMNS)


def version_guess(root: Path, tables: dict[str, SourceTable]) -> str:
    """Best guess of the MIMIC-IV release, from the folder name or the columns present."""
    for part in (root.name, root.parent.name):
        if re.fullmatch(r"v?\d+(\.\d+)+", part):
            return part.lstrip("v")
    if "caregiver_id" in tables["icu/chartevents"].header:
        return "2.2+"
    return "2.0-2.1"


_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_CSV_FILE = re.compile(r"^\s*file = (.+?)\s*$", re.M)
_CSV_COLUMN = re.compile(
    r'Error when converting column "([^"]+)"\. Could not convert string "(.*)" to'
)
_CAST = re.compile(
    r"Could not convert string '(.*)' to (\w+) when casting from source column (\w+)"
)
_READ_FIX = "correct or blank the value, or re-download the file"


def _short(value: str, n: int = 40) -> str:
    return value if len(value) <= n else value[: n - 3] + "..."


def source_error(exc: Exception, tables: list[SourceTable], root: Path) -> InputError:
    """One-line :class:`InputError` for a DuckDB error raised while reading the source tables:
    the file, the column and the line (CSV) or row (parquet) of an unreadable value."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    by_path = {str(t.path): t for t in tables}
    line, file = _CSV_LINE.search(text), _CSV_FILE.search(text)
    if line and file:
        table = by_path.get(file.group(1))
        col = _CSV_COLUMN.search(text)
        if col:
            name, value = col.group(1), col.group(2)
            kind = table.columns.get(name, "?") if table else "?"
            return InputError(
                f"line {line.group(1)}, column {name}: {_short(value)!r} is not a {kind} value",
                path=file.group(1),
                fix=_READ_FIX,
            )
        detail = next(
            (ln for ln in lines[1:] if not ln.startswith("Original Line")), first.split(": ")[-1]
        )
        return InputError(
            f"line {line.group(1)}: {detail}",
            path=file.group(1),
            fix="correct that line, or re-download the file",
        )
    cast = _CAST.search(text)
    if cast:
        value, kind, name = cast.groups()
        located = _locate_bad_value(tables, name, kind)
        if located is not None:
            table, row = located
            return InputError(
                f"row {row}, column {name}: {_short(value)!r} is not a {kind} value",
                path=table.path,
                fix=_READ_FIX,
            )
        return InputError(
            f"column {name}: {_short(value)!r} is not a {kind} value",
            path=root,
            fix=_READ_FIX,
        )
    return InputError(
        f"could not read the source tables: {first}",
        path=root,
        fix="check that the files are complete, unmodified MIMIC-IV / MIMIC-CXR-JPG tables",
    )


def _locate_bad_value(tables: list[SourceTable], column: str, kind: str) -> tuple[Any, int] | None:
    """The first parquet table and row (1-based) whose ``column`` does not convert to ``kind``."""
    import duckdb

    con = duckdb.connect()
    try:
        for t in tables:
            if not t.is_parquet or column not in t.columns:
                continue
            path = str(t.path).replace("'", "''")
            row = con.execute(
                f"""SELECT file_row_number FROM read_parquet('{path}', file_row_number=true)
                    WHERE "{column}" IS NOT NULL AND TRY_CAST("{column}" AS {kind}) IS NULL
                    ORDER BY file_row_number LIMIT 1"""
            ).fetchone()
            if row is not None:
                return t, int(row[0]) + 1
    except duckdb.Error:
        return None
    finally:
        con.close()
    return None
