"""Build cohorts from a MEDS dataset (Medical Event Data Standard).

A MEDS folder holds ``data/**/*.parquet`` (one row per event: ``subject_id``, ``time``, ``code``,
``numeric_value``, ``text_value`` and extension columns) and ``metadata/`` (``codes.parquet``,
``subject_splits.parquet``, ``dataset.json``). The codes named in ``tasks/meds_mapping.yaml`` (by
default those of the MIMIC-IV MEDS ETL) are read, out of core with DuckDB, into views shaped like
the MIMIC-IV tables the cohort builder reads, and the builder's own SQL does the rest: the same
cohort rules, label rules, CXR link and hourly series as a build from the MIMIC-IV files.

What MEDS does not carry is derived as the ETL defines it: an admission's death time is the
subject's ``MEDS_DEATH`` time when its discharge location is ``DIED`` and that time lies within
the admission; ``dod`` is the date of ``MEDS_DEATH``; age is the year of the ICU admission minus
the year of ``MEDS_BIRTH``. The subject splits of ``metadata/`` are not used: folds are the
harness's subject folds, as for every source without its own partition of every fold.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError, SpecError

#: Columns every MEDS data file has (the MEDS schema).
MEDS_COLUMNS = ("subject_id", "time", "code", "numeric_value")
CODE_KEYS = (
    "icu_admission", "icu_discharge", "hospital_admission", "hospital_discharge", "birth",
    "death", "gender", "diagnosis", "measurement", "output", "image",
)  # fmt: skip
COLUMN_KEYS = ("admission_id", "stay_id", "race", "insurance", "dicom_id", "study_id")
_CODE = re.compile(r"^[A-Za-z0-9_]+(//[A-Za-z0-9_]+)*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MedsMapping:
    """The parsed ``meds_mapping.yaml``: code prefixes, the death discharge location and the
    extension column names."""

    codes: dict[str, str]
    died: str
    columns: dict[str, str]
    path: Path
    sha256: str


def load_meds_mapping(path: Path | None = None) -> MedsMapping:
    """Read and check ``tasks/meds_mapping.yaml`` (or ``path``).

    Raises:
        SpecError: a key is missing, or a code or column name is not a plain identifier.
    """
    from harness.cohort.spec import _read_yaml, tasks_dir

    path = Path(path) if path is not None else tasks_dir() / "meds_mapping.yaml"
    data = _read_yaml(path)
    fix = "see the keys and comments of the shipped tasks/meds_mapping.yaml"
    if not isinstance(data, dict):
        raise SpecError("not a mapping", path=path, fix=fix)
    codes, columns = data.get("codes"), data.get("columns")
    for section, keys, value, pattern in (
        ("codes", CODE_KEYS, codes, _CODE),
        ("columns", COLUMN_KEYS, columns, _COLUMN),
    ):
        if not isinstance(value, dict):
            raise SpecError(f"field {section!r} must be a mapping", path=path, fix=fix)
        for key in keys:
            text = value.get(key)
            if not isinstance(text, str) or not pattern.match(text):
                raise SpecError(
                    f"field {section}.{key} must be "
                    + ("a code prefix like LAB or DIAGNOSIS//ICD" if section == "codes"
                       else "a column name")
                    + f", got {text!r}",
                    path=path,
                    fix=fix,
                )  # fmt: skip
    died = data.get("died_discharge_location")
    if not isinstance(died, str) or not died:
        raise SpecError("field died_discharge_location must be a string", path=path, fix=fix)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(codes, dict) and isinstance(columns, dict)  # checked above
    return MedsMapping(
        {k: codes[k] for k in CODE_KEYS}, died, {k: columns[k] for k in COLUMN_KEYS}, path, digest
    )


def data_files(root: Path) -> list[Path]:
    """The event files of a MEDS folder (``data/**/*.parquet``)."""
    return sorted((Path(root) / "data").rglob("*.parquet"))


def is_meds(path: Path) -> bool:
    """A MEDS folder: ``data/`` with parquet files and a ``metadata/`` folder."""
    return (Path(path) / "metadata").is_dir() and bool(data_files(path))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _part(n: int) -> str:
    return f"split_part(code, '//', {n})"


def create_views(con: Any, root: Path, mapping: MedsMapping, *, images: bool = True) -> None:
    """Create the MIMIC-IV-shaped views the builder reads over the MEDS events of ``root``
    (``images`` false: no image events are read, as a MIMIC build without MIMIC-CXR).

    Raises:
        InputError: a required column is missing from the data files.
    """
    files = data_files(root)
    listing = ", ".join(_q(str(p)) for p in files)
    con.execute(
        f"CREATE VIEW meds AS SELECT * FROM read_parquet([{listing}], union_by_name = true)"
    )
    have = {r[0] for r in con.execute("DESCRIBE meds").fetchall()}
    c = mapping.columns
    need = [*MEDS_COLUMNS, c["admission_id"], c["stay_id"]]
    missing = [n for n in need if n not in have]
    if missing:
        raise InputError(
            f"the MEDS data files lack column(s) {missing}",
            path=Path(root) / "data",
            fix="write the events with the MEDS columns and the extension columns named in "
            "tasks/meds_mapping.yaml (`columns:`; the MIMIC-IV MEDS ETL writes hadm_id and "
            "icustay_id)",
        )

    def col(key: str, cast: str) -> str:
        name = c[key]
        return f'CAST("{name}" AS {cast})' if name in have else f"CAST(NULL AS {cast})"

    def coded(key: str) -> str:
        prefix = mapping.codes[key]
        return f"(code = {_q(prefix)} OR starts_with(code, {_q(prefix + '//')}))"

    hadm, stay = col("admission_id", "BIGINT"), col("stay_id", "BIGINT")
    depth = {k: v.count("//") + 1 for k, v in mapping.codes.items()}  # parts in the prefix
    con.execute(
        f"""
        CREATE VIEW icustays AS
        SELECT a.subject_id, a.hadm_id, a.stay_id, a.first_careunit, a.intime, d.outtime
        FROM (SELECT CAST(subject_id AS BIGINT) AS subject_id, {hadm} AS hadm_id,
                     {stay} AS stay_id, {_part(depth["icu_admission"] + 1)} AS first_careunit,
                     CAST(time AS TIMESTAMP) AS intime
              FROM meds WHERE {coded("icu_admission")}) a
        LEFT JOIN (SELECT {stay} AS stay_id, max(CAST(time AS TIMESTAMP)) AS outtime
                   FROM meds WHERE {coded("icu_discharge")} GROUP BY ALL) d
          ON d.stay_id = a.stay_id
        """
    )
    con.execute(
        f"""
        CREATE VIEW patients AS
        SELECT s.subject_id, g.gender, 0 AS anchor_age, year(b.born) AS anchor_year,
               strftime(dd.died, '%Y-%m-%d') AS dod
        FROM (SELECT DISTINCT CAST(subject_id AS BIGINT) AS subject_id FROM meds) s
        LEFT JOIN (SELECT CAST(subject_id AS BIGINT) AS subject_id,
                          min({_part(depth["gender"] + 1)}) AS gender
                   FROM meds WHERE {coded("gender")} GROUP BY ALL) g USING (subject_id)
        LEFT JOIN (SELECT CAST(subject_id AS BIGINT) AS subject_id, min(time) AS born
                   FROM meds WHERE {coded("birth")} GROUP BY ALL) b USING (subject_id)
        LEFT JOIN (SELECT CAST(subject_id AS BIGINT) AS subject_id,
                          min(CAST(time AS TIMESTAMP)) AS died
                   FROM meds WHERE {coded("death")} GROUP BY ALL) dd USING (subject_id)
        """
    )
    died = _q(mapping.died)
    con.execute(
        f"""
        CREATE VIEW admissions AS
        SELECT a.subject_id, a.hadm_id, a.admittime, d.dischtime,
               CASE WHEN d.location = {died} AND dd.died BETWEEN a.admittime AND d.dischtime
                    THEN dd.died END AS deathtime,
               a.admission_type, a.insurance, a.race,
               CAST(coalesce(d.location = {died}, false) AS INTEGER) AS hospital_expire_flag
        FROM (SELECT CAST(subject_id AS BIGINT) AS subject_id, {hadm} AS hadm_id,
                     CAST(time AS TIMESTAMP) AS admittime,
                     {_part(depth["hospital_admission"] + 1)} AS admission_type,
                     {col("insurance", "VARCHAR")} AS insurance, {col("race", "VARCHAR")} AS race
              FROM meds WHERE {coded("hospital_admission")}) a
        LEFT JOIN (SELECT {hadm} AS hadm_id, max(CAST(time AS TIMESTAMP)) AS dischtime,
                          max({_part(depth["hospital_discharge"] + 1)}) AS location
                   FROM meds WHERE {coded("hospital_discharge")} GROUP BY ALL) d
          ON d.hadm_id = a.hadm_id
        LEFT JOIN (SELECT CAST(subject_id AS BIGINT) AS subject_id,
                          min(CAST(time AS TIMESTAMP)) AS died
                   FROM meds WHERE {coded("death")} GROUP BY ALL) dd
          ON dd.subject_id = a.subject_id
        """
    )
    dx = depth["diagnosis"]
    con.execute(
        f"""
        CREATE VIEW diagnoses_icd AS
        SELECT CAST(subject_id AS BIGINT) AS subject_id, {hadm} AS hadm_id,
               {_part(dx + 2)} AS icd_code, TRY_CAST({_part(dx + 1)} AS INTEGER) AS icd_version
        FROM meds WHERE {coded("diagnosis")}
        """
    )
    item = f"TRY_CAST({_part(depth['measurement'] + 1)} AS INTEGER)"
    text = 'CAST("text_value" AS VARCHAR)' if "text_value" in have else "CAST(NULL AS VARCHAR)"
    base = f"""CAST(subject_id AS BIGINT) AS subject_id, {hadm} AS hadm_id,
               CAST(time AS TIMESTAMP) AS charttime"""
    con.execute(
        f"""
        CREATE VIEW chartevents AS
        SELECT {base}, {stay} AS stay_id, {item} AS itemid, {text} AS value,
               CAST(numeric_value AS DOUBLE) AS valuenum
        FROM meds WHERE {coded("measurement")} AND {stay} IS NOT NULL
        """
    )
    con.execute(
        f"""
        CREATE VIEW labevents AS
        SELECT {base}, {item} AS itemid, {text} AS value, CAST(numeric_value AS DOUBLE) AS valuenum
        FROM meds WHERE {coded("measurement")} AND {stay} IS NULL
        """
    )
    out_item = f"TRY_CAST({_part(depth['output'] + 1)} AS INTEGER)"
    con.execute(
        f"""
        CREATE VIEW outputevents AS
        SELECT {base}, {stay} AS stay_id, {out_item} AS itemid,
               CAST(numeric_value AS DOUBLE) AS value
        FROM meds WHERE {coded("output")}
        """
    )
    con.execute("CREATE VIEW d_items AS SELECT DISTINCT itemid FROM chartevents "
                "UNION SELECT DISTINCT itemid FROM outputevents")  # fmt: skip
    con.execute("CREATE VIEW d_labitems AS SELECT DISTINCT itemid FROM labevents")
    con.execute(
        f"""
        CREATE VIEW cxr_metadata AS
        SELECT {col("dicom_id", "VARCHAR")} AS dicom_id, CAST(subject_id AS BIGINT) AS subject_id,
               {col("study_id", "BIGINT")} AS study_id,
               {_part(depth["image"] + 1)} AS "ViewPosition",
               CAST(strftime(time, '%Y%m%d') AS BIGINT) AS "StudyDate",
               hour(time) * 10000 + minute(time) * 100 + second(time)
                 + microsecond(time) % 1000000 / 1e6 AS "StudyTime"
        FROM meds WHERE {coded("image")} AND {"true" if images else "false"}
        """
    )


def meds_dataset_name(root: Path) -> str:
    """``meds-<folder name>``, safe as a directory name."""
    return "meds-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(root).name).strip("-") or "data")


def build_meds_cohorts(
    root: Path,
    images: Path | None = None,
    *,
    dataset: str | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build ``base`` and ``matched`` cohorts from a MEDS folder (``images``: the MIMIC-CXR-JPG
    root the image events' files lie under; without it no stay has an image)."""
    from harness.cohort.build import build_from_views, existing_build
    from harness.cohort.external import file_stats
    from harness.cohort.spec import spec_hashes

    root = Path(root).expanduser().resolve()
    images = Path(images).expanduser().resolve() if images else None
    if not is_meds(root):
        raise InputError(
            "not a MEDS folder (expected data/**/*.parquet and metadata/)",
            path=root,
            fix="point --meds at the MEDS dataset root",
        )
    dataset = dataset or meds_dataset_name(root)
    mapping = load_meds_mapping()
    files = data_files(root)
    stats = file_stats(files)
    input_key = hashlib.sha256(
        json.dumps(
            {"meds": stats, "mapping": mapping.sha256, "images": str(images),
             "specs": spec_hashes(), "kind": "meds"},
            sort_keys=True,
        ).encode()
    ).hexdigest()  # fmt: skip
    if not overwrite and (existing := existing_build(dataset, input_key)):
        return existing
    where = root / "data"
    source = {
        "kind": "meds",
        "meds": str(root),
        "mimic_cxr": str(images) if images else None,
        "files": stats,
        "mapping": mapping.path.name,
        "mapping_sha256": mapping.sha256,
    }

    def on_error(exc: Exception) -> InputError:
        return InputError(
            f"reading the MEDS events failed: {str(exc).splitlines()[0]}",
            path=where,
            fix="check the data files against the MEDS schema and tasks/meds_mapping.yaml",
        )

    tables = ("icu/icustays", "hosp/patients", "hosp/admissions")
    return build_from_views(
        lambda con: create_views(con, root, mapping, images=images is not None),
        paths={name: where for name in tables},
        source=source,
        dataset=dataset,
        input_key=input_key,
        on_error=on_error,
        memory_limit=memory_limit,
        threads=threads,
        overwrite=overwrite,
    )
