"""Build cohorts from a MEDS dataset (Medical Event Data Standard).

A MEDS folder holds ``data/**/*.parquet`` (one row per event: ``subject_id``, ``time``, ``code``,
``numeric_value``, ``text_value`` and extension columns) and ``metadata/`` (``codes.parquet``,
``subject_splits.parquet``, ``dataset.json``). Two code vocabularies are read, each named by a
mapping file in ``tasks/`` whose ``target`` says which builder its events feed:

- ``meds_mapping.yaml`` (``target: mimic``): the codes of the MIMIC-IV MEDS ETL, read out of core
  with DuckDB into views shaped like the MIMIC-IV tables; the MIMIC builder's own SQL does the
  rest (the same cohort rules, label rules, CXR link and hourly series as a build from the files);
- ``meds_clif_mapping.yaml`` (``target: clif``): CLIF codes (``VITALS//heart_rate``,
  ``LAB//creatinine//mg/dL``, ...), read into views shaped like the CLIF tables that the CLIF
  reader builds from (:mod:`harness.cohort.clif_meds`).

The vocabulary is detected from the data files' extension columns (the id column each mapping
names: ``hadm_id`` for MIMIC-IV, ``hospitalization_id`` for CLIF); ``mapping`` (the command
line's ``--meds-mapping``) names a shipped one or a YAML file instead.

What the MIMIC-IV ETL does not carry is derived as the ETL defines it: an admission's death time
is the subject's ``MEDS_DEATH`` time when its discharge location is ``DIED`` and that time lies
within the admission; ``dod`` is the date of ``MEDS_DEATH``; age is the year of the ICU admission
minus the year of ``MEDS_BIRTH``. MEDS stores ``numeric_value`` as float32: a float32 value is
read as the shortest decimal that rounds to it (0.21, not 0.2099999934), so a source value of up
to 6 significant digits is read as the source held it. The subject splits of ``metadata/`` are
not used: folds are the harness's subject folds, as for every source without its own partition
of every fold (a MEDS split is one train/tuning/held_out partition, the protocol needs
``n_folds`` subject folds, and the same patients get the same folds in every format).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError, SpecError, UsageError

#: Columns every MEDS data file has (the MEDS schema).
MEDS_COLUMNS = ("subject_id", "time", "code", "numeric_value")
CODE_KEYS = (
    "icu_admission", "icu_discharge", "hospital_admission", "hospital_discharge", "birth",
    "death", "gender", "diagnosis", "measurement", "output", "image",
)  # fmt: skip
COLUMN_KEYS = ("admission_id", "stay_id", "race", "insurance", "dicom_id", "study_id")
_CODE = re.compile(r"^[A-Za-z0-9_]+(//[A-Za-z0-9_]+)*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The vocabularies shipped in ``tasks/``: ``--meds-mapping`` name -> mapping file.
SHIPPED_MAPPINGS = {"mimic": "meds_mapping.yaml", "clif": "meds_clif_mapping.yaml"}
#: The builders a mapping's ``target`` may name.
TARGETS = ("mimic", "clif")


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
    if data.get("target", "mimic") != "mimic":
        raise SpecError(
            f"field target is {data.get('target')!r}: this reader builds MIMIC-IV-shaped views",
            path=path,
            fix="use `target: mimic`, or read the file with the reader of its target",
        )
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


def code_filter(prefix: str) -> str:
    """SQL condition: the event's code is ``prefix`` or starts with ``prefix//``."""
    return f"(code = {_q(prefix)} OR starts_with(code, {_q(prefix + '//')}))"


def number_expr(kind: str) -> str:
    """SQL for ``numeric_value`` as DOUBLE; a float32 column (the MEDS type) is read as the
    shortest decimal that rounds to each value, the number the source most likely held."""
    if kind.upper() in ("FLOAT", "REAL", "FLOAT4"):
        return "CAST(CAST(numeric_value AS VARCHAR) AS DOUBLE)"
    return "CAST(numeric_value AS DOUBLE)"


def meds_scan(root: Path) -> str:
    """A DuckDB FROM-clause expression reading every data file of a MEDS folder."""
    listing = ", ".join(_q(str(p)) for p in data_files(root))
    return f"read_parquet([{listing}], union_by_name = true)"


def data_columns(root: Path) -> dict[str, str]:
    """Column name -> DuckDB type over the data files of a MEDS folder (file footers only)."""
    import duckdb

    con = duckdb.connect()
    try:
        return {
            r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {meds_scan(root)}").fetchall()
        }
    finally:
        con.close()


def _yaml(path: Path) -> dict[str, Any]:
    from harness.cohort.spec import _read_yaml

    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError("not a mapping", path=path, fix="see the shipped tasks/meds_mapping.yaml")
    return data


def mapping_target(path: Path) -> str:
    """The builder a MEDS mapping file feeds (its ``target``; ``mimic`` when absent)."""
    target = _yaml(path).get("target", "mimic")
    if target not in TARGETS:
        raise SpecError(
            f"field target must be one of {', '.join(TARGETS)}, got {target!r}",
            path=path,
            fix="`target: mimic` for MIMIC-IV MEDS ETL codes, `target: clif` for CLIF codes",
        )
    return str(target)


def _id_column(path: Path) -> str:
    """The extension column whose presence marks a dataset written in a mapping's vocabulary."""
    columns = _yaml(path).get("columns") or {}
    key = "hospitalization_id" if mapping_target(path) == "clif" else "admission_id"
    return str(columns.get(key, "")) if isinstance(columns, dict) else ""


