"""Build the ``base`` and ``matched`` cohorts from MIMIC-IV + MIMIC-CXR-JPG with DuckDB.

Reads the source tables where they lie (out of core, bounded memory), applies the rules of
``tasks/cohort.yaml``, evaluates every task's declared label rule (:mod:`harness.cohort.labels`)
on the cohort's stays, computes the CXR link, folds and the 48-hour hourly series, and writes each
cohort as a content-addressed directory (:func:`write_cohort`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__, config
from harness.cohort import hourly as hourly_sql
from harness.cohort.fingerprint import combine, fingerprint_parts, hourly_digest
from harness.cohort.folds import assign_folds
from harness.cohort.labels import (
    LabelColumn,
    LabelTable,
    StayEvents,
    diagnosis_codes,
    label_stays,
    prevalence,
)
from harness.cohort.load import DATA_FILES, build_problem, file_sha256
from harness.cohort.sources import (
    CXR_METADATA_COLUMNS,
    open_mimic_cxr,
    open_mimic_iv,
    source_error,
    version_guess,
)
from harness.cohort.spec import (
    CohortSpec,
    feature_names,
    load_cohort_spec,
    load_tasks,
    load_variables,
    spec_hashes,
)
from harness.errors import InputError
from harness.io import atomic_directory, atomic_write_json, atomic_write_text, exclusive_lock
from harness.progress import Bar
from harness.progress import bar as progress_bar

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the cohort directory layout; part of every input key and manifest."""
COHORTS = ("base", "matched")
"""The cohorts one build writes, in order; ``matched`` keeps the ``base`` stays with a CXR."""
AGE_RANGE = (0, 120)
"""Plausible ages in years: stays outside are excluded by their own funnel step (data errors)."""


def _dataset_name(mimic_iv: Path) -> str:
    name = mimic_iv.name
    if re.fullmatch(r"v?\d+(\.\d+)+", name):  # .../mimiciv/2.2 -> mimiciv-2.2
        name = f"{mimic_iv.parent.name}-{name}"
    if name in ("mimic-iv", "mimiciv") and mimic_iv.parent.name:
        name = mimic_iv.parent.name  # <dataset>/mimic-iv -> <dataset>
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "mimic"


def _latest_pointer(dataset: str, cohort: str) -> Path:
    return config.cohorts_dir() / dataset / f"{cohort}.latest"


def _funnel(con: Any, spec: CohortSpec) -> tuple[list[dict[str, Any]], str]:
    """The exclusion funnel (stays and subjects left after each step) and the SQL condition of
    all its steps together, which selects the cohort from ``stays_all``."""
    lo, hi = AGE_RANGE
    steps = [
        ("icu_stays", "true"),
        ("linked_patient_and_admission", "has_patient AND has_admission AND outtime IS NOT NULL"),
        # data errors get their own steps instead of passing as "short stay" or "minor"
        ("intime_not_after_outtime", "intime <= outtime"),
        (f"age_between_{lo}_and_{hi}", f"age BETWEEN {lo} AND {hi}"),
        (f"age_at_least_{spec.min_age:g}", f"age >= {spec.min_age}"),
        (f"icu_stay_at_least_{spec.min_icu_hours:g}h", f"icu_hours >= {spec.min_icu_hours}"),
        ("alive_at_prediction", "alive_at_prediction"),
    ]
    out, cond = [], []
    for name, c in steps:
        cond.append(f"({c})")
        n, s = con.execute(
            f"SELECT count(*), count(DISTINCT subject_id) FROM stays_all WHERE {' AND '.join(cond)}"
        ).fetchone()
        out.append({"step": name, "n_stays": int(n), "n_subjects": int(s)})
    return out, " AND ".join(cond)


