"""Build cohorts from a MEDS dataset written from CLIF tables, with the CLIF reader.

The events of a MEDS folder whose codes follow ``tasks/meds_clif_mapping.yaml`` (the code scheme
is documented there: ``VITALS//heart_rate``, ``LAB//creatinine//mg/dL``, ``ADT//IN//icu``, ...)
become DuckDB views shaped like the CLIF tables :func:`harness.cohort.clif.read_clif` reads:
``patient``, ``hospitalization``, ``adt``, ``hospital_diagnosis`` and the measurement tables of
``tasks/clif_mapping.yaml``. The CLIF reader then merges the ICU segments into stays, applies the
cohort and label rules and bins the hourly series exactly as for ``--clif``: the two routes share
every rule, and a CLIF dataset and its MEDS copy build the same cohort.

What the views take from MEDS: ``patient_id`` is ``subject_id`` as text (the CLIF route casts a
patient_id of digits to the same int64); ``hospitalization_id`` is the extension column the
mapping names; the ``*_category`` fields are parts of the codes, the ``*_name`` fields the
``text_value``, ``age_at_admission`` the ``numeric_value`` of the admission event. An ADT segment
is an ``ADT//IN`` event paired with the first ``ADT//OUT`` of its hospitalization and location
category after it, no later than that category's next ``ADT//IN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cohort.clif import ClifMapping, ClifTables, clif_connection
from harness.cohort.meds import (
    MEDS_COLUMNS,
    _q,
    code_filter,
    data_files,
    meds_scan,
    number_expr,
)
from harness.errors import InputError, SpecError

#: Keys of ``codes:`` in the mapping file: the CLIF facts that are not measurements.
CODE_KEYS = (
    "sex", "race", "ethnicity", "death", "hospital_admission", "hospital_discharge", "adt_in",
    "adt_out", "diagnosis",
)  # fmt: skip
#: The CLIF tables the views stand for, besides the measurement tables of clif_mapping.yaml.
BASE_TABLES = ("patient", "hospitalization", "adt", "hospital_diagnosis")
_CODE = re.compile(r"^[A-Za-z0-9_]+(//[A-Za-z0-9_]+)*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MedsClifMapping:
    """The parsed ``meds_clif_mapping.yaml``: code prefixes of the CLIF facts and measurement
    tables, and the hospitalization id column."""

    codes: dict[str, str]
    tables: dict[str, str]
    hospitalization_id: str
    path: Path
    sha256: str


def load_meds_clif_mapping(path: Path | None = None) -> MedsClifMapping:
    """Read and check ``tasks/meds_clif_mapping.yaml`` (or ``path``).

    Raises:
        SpecError: a key is missing, or a code prefix or column name is malformed.
    """
    import hashlib

    from harness.cohort.spec import _read_yaml
    from harness.config import tasks_dir

    path = Path(path) if path is not None else tasks_dir() / "meds_clif_mapping.yaml"
    data = _read_yaml(path)
    fix = "see the keys and comments of the shipped tasks/meds_clif_mapping.yaml"
    if not isinstance(data, dict):
        raise SpecError("not a mapping", path=path, fix=fix)
    if data.get("target") != "clif":
        raise SpecError(
            f"field target must be clif, got {data.get('target')!r}", path=path, fix=fix
        )
    sections = {k: data.get(k) for k in ("codes", "tables", "columns")}
    for section, value in sections.items():
        if not isinstance(value, dict):
            raise SpecError(f"field {section!r} must be a mapping", path=path, fix=fix)
    codes, tables, columns = sections["codes"], sections["tables"], sections["columns"]
    assert isinstance(codes, dict) and isinstance(tables, dict) and isinstance(columns, dict)
    for section, keys, value in (("codes", CODE_KEYS, codes), ("tables", list(tables), tables)):
        for key in keys:
            text = value.get(key)
            if not isinstance(text, str) or not _CODE.match(text):
                raise SpecError(
                    f"field {section}.{key} must be a code prefix like VITALS or ADT//IN, "
                    f"got {text!r}",
                    path=path,
                    fix=fix,
                )
    hid = columns.get("hospitalization_id")
    if not isinstance(hid, str) or not _COLUMN.match(hid):
        raise SpecError(
            f"field columns.hospitalization_id must be a column name, got {hid!r}",
            path=path,
            fix=fix,
        )
    return MedsClifMapping(
        {k: codes[k] for k in CODE_KEYS},
        {str(k): str(v) for k, v in tables.items()},
        hid,
        path,
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _after(depth: int) -> str:
    """SQL: the code's parts from ``depth + 1`` on, joined again (NULL when there are none)."""
    return f"nullif(array_to_string(string_split(code, '//')[{depth + 1}:], '//'), '')"