def detect_mapping(root: Path) -> str:
    """The shipped vocabulary (a key of :data:`SHIPPED_MAPPINGS`) of a MEDS folder, from the id
    column each mapping names (``hadm_id``: MIMIC-IV MEDS ETL, ``hospitalization_id``: CLIF).

    Raises:
        InputError: no shipped mapping's id column, or more than one, is in the data files.
    """
    from harness.config import tasks_dir

    have = data_columns(root)
    ids = {name: _id_column(tasks_dir() / file) for name, file in SHIPPED_MAPPINGS.items()}
    found = [name for name, col in ids.items() if col in have]
    if len(found) == 1:
        return found[0]
    listed = "; ".join(f"{col} for {name}" for name, col in ids.items())
    raise InputError(
        ("the data files have no column that tells the code vocabulary"
         if not found else f"the data files have the id columns of {' and '.join(found)}")
        + f" (extension column {listed})",
        path=Path(root) / "data",
        fix="write the id column of the vocabulary the codes use, or pass --meds-mapping "
        f"{'|'.join(SHIPPED_MAPPINGS)} or a mapping YAML file",
    )  # fmt: skip


def resolve_mapping(root: Path, choice: str | Path | None = None) -> tuple[Path, str, str | None]:
    """The mapping file of a MEDS folder, its target, and ``choice`` as a rebuild repeats it.

    ``choice``: a shipped name (``mimic``, ``clif``), a YAML path, or None (the vocabulary is
    detected, :func:`detect_mapping`, and a rebuild detects it again).
    """
    from harness.config import tasks_dir

    name = str(choice) if choice is not None else detect_mapping(root)
    if name in SHIPPED_MAPPINGS and not Path(name).is_file():
        path, given = tasks_dir() / SHIPPED_MAPPINGS[name], name
    else:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UsageError(
                f"--meds-mapping {choice}: neither a mapping name "
                f"({', '.join(SHIPPED_MAPPINGS)}) nor a YAML file"
            )
        given = str(path)
    return path, mapping_target(path), given if choice is not None else None


def create_views(con: Any, root: Path, mapping: MedsMapping, *, images: bool = True) -> None:
    """Create the MIMIC-IV-shaped views the builder reads over the MEDS events of ``root``
    (``images`` false: no image events are read, as a MIMIC build without MIMIC-CXR).

    Raises:
        InputError: a required column is missing from the data files.
    """
    con.execute(f"CREATE VIEW meds AS SELECT * FROM {meds_scan(root)}")
    have = {r[0]: r[1] for r in con.execute("DESCRIBE meds").fetchall()}
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
        return code_filter(mapping.codes[key])

    hadm, stay = col("admission_id", "BIGINT"), col("stay_id", "BIGINT")
    num = number_expr(have["numeric_value"])
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
               {num} AS valuenum
        FROM meds WHERE {coded("measurement")} AND {stay} IS NOT NULL
        """
    )
    con.execute(
        f"""
        CREATE VIEW labevents AS
        SELECT {base}, {item} AS itemid, {text} AS value, {num} AS valuenum
        FROM meds WHERE {coded("measurement")} AND {stay} IS NULL
        """
    )
    out_item = f"TRY_CAST({_part(depth['output'] + 1)} AS INTEGER)"
    con.execute(
        f"""
        CREATE VIEW outputevents AS
        SELECT {base}, {stay} AS stay_id, {out_item} AS itemid,
               {num} AS value
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
    mapping: str | Path | None = None,
    dataset: str | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build ``base`` and ``matched`` cohorts from a MEDS folder (``images``: the MIMIC-CXR-JPG
    root the image events' files lie under; without it no stay has an image). ``mapping``: a
    shipped vocabulary (``mimic``, ``clif``) or a mapping YAML; None detects it."""
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
    mapping_path, target, chosen = resolve_mapping(root, mapping)
    if target == "clif":
        if images is not None:
            raise UsageError(
                "--meds-cxr: a MEDS dataset in CLIF codes has no image events; drop --meds-cxr"
            )
        from harness.cohort.clif_meds import build_clif_meds_cohorts

        return build_clif_meds_cohorts(
            root,
            mapping_path,
            chosen=chosen,
            dataset=dataset,
            memory_limit=memory_limit,
            threads=threads,
            overwrite=overwrite,
        )
    vocabulary = load_meds_mapping(mapping_path)
    files = data_files(root)
    stats = file_stats(files)
    input_key = hashlib.sha256(
        json.dumps(
            {"meds": stats, "mapping": vocabulary.sha256, "images": str(images),
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
        "mapping": vocabulary.path.name,
        "mapping_sha256": vocabulary.sha256,
        "meds_mapping": chosen,
    }

    def on_error(exc: Exception) -> InputError:
        return InputError(
            f"reading the MEDS events failed: {str(exc).splitlines()[0]}",
            path=where,
            fix="check the data files against the MEDS schema and tasks/meds_mapping.yaml",
        )

    tables = ("icu/icustays", "hosp/patients", "hosp/admissions")
    return build_from_views(
        lambda con: create_views(con, root, vocabulary, images=images is not None),
        paths={name: where for name in tables},
        source=source,
        dataset=dataset,
        input_key=input_key,
        on_error=on_error,
        memory_limit=memory_limit,
        threads=threads,
        overwrite=overwrite,
    )