def _input_key(tables: dict[str, Any], cxr_table: Any, hashes: dict[str, str]) -> str:
    parts = {
        "tables": {k: t.stat() for k, t in sorted(tables.items())},
        "cxr": cxr_table.stat() if cxr_table else None,
        "specs": hashes,
        "harness": __version__,
        "schema": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def existing_build(dataset: str, input_key: str) -> dict[str, Path] | None:
    """Return ``{cohort: directory}`` of a finished build of ``dataset`` from ``input_key``.

    Follows each cohort's latest pointer and accepts it only when its manifest records the same
    input key and its files verify (:func:`harness.cohort.load.build_problem`); returns None as
    soon as one cohort is missing, damaged or was built from other inputs.
    """
    out = {}
    for cohort in COHORTS:
        pointer = _latest_pointer(dataset, cohort)
        if not pointer.is_file():
            return None
        path = pointer.parent / pointer.read_text().strip()
        manifest = path / "manifest.json"
        if not manifest.is_file():
            return None
        try:
            if json.loads(manifest.read_text()).get("input_key") != input_key:
                return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("%s is unreadable: rebuilding", manifest)
            return None
        if problem := build_problem(path):
            logger.warning("cohort %s cannot be reused (%s): rebuilding", path, problem)
            return None
        out[cohort] = path
    return out


def build_cohorts(
    mimic_iv: Path | None = None,
    mimic_cxr: Path | None = None,
    *,
    dataset: str | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build the ``base`` and ``matched`` cohorts and return their directories.

    Without sources, builds from the default synthetic dataset (generated when absent). An
    unchanged rebuild (same source files, definitions and harness version) returns the existing
    directories without recomputing; ``overwrite`` forces a rebuild and replaces them.
    """
    if mimic_iv is None:
        from harness.data.synthetic import ensure_default_dataset

        root = Path(ensure_default_dataset())
        mimic_iv = root / "mimic-iv"
        mimic_cxr = mimic_cxr or root / "mimic-cxr-jpg"
        dataset = dataset or config.DEFAULT_DATASET
    mimic_iv = Path(mimic_iv).expanduser().resolve()
    mimic_cxr = Path(mimic_cxr).expanduser().resolve() if mimic_cxr else None
    dataset = dataset or _dataset_name(mimic_iv)

    tables = open_mimic_iv(mimic_iv)
    cxr_table = open_mimic_cxr(mimic_cxr) if mimic_cxr else None
    if cxr_table is None:
        logger.warning("no MIMIC-CXR-JPG source given: no stay has a linked image")
    hashes = spec_hashes()
    input_key = _input_key(tables, cxr_table, hashes)
    if not overwrite and (existing := existing_build(dataset, input_key)):
        logger.info("cohorts of %s are up to date: %s", dataset, existing)
        return existing

    def create_views(con: Any) -> None:
        for name, table in tables.items():
            con.execute(f"CREATE VIEW {name.split('/')[1]} AS {table.relation_sql()}")
        if cxr_table is not None:
            con.execute(f"CREATE VIEW cxr_metadata AS {cxr_table.relation_sql()}")
        else:
            cols = ", ".join(f'NULL::{t} AS "{c}"' for c, t in CXR_METADATA_COLUMNS.items())
            con.execute(f"CREATE VIEW cxr_metadata AS SELECT {cols} WHERE false")

    sources = [*tables.values(), *([cxr_table] if cxr_table else [])]
    source = {
        "kind": "mimic",
        "mimic_iv": str(mimic_iv),
        "mimic_cxr": str(mimic_cxr) if mimic_cxr else None,
        "version_guess": version_guess(mimic_iv, tables),
        "files": {k: t.stat() for k, t in tables.items()}
        | ({"mimic-cxr-metadata": cxr_table.stat()} if cxr_table else {}),
    }
    return build_from_views(
        create_views,
        paths={k: t.path for k, t in tables.items()},
        source=source,
        dataset=dataset,
        input_key=input_key,
        on_error=lambda exc: source_error(exc, sources, mimic_iv),
        memory_limit=memory_limit,
        threads=threads,
        overwrite=overwrite,
    )


def build_from_views(
    create_views: Callable[[Any], None],
    *,
    paths: dict[str, Path],
    source: dict[str, Any],
    dataset: str,
    input_key: str,
    on_error: Callable[[Exception], InputError],
    memory_limit: str = "1GB",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build the cohorts from DuckDB views shaped like the MIMIC-IV tables the builder reads
    (``create_views(con)`` creates them: icustays, patients, admissions, diagnoses_icd,
    chartevents, labevents, outputevents, d_items, d_labitems, cxr_metadata); ``paths`` names
    the file behind each table (``hosp/admissions``, ...) for error messages."""
    import duckdb

    t0 = time.perf_counter()
    spec = load_cohort_spec()
    variables = load_variables()
    tasks = load_tasks()
    hashes = spec_hashes()
    cache_tmp = config.cache_root() / "tmp"
    cache_tmp.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=cache_tmp, prefix="cohort-build-") as tmp,
        progress_bar("cohort build", len(BUILD_STEPS) + len(COHORTS)) as steps,
    ):
        work = Path(tmp)
        con = duckdb.connect(str(work / "build.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{work / 'spill'}'")
            con.execute("SET preserve_insertion_order = false")
            if threads:
                con.execute(f"SET threads = {int(threads)}")
            steps.doing(BUILD_STEPS[0])
            create_views(con)
            _check_inputs(con, paths)
            steps.advance()
            stays, labels, hourly_path, dropped, missing, funnel = _run_sql(
                con, work, spec, variables, tasks, steps
            )
        except duckdb.Error as exc:
            raise on_error(exc) from None
        finally:
            con.close()
        _check_funnel(funnel, paths)

        stays["fold"] = assign_folds(stays["subject_id"].to_numpy(), spec.n_folds)
        common = {
            "schema_version": SCHEMA_VERSION,
            "dataset": dataset,
            "source": source,
            "spec_hashes": hashes,
            "rules": {
                "version": spec.version,
                "min_age": spec.min_age,
                "min_icu_hours": spec.min_icu_hours,
                "prediction_hours": spec.prediction_hours,
                "cxr_view_positions": list(spec.cxr_view_positions),
                "cxr_lookback_hours": spec.cxr_lookback_hours,
            },
            "variables": feature_names(variables),
            "variable_info": {
                name: {"group": v.group, "unit": v.unit, "source": v.source}
                for v in variables
                for name in v.output_names
            },
            "dropped_values": dropped,
            "missing_itemids": missing,
            **unavailable_manifest(labels),
            "input_key": input_key,
            "harness_version": __version__,
            "build": {"memory_limit": memory_limit, "threads": threads},
        }
        out = write_cohorts(
            work, stays, funnel, hourly_path, common, labels, overwrite, t0, steps=steps
        )
    return out


def unavailable_manifest(labels: LabelTable) -> dict[str, Any]:
    """Manifest fields naming the tasks a source could not label (none: no fields)."""
    if not labels.unavailable:
        return {}
    return {
        "labels_unavailable": list(labels.unavailable_columns),
        "tasks_unavailable": dict(labels.unavailable),
    }


def _check_inputs(con: Any, paths: dict[str, Path]) -> None:
    """Reject inputs that would give a silently wrong cohort: no ICU stays, duplicated ids."""
    icu = paths["icu/icustays"]
    if con.execute("SELECT count(*) FROM icustays").fetchone()[0] == 0:
        raise InputError(
            "the ICU stays table has no rows: there is nothing to build a cohort from",
            path=icu,
            fix="point --mimic-iv at a complete MIMIC-IV copy (icu/icustays lists every ICU stay)",
        )
    for view, key, name in (
        ("icustays", "stay_id", "icu/icustays"),
        ("admissions", "hadm_id", "hosp/admissions"),
    ):
        n_dup, examples = con.execute(
            f"""SELECT count(*), list({key} ORDER BY {key})[1:3] FROM (
                  SELECT {key} FROM {view} WHERE {key} IS NOT NULL
                  GROUP BY {key} HAVING count(*) > 1)"""
        ).fetchone()
        if n_dup:
            raise InputError(
                f"{n_dup} {key} value(s) appear on more than one row (e.g. "
                f"{', '.join(str(x) for x in examples)}); each {key} must be unique",
                path=paths[name],
                fix="remove the duplicated rows (a file concatenated twice?) or re-download it",
            )


def _check_funnel(funnel: list[dict[str, Any]], paths: dict[str, Path]) -> None:
    """Warn about data errors the funnel excluded; reject a cohort left with no stay."""
    icustays = paths["icu/icustays"]
    counts = {r["step"]: r["n_stays"] for r in funnel}
    steps = list(counts)
    lo, hi = AGE_RANGE
    for step, what, where in (
        ("intime_not_after_outtime", "have an intime after their outtime", icustays),
        (
            f"age_between_{lo}_and_{hi}",
            f"have an age outside {lo}..{hi}",
            paths["hosp/patients"],
        ),
    ):
        if step in counts:
            n = counts[steps[steps.index(step) - 1]] - counts[step]
            if n:
                logger.warning(
                    "%s: %d ICU stays %s: excluded (funnel step %s)", where, n, what, step
                )
    if funnel and funnel[-1]["n_stays"] == 0:
        trail = ", ".join(f"{r['step']} {r['n_stays']}" for r in funnel)
        raise InputError(
            f"no ICU stay passes the cohort rules (stays left after each step: {trail})",
            path=icustays,
            fix="check the source tables (and tasks/cohort.yaml); a cohort needs at least one stay",
        )


#: The steps of a build the progress bar counts (then one per cohort written).
BUILD_STEPS = (
    "reading the sources",
    "stays and exclusions",
    "CXR links",
    "labels",
    "hourly chart and lab values",
    "hourly output events",
    "writing the hourly series",
)


def _run_sql(
    con: Any,
    work: Path,
    spec: CohortSpec,
    variables: list[Any],
    tasks: list[Any],
    steps: Bar,
) -> tuple[
    pd.DataFrame, LabelTable, Path, dict[str, int], dict[str, list[int]], list[dict[str, Any]]
]:
    """Stays, labels, hourly series (a parquet file), dropped-value counts, item ids missing
    from the source, and the exclusion funnel; ``steps`` counts :data:`BUILD_STEPS` after the
    first."""

    def step(k: int) -> None:  # step k starts (the one before it is done)
        if k > 1:
            steps.advance()
        steps.doing(BUILD_STEPS[k])

    step(1)
    pred_us = int(round(spec.prediction_hours * 3600e6))
    look_us = int(round(spec.cxr_lookback_hours * 3600e6))
    con.execute(
        f"""
        CREATE TABLE stays_all AS
        SELECT i.stay_id, i.subject_id, i.hadm_id, i.intime, i.outtime, i.first_careunit,
               p.gender, a.race, a.insurance, a.admission_type, a.deathtime,
               a.admittime, a.dischtime, a.hospital_expire_flag,
               TRY_CAST(left(p.dod, 10) AS DATE) AS dod,
               p.subject_id IS NOT NULL AS has_patient, a.hadm_id IS NOT NULL AS has_admission,
               CAST(p.anchor_age + year(i.intime) - p.anchor_year AS DOUBLE) AS age,
               epoch(i.outtime - i.intime) / 3600.0 AS icu_hours,
               i.intime + to_microseconds({pred_us}) AS prediction_time,
               coalesce(a.deathtime, CASE WHEN a.hospital_expire_flag = 1 THEN a.dischtime END)
                 AS adm_death
        FROM icustays i
        LEFT JOIN (SELECT * FROM patients QUALIFY row_number() OVER (PARTITION BY subject_id) = 1)
             p ON p.subject_id = i.subject_id
        LEFT JOIN admissions a ON a.hadm_id = i.hadm_id
        """
    )
    con.execute(
        """
        ALTER TABLE stays_all ADD COLUMN alive_at_prediction BOOLEAN;
        UPDATE stays_all SET alive_at_prediction =
            (adm_death IS NULL OR adm_death >= prediction_time)
            AND (dod IS NULL OR dod >= CAST(prediction_time AS DATE));
        """
    )
    funnel, where = _funnel(con, spec)
    con.execute(f"CREATE TABLE cohort AS SELECT * FROM stays_all WHERE {where}")
    con.execute(
        "CREATE TABLE win AS SELECT stay_id, subject_id, intime, prediction_time FROM cohort"
    )

    # CXR link: latest image with an allowed view whose study time is in the window.
    step(2)
    views = ", ".join(f"'{v}'" for v in spec.cxr_view_positions)
    con.execute(
        f"""
        CREATE TABLE cxr_cand AS
        SELECT c.stay_id, x.dicom_id, x.study_id, x.subject_id, x.view, x.study_time,
               count(*) OVER (PARTITION BY c.stay_id) AS n_cand,
               row_number() OVER (PARTITION BY c.stay_id
                                  ORDER BY x.study_time DESC, x.dicom_id ASC) AS rk
        FROM cohort c
        JOIN (
            SELECT dicom_id, subject_id, study_id, upper(trim(ViewPosition)) AS view,
                   strptime(CAST(StudyDate AS VARCHAR), '%Y%m%d')
                   + to_microseconds(CAST(round(
                       (floor(StudyTime / 10000) * 3600 + floor(StudyTime / 100) % 100 * 60
                        + StudyTime % 100) * 1e6) AS BIGINT)) AS study_time
            FROM cxr_metadata
            WHERE upper(trim(ViewPosition)) IN ({views})
        ) x ON x.subject_id = c.subject_id
           AND x.study_time >= c.intime - to_microseconds({look_us})
           AND x.study_time < c.prediction_time
        """
    )
    stays = con.execute(
        """
        SELECT c.stay_id, c.subject_id, c.hadm_id, c.intime, c.outtime, c.prediction_time,
               c.age, c.gender, c.race, c.insurance, c.admission_type, c.first_careunit,
               x.dicom_id, x.study_id,
               CASE WHEN x.dicom_id IS NULL THEN NULL ELSE
                 'files/p' || left(CAST(x.subject_id AS VARCHAR), 2) || '/p' || x.subject_id
                 || '/s' || x.study_id || '/' || x.dicom_id || '.jpg' END AS cxr_path,
               epoch(x.study_time - c.intime) / 3600.0 AS cxr_time_hours,
               x.view AS cxr_view,
               coalesce(x.n_cand, 0) AS n_cxr_candidates,
               CAST(x.dicom_id IS NOT NULL AS TINYINT) AS has_cxr
        FROM cohort c
        LEFT JOIN (SELECT * FROM cxr_cand WHERE rk = 1) x ON x.stay_id = c.stay_id
        ORDER BY c.stay_id
        """
    ).df()
    step(3)
    events = _mimic_events(con, tasks)
    labels = label_stays(tasks, events)
    by_stay = labels.frame.set_axis(events.stays["stay_id"].to_numpy(), axis=0)
    labels.frame = by_stay.loc[stays["stay_id"].to_numpy()].set_axis(stays.index, axis=0)
    at = stays.columns.get_loc("dicom_id")
    stays = pd.concat([stays.iloc[:, :at], labels.frame, stays.iloc[:, at:]], axis=1)
    stays = finish_stays(stays, spec)

    # Hourly series over the base cohort.
    step(4)
    con.register("item_map_df", hourly_sql.item_map(variables))
    con.execute("CREATE TABLE item_map AS SELECT * FROM item_map_df")
    parts = [hourly_sql.numeric_sql("chartevents"), hourly_sql.numeric_sql("labevents")]
    con.execute(
        "CREATE TABLE hourly_raw AS "
        + " UNION ALL ".join(
            f"SELECT stay_id, hour, variable, value, n_dropped FROM ({p})" for p in parts
        )
    )
    step(5)
    con.execute(f"CREATE TABLE hourly_out AS {hourly_sql.output_sql()}")
    onehots = [hourly_sql.onehot_sql(v) for v in variables if v.aggregate == "onehot_last"]
    dropped_rows = con.execute(
        """
        SELECT variable, sum(n_dropped) FROM (
            SELECT variable, n_dropped FROM hourly_raw
            UNION ALL SELECT variable, n_dropped FROM hourly_out
            UNION ALL SELECT variable, 1 FROM hourly_out WHERE n_kept > 0 AND value < 0
        ) GROUP BY variable
        """
    ).fetchall()
    dropped: dict[str, int] = {v.name: 0 for v in variables if v.aggregate != "onehot_last"}
    dropped.update({str(k): int(n) for k, n in dropped_rows})
    hourly_path = work / "hourly.parquet"
    step(6)
    union = [
        "SELECT stay_id, hour, variable, value FROM hourly_raw WHERE value IS NOT NULL",
        "SELECT stay_id, hour, variable, value FROM hourly_out WHERE n_kept > 0 AND value >= 0",
        *(f"SELECT stay_id, hour, variable, value FROM ({q})" for q in onehots),
    ]
    con.execute(
        f"""
        COPY (
            SELECT CAST(stay_id AS BIGINT) AS stay_id, CAST(hour AS SMALLINT) AS hour,
                   CAST(variable AS VARCHAR) AS variable, CAST(value AS FLOAT) AS value
            FROM ({" UNION ALL ".join(union)})
            ORDER BY stay_id, hour, variable
        ) TO '{hourly_path}' (FORMAT parquet, COMPRESSION zstd)
        """
    )
    missing = _missing_itemids(con, variables)
    steps.advance()
    return stays, labels, hourly_path, dropped, missing, funnel


def _mimic_events(con: Any, tasks: list[Any]) -> StayEvents:
    """The cohort's stays as the label rules read them (``cohort`` table, stay_id order).

    MIMIC-IV records: admission_death_time = admissions.deathtime; admission_expired =
    hospital_expire_flag = 1 (at dischtime; a flag without a dischtime is no record);
    patient_death_date = patients.dod. Diagnoses are those of the cohort's admissions whose
    normalised code (trimmed, upper case, without dots) some task lists.
    """
    stays = con.execute(
        """
        SELECT stay_id, hadm_id, intime, outtime, prediction_time, admittime, dischtime,
               deathtime AS admission_death_time,
               coalesce(hospital_expire_flag = 1 AND dischtime IS NOT NULL, false)
                 AS admission_expired,
               CAST(dod AS TIMESTAMP) AS patient_death_date
        FROM cohort ORDER BY stay_id
        """
    ).df()
    codes = diagnosis_codes(tasks).astype({"icd_version": "int64", "icd_code": "string"})
    con.register("label_codes_df", codes)
    diagnoses = con.execute(
        """
        SELECT DISTINCT d.hadm_id, d.icd_version, d.code AS icd_code
        FROM (SELECT hadm_id, icd_version, upper(replace(trim(icd_code), '.', '')) AS code
              FROM diagnoses_icd WHERE hadm_id IN (SELECT hadm_id FROM cohort)) d
        JOIN label_codes_df c ON c.icd_version = d.icd_version AND c.icd_code = d.code
        """
    ).df()
    con.unregister("label_codes_df")
    return StayEvents(
        source="MIMIC-IV",
        stays=stays,
        evidence=frozenset({"admission_death_time", "admission_expired", "patient_death_date"}),
        diagnoses=diagnoses,
    )


def _missing_itemids(con: Any, variables: list[Any]) -> dict[str, list[int]]:
    """Item ids of the variables spec that the dictionary tables do not list."""
    known_icu = {r[0] for r in con.execute("SELECT DISTINCT itemid FROM d_items").fetchall()}
    known_lab = {r[0] for r in con.execute("SELECT DISTINCT itemid FROM d_labitems").fetchall()}
    out: dict[str, list[int]] = {}
    for v in variables:
        known = known_lab if v.source == "labevents" else known_icu
        absent = [i for i in v.all_itemids if i not in known]
        if absent:
            logger.warning("variable %s: item ids %s are not in the dictionary", v.name, absent)
            out[v.name] = absent
    return out


def finish_stays(stays: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Give a raw stays frame its final dtypes, age and race groups, and column order.

    Casts ids to int64 and text to ``string``, derives ``age_group`` and ``race_group`` from
    ``spec``, and puts the identity and demographic columns first. Modifies ``stays`` in place
    and returns the reordered frame.
    """
    for col in ("stay_id", "subject_id", "hadm_id"):
        stays[col] = stays[col].astype("int64")
    edges = [*spec.age_groups, np.inf]
    stays["age_group"] = pd.cut(
        stays["age"], bins=edges, right=False, labels=spec.age_group_labels
    ).astype("string")
    race = stays["race"].fillna("").str.upper().str.strip()
    group = pd.Series("OTHER", index=stays.index, dtype="string")
    for name, prefixes in reversed(list(spec.race_groups.items())):
        group[race.str.startswith(tuple(prefixes))] = name
    stays["race_group"] = group
    stays["study_id"] = stays["study_id"].astype("Int64")
    stays["n_cxr_candidates"] = stays["n_cxr_candidates"].astype("int64")
    for col in ("dicom_id", "cxr_path", "cxr_view", "gender", "race", "insurance"):
        stays[col] = stays[col].astype("string")
    for col in ("admission_type", "first_careunit"):
        stays[col] = stays[col].astype("string")
    front = [
        "stay_id",
        "subject_id",
        "hadm_id",
        "intime",
        "outtime",
        "prediction_time",
        "age",
        "age_group",
        "gender",
        "race",
        "race_group",
        "insurance",
        "admission_type",
        "first_careunit",
    ]
    return stays[front + [c for c in stays.columns if c not in front]]


def _summaries(stays: pd.DataFrame, labels: list[LabelColumn]) -> tuple[dict, dict]:
    has = stays["has_cxr"] == 1
    views = stays.loc[has, "cxr_view"].value_counts()
    availability = {
        "n_stays": len(stays),
        "n_with_cxr": int(has.sum()),
        "fraction_with_cxr": float(has.mean()) if len(stays) else None,
        "mean_candidates": float(stays["n_cxr_candidates"].mean()) if len(stays) else None,
        "views": {str(k): int(v) for k, v in views.items()},
        "median_cxr_time_hours": float(stays.loc[has, "cxr_time_hours"].median())
        if has.any()
        else None,
    }
    return prevalence(stays, labels), availability


def write_cohorts(
    work: Path,
    stays: pd.DataFrame,
    funnel: list[dict[str, Any]],
    hourly_path: Path,
    common: dict[str, Any],
    labels: LabelTable,
    overwrite: bool,
    t0: float,
    extra_files: Callable[[Path, pd.DataFrame], None] | None = None,
    steps: Bar | None = None,
) -> dict[str, Path]:
    """Write every cohort (:func:`cohort_subsets`) of one build; ``extra_files(folder, stays)``
    adds source-specific files to each. Returns {cohort: folder}. ``steps``: the build's bar,
    which counts each cohort written (by default a bar of their own)."""
    with (
        nullcontext(steps)
        if steps is not None
        else progress_bar("cohort build", len(COHORTS), unit="cohort")
    ) as bar:
        out = {}
        for cohort, sub, funnel_c in cohort_subsets(stays, funnel):
            bar.doing(f"writing {cohort}")
            out[cohort] = write_cohort(
                con_path=work, cohort=cohort, stays=sub, hourly_path=hourly_path, common=common,
                funnel=funnel_c, labels=labels.columns, overwrite=overwrite, t0=t0,
            )  # fmt: skip
            if extra_files is not None:
                extra_files(out[cohort], sub)
            bar.advance()
        bar.doing(f"{', '.join(out)} written")
    return out


def cohort_subsets(stays, funnel: list[dict]):
    """Yield ``(cohort, stays, funnel)`` for each cohort: base as given, matched = linked CXR."""
    for cohort in COHORTS:
        sub = stays if cohort == "base" else stays[stays["has_cxr"] == 1]
        sub = sub.reset_index(drop=True)
        funnel_c = list(funnel)
        if cohort == "matched":
            funnel_c.append(
                {
                    "step": "linked_cxr",
                    "n_stays": len(sub),
                    "n_subjects": int(sub["subject_id"].nunique()),
                }
            )
        yield cohort, sub, funnel_c


def write_cohort(
    *,
    con_path: Path,
    cohort: str,
    stays: pd.DataFrame,
    hourly_path: Path,
    common: dict[str, Any],
    funnel: list[dict[str, Any]],
    labels: list[LabelColumn],
    overwrite: bool,
    t0: float,
) -> Path:
    """Write one cohort as a content-addressed directory and return it.

    ``hourly_path`` holds the base hourly series; other cohorts take the rows of their own stays
    from it (a temporary file under ``con_path``). The directory is named from the cohort's
    fingerprint: an unchanged cohort keeps its directory (only its input key is refreshed) unless
    ``overwrite``. ``common`` holds the manifest fields shared by all cohorts of the build, and
    ``t0`` is the build's start (``time.perf_counter()``) for the recorded wall time.
    """
    import duckdb

    dataset = common["dataset"]
    tmp_hourly = con_path / f"hourly-{cohort}.parquet"
    if cohort == "base":
        tmp_hourly = hourly_path
    else:
        con = duckdb.connect()
        con.register("keep", stays[["stay_id"]])
        con.execute(
            f"COPY (SELECT h.* FROM read_parquet('{hourly_path}') h SEMI JOIN keep k "
            f"ON h.stay_id = k.stay_id ORDER BY h.stay_id, h.hour, h.variable) "
            f"TO '{tmp_hourly}' (FORMAT parquet, COMPRESSION zstd)"
        )
        con.close()
    label_cols = [c.name for c in labels]
    parts = fingerprint_parts(stays, label_cols, hourly_digest(tmp_hourly), common["spec_hashes"])
    fingerprint = combine(parts)
    label_prevalence, availability = _summaries(stays, labels)
    manifest = {
        **common,
        "cohort": cohort,
        "funnel": funnel,
        "n_stays": len(stays),
        "n_subjects": int(stays["subject_id"].nunique()),
        "label_prevalence": label_prevalence,
        "cxr_availability": availability,
        "fingerprint": fingerprint,
        "fingerprint_parts": parts,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    manifest["build"] = {**common["build"], "wall_s": round(time.perf_counter() - t0, 2)}
    manifest["label_columns"] = list(label_cols)
    final = config.cohorts_dir() / dataset / f"{cohort}-{fingerprint[:12]}"
    with exclusive_lock(final, log_wait=lambda p: logger.warning("waiting: %s is being built", p)):
        _write_cohort(final, stays, tmp_hourly, manifest, common, cohort, fingerprint, overwrite)
    atomic_write_text(_latest_pointer(dataset, cohort), final.name + "\n")
    return final


def _write_cohort(final, stays, tmp_hourly, manifest, common, cohort, fingerprint, overwrite):
    """Write (or keep) one cohort directory; the caller holds its lock, so builds take turns."""
    problem = build_problem(final) if final.exists() and not overwrite else None
    if final.exists() and not overwrite and problem is None:
        logger.info("cohort %s is unchanged (%s): keeping %s", cohort, fingerprint[:12], final)
        old = json.loads((final / "manifest.json").read_text())
        if old.get("input_key") != common["input_key"]:  # same content from new source files
            atomic_write_json(final / "manifest.json", {**old, "input_key": common["input_key"]})
    else:
        if problem is not None:
            logger.warning("rewriting %s (%s)", final, problem)
        with atomic_directory(final, overwrite=overwrite or final.exists()) as tmp:
            stays.to_parquet(tmp / "stays.parquet", index=False)
            # the base series is also the source of the matched one: copy it, move the other
            if cohort == "base":
                shutil.copyfile(tmp_hourly, tmp / "hourly.parquet")
            else:
                os.replace(tmp_hourly, tmp / "hourly.parquet")
            stays[["stay_id", "subject_id", "fold"]].to_csv(tmp / "splits.csv", index=False)
            # checksums of what was written: loading verifies them (harness.cohort.load)
            manifest["files"] = {name: file_sha256(tmp / name) for name in DATA_FILES}
            atomic_write_json(tmp / "manifest.json", manifest)
        logger.info("wrote cohort %s (%d stays) to %s", cohort, len(stays), final)