def _nth(depth: int) -> str:
    """SQL: the code's part ``depth + 1`` (NULL when absent or empty)."""
    return f"nullif(split_part(code, '//', {depth + 1}), '')"


def _depth(prefix: str) -> int:
    return prefix.count("//") + 1


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_clif_views(
    con: Any, root: Path, mapping: MedsClifMapping, clif_mapping: ClifMapping
) -> dict[str, str]:
    """Create views shaped like the CLIF tables over the MEDS events of ``root``; returns CLIF
    table name -> view name.

    Raises:
        InputError: a required column is missing from the data files, a hospitalization has
            more than one admission event, or the measurement table has no code prefix.
    """
    con.execute(f"CREATE VIEW meds AS SELECT * FROM {meds_scan(root)}")
    have = {r[0]: r[1] for r in con.execute("DESCRIBE meds").fetchall()}
    where = Path(root) / "data"
    missing = [n for n in (*MEDS_COLUMNS, mapping.hospitalization_id) if n not in have]
    if missing:
        raise InputError(
            f"the MEDS data files lack column(s) {missing}",
            path=where,
            fix="write the events with the MEDS columns and the hospitalization id column named "
            f"in {mapping.path.name} (`columns.hospitalization_id`), on every hospitalization, "
            "ADT, diagnosis and measurement event",
        )
    c = mapping.codes
    hid = f"CAST({_quote(mapping.hospitalization_id)} AS VARCHAR)"
    text = "CAST(text_value AS VARCHAR)" if "text_value" in have else "CAST(NULL AS VARCHAR)"
    num = number_expr(have["numeric_value"])
    time = "CAST(time AS TIMESTAMP)"
    patient = "CAST(subject_id AS VARCHAR)"
    views: dict[str, str] = {}

    def view(table: str, sql: str) -> None:
        name = _quote(f"clif_{table}")
        con.execute(f"CREATE VIEW {name} AS {sql}")
        views[table] = name

    def static(key: str, category: str, name: str | None) -> str:
        """One patient fact: its category (and name) from the patient's event of that code."""
        d = _depth(c[key])
        named = f", first({text} ORDER BY code, {text}) AS {name}" if name else ""
        return (
            f"SELECT {patient} AS patient_id, first({_nth(d)} ORDER BY code, {text}) AS "
            f"{category}{named} FROM meds WHERE {code_filter(c[key])} GROUP BY ALL"
        )

    view(
        "patient",
        f"""
        SELECT s.patient_id, r.race_name, r.race_category, e.ethnicity_category, g.sex_category,
               d.death_dttm
        FROM (SELECT DISTINCT {patient} AS patient_id FROM meds) s
        LEFT JOIN ({static("race", "race_category", "race_name")}) r USING (patient_id)
        LEFT JOIN ({static("ethnicity", "ethnicity_category", None)}) e USING (patient_id)
        LEFT JOIN ({static("sex", "sex_category", None)}) g USING (patient_id)
        LEFT JOIN (SELECT {patient} AS patient_id, min({time}) AS death_dttm
                   FROM meds WHERE {code_filter(c["death"])} GROUP BY ALL) d USING (patient_id)
        """,
    )
    admit, leave = _depth(c["hospital_admission"]), _depth(c["hospital_discharge"])
    view(
        "hospitalization",
        f"""
        SELECT a.patient_id, a.hospitalization_id, a.admission_dttm, d.discharge_dttm,
               a.age_at_admission, a.admission_type_name, a.admission_type_category,
               d.discharge_name, d.discharge_category
        FROM (SELECT {patient} AS patient_id, {hid} AS hospitalization_id,
                     {time} AS admission_dttm, {num} AS age_at_admission,
                     {text} AS admission_type_name, {_after(admit)} AS admission_type_category
              FROM meds WHERE {code_filter(c["hospital_admission"])}) a
        LEFT JOIN (SELECT {hid} AS hospitalization_id, max({time}) AS discharge_dttm,
                          first({_after(leave)} ORDER BY {time} DESC) AS discharge_category,
                          first({text} ORDER BY {time} DESC) AS discharge_name
                   FROM meds WHERE {code_filter(c["hospital_discharge"])} GROUP BY ALL) d
          USING (hospitalization_id)
        """,
    )
    twice = con.execute(
        f"SELECT hospitalization_id, count(*) FROM {views['hospitalization']} "
        "GROUP BY ALL HAVING count(*) > 1 ORDER BY 1 LIMIT 3"
    ).fetchall()
    if twice:
        raise InputError(
            f"hospitalization_id {twice[0][0]} has {twice[0][1]} {c['hospital_admission']} "
            f"events ({len(twice)} such hospitalization(s) listed at most 3: "
            f"{', '.join(str(r[0]) for r in twice)})",
            path=where,
            fix=f"write one {c['hospital_admission']} event per hospitalization_id",
        )
    into, out = _depth(c["adt_in"]), _depth(c["adt_out"])
    view(
        "adt",
        f"""
        WITH ins AS (
            SELECT row_number() OVER () AS segment, {hid} AS hospitalization_id,
                   {time} AS in_dttm, {text} AS location_name,
                   {_after(into)} AS location_category
            FROM meds WHERE {code_filter(c["adt_in"])}),
        nexts AS (
            SELECT *, lead(in_dttm) OVER (PARTITION BY hospitalization_id, location_category
                                          ORDER BY in_dttm) AS next_in
            FROM ins),
        outs AS (
            SELECT {hid} AS hospitalization_id, {time} AS out_dttm,
                   {_after(out)} AS location_category
            FROM meds WHERE {code_filter(c["adt_out"])})
        SELECT i.hospitalization_id, i.in_dttm, min(o.out_dttm) AS out_dttm, i.location_name,
               i.location_category
        FROM nexts i
        LEFT JOIN outs o
          ON o.hospitalization_id = i.hospitalization_id
         AND o.location_category IS NOT DISTINCT FROM i.location_category
         AND o.out_dttm > i.in_dttm AND (i.next_in IS NULL OR o.out_dttm <= i.next_in)
        GROUP BY i.segment, i.hospitalization_id, i.in_dttm, i.location_name,
                 i.location_category
        """,
    )
    dx = _depth(c["diagnosis"])
    view(
        "hospital_diagnosis",
        f"""
        SELECT {hid} AS hospitalization_id, {_nth(dx)} AS diagnosis_code_format,
               {_after(dx + 1)} AS diagnosis_code
        FROM meds WHERE {code_filter(c["diagnosis"])}
        """,
    )
    for table, cols in clif_mapping.tables.items():
        used = [v for v in clif_mapping.variables.values() if v.table == table]
        if not used:
            continue
        prefix = mapping.tables.get(table)
        if prefix is None:
            raise SpecError(
                f"field tables.{table} is missing: {clif_mapping.path.name} reads the CLIF table "
                f"{table!r}",
                path=mapping.path,
                fix=f"add `{table}: <code prefix>` under `tables:`",
            )
        d = _depth(prefix)
        select = [f"{hid} AS hospitalization_id", f"{time} AS {_quote(cols['time'])}"]
        if "category" in cols:
            select += [
                f"{_nth(d)} AS {_quote(cols['category'])}",
                f"{num} AS {_quote(cols['value'])}",
            ]
            if "unit" in cols:
                select.append(f"{_after(d + 1)} AS {_quote(cols['unit'])}")
        else:
            columns = sorted({v.column for v in used if v.column})
            select += [
                f"CASE WHEN {_after(d)} = {_q(col)} THEN {num} END AS {_quote(col)}"
                for col in columns
            ]
        view(table, f"SELECT {', '.join(select)} FROM meds WHERE {code_filter(prefix)}")
    return views


class MedsClifTables(ClifTables):
    """The CLIF tables :func:`harness.cohort.clif.read_clif` reads, as views over MEDS events."""

    def __init__(
        self,
        root: Path,
        mapping: MedsClifMapping,
        clif_mapping: ClifMapping,
        *,
        threads: int | None = None,
        memory_limit: str = "1GB",
    ):
        self.root = Path(root)
        self.con = clif_connection(threads=threads, memory_limit=memory_limit)
        self.views = create_clif_views(self.con, self.root, mapping, clif_mapping)
        self.mapping = mapping

    def path(self, table: str) -> Path:
        """The MEDS data folder (error messages name it for every table)."""
        return self.root / "data"

    def scan(self, table: str) -> str:
        if table not in self.views:
            raise InputError(
                f"no events stand for the CLIF table {table!r}",
                path=self.mapping.path,
                fix=f"name its code prefix under `tables:` in {self.mapping.path.name}",
            )
        return self.views[table]


def build_clif_meds_cohorts(
    root: Path,
    mapping_path: Path | None = None,
    *,
    chosen: str | None = None,
    dataset: str | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build the ``base`` and (empty) ``matched`` cohorts of a MEDS folder in CLIF codes, with
    the CLIF reader (``chosen``: the ``--meds-mapping`` value a rebuild repeats, None when the
    vocabulary was detected)."""
    import duckdb

    from harness.cohort.clif import load_clif_mapping, read_clif, write_clif_cohorts
    from harness.cohort.external import file_stats
    from harness.cohort.meds import meds_dataset_name

    root = Path(root).expanduser().resolve()
    mapping = load_meds_clif_mapping(mapping_path)
    clif_mapping = load_clif_mapping()
    where = root / "data"
    try:
        tables = MedsClifTables(
            root, mapping, clif_mapping, threads=threads, memory_limit=memory_limit
        )
        frames = read_clif(mapping=clif_mapping, tables=tables)
    except duckdb.Error as exc:
        raise InputError(
            f"reading the MEDS events failed: {str(exc).splitlines()[0]}",
            path=where,
            fix=f"check the data files against the MEDS schema and {mapping.path.name}",
        ) from None
    stats = file_stats(data_files(root))
    source = {
        "kind": "meds",
        "meds": str(root),
        "mimic_cxr": None,
        "files": stats,
        "mapping": mapping.path.name,
        "mapping_sha256": mapping.sha256,
        "meds_mapping": chosen,
        "clif_mapping": clif_mapping.path.name,
        "clif_mapping_sha256": clif_mapping.sha256,
    }
    splits = root / "metadata" / "subject_splits.parquet"
    return write_clif_cohorts(
        frames,
        dataset=dataset or meds_dataset_name(root),
        source=source,
        input_parts={
            "meds": stats,
            "mapping": mapping.sha256,
            "clif_mapping": clif_mapping.sha256,
        },
        table_sources={t: f"meds:{p}" for t, p in mapping.tables.items()},
        extra_manifest={
            "meds": {
                "vocabulary": "clif",
                "subject_splits": "not used (harness subject folds)"
                if splits.is_file()
                else "absent",
            }
        },
        overwrite=overwrite,
    )
