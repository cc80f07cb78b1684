"""Read and write CareBench benchmark folders (the reference study's preprocessed cohort format).

A folder holds ``splits/features.yaml`` (key ``chartlab_feature``: ordered feature names),
``splits/fold{k}/stays_{train,val,test}.csv`` (one row per stay: ids, ``intime``, ``valid_cxrs``,
``icu_mortality``, ``los`` in days, demographics and the 25 phenotype columns) and
``merged/{stay_id}.csv`` (``timestep`` = hour from ICU intime, one column per feature, plus
``{feature}_mask`` for non-rhythm features; mask 1 = missing or imputed). Images live at
``{cxr_root}/{dicom_id}.jpg``.

Labels are the folder's own, matched to the task declarations (:data:`GIVEN_DEATHS`,
:data:`GIVEN_DURATIONS`, code-list labels by column name, else the toolkit's block of
:data:`TOOLKIT_FLAG_BLOCK` columns before the last): ``icu_mortality`` serves a death in
[intime, outtime], ``los`` a duration from intime to outtime. A task the folder cannot serve (a
death in another window, for one) is left out and named in the manifest (``labels_unavailable``,
``tasks_unavailable``).

Decisions: the folds are kept as given (a stay's ``fold`` is the fold whose test file lists it; the
full partition of every fold goes to ``carebench_splits.parquet``); the chosen image is the last
``valid_cxrs`` entry.
"""

from __future__ import annotations

import ast
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.cohort.labels import (
    Bound,
    CodeListRule,
    DeathInWindow,
    DurationBins,
    GivenLabels,
    LabelTable,
    Window,
    label_given,
)
from harness.errors import InputError, UsageError

log = logging.getLogger(__name__)

PARTITIONS = ("train", "val", "test")
STAY_COLUMNS = (
    "stay_id", "subject_id", "intime", "valid_cxrs", "icu_mortality", "los",
    "age", "gender", "admission_type", "race",
)  # fmt: skip
SPLITS_FILE = "carebench_splits.parquet"
#: Death labels a CareBench stays file gives: window (as text) -> column.
GIVEN_DEATHS = {str(Window(Bound("intime"), Bound("outtime"))): "icu_mortality"}
#: Durations (days) a CareBench stays file gives: (start, end) anchors -> column.
GIVEN_DURATIONS = {("intime", "outtime"): "los"}
#: Size of the toolkit's phenotype block: the columns before the last one of a stays file.
TOOLKIT_FLAG_BLOCK = 25
_TIMESTAMP = re.compile(r"Timestamp\(\s*(['\"])([^'\"]*)\1\s*(?:,[^()]*)?\)")


def parse_valid_cxrs(text: Any, *, where: str = "valid_cxrs") -> list[tuple[str, pd.Timestamp]]:
    """Parse a ``valid_cxrs`` cell: ``"[('dicom', Timestamp('2150-01-01 10:00:00')), ...]"``.

    ``Timestamp(...)`` wrappers are replaced by their string argument and the rest is read with
    :func:`ast.literal_eval` (never ``eval``). Empty, NaN and ``"[]"`` give an empty list.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return []
    text = str(text).strip()
    if not text or text in ("[]", "nan"):
        return []
    try:
        value = ast.literal_eval(_TIMESTAMP.sub(lambda m: repr(m.group(2)), text))
    except (ValueError, SyntaxError) as exc:
        raise InputError(
            f"{where}: cannot parse {text[:80]!r} ({exc.__class__.__name__})",
            fix="write a Python list of (dicom_id, Timestamp('YYYY-MM-DD HH:MM:SS')) tuples",
        ) from None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InputError(f"{where}: expected a list, got {type(value).__name__}")
    out = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise InputError(f"{where}: each entry must be (dicom_id, time), got {item!r}")
        try:
            out.append((str(item[0]), pd.Timestamp(item[1])))
        except (ValueError, TypeError):
            raise InputError(f"{where}: bad time {item[1]!r} for image {item[0]!r}") from None
    return out


def format_valid_cxrs(entries: list[tuple[str, pd.Timestamp]]) -> str:
    """The inverse of :func:`parse_valid_cxrs` (the toolkit's Python-repr format)."""
    inner = ", ".join(
        f"('{d}', Timestamp('{pd.Timestamp(t).strftime('%Y-%m-%d %H:%M:%S')}'))" for d, t in entries
    )
    return f"[{inner}]"


# ------------------------------------------------------------------------------------ reading


def _read_features(root: Path) -> list[str]:
    path = root / "splits" / "features.yaml"
    if not path.is_file():
        raise InputError(
            "features.yaml not found",
            path=path,
            fix="a CareBench folder has splits/features.yaml with `chartlab_feature`",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", path=path) from None
    feats = data.get("chartlab_feature") if isinstance(data, dict) else None
    if not isinstance(feats, list) or not feats:
        raise InputError(
            "missing or empty key `chartlab_feature`",
            path=path,
            fix="list the ordered feature names under chartlab_feature",
        )
    return [str(f) for f in feats]


def _flag_block(columns: list[str]) -> tuple[str, ...]:
    """The toolkit's phenotype block: the TOOLKIT_FLAG_BLOCK columns before the last one."""
    if len(columns) < len(STAY_COLUMNS) + TOOLKIT_FLAG_BLOCK + 1:
        return ()
    return tuple(columns[-TOOLKIT_FLAG_BLOCK - 1 : -1])


def read_splits(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every row of the split files (a stay appears once per fold file that lists it), the
    (fold, stay_id, partition) table and the column order of the first file."""
    frames, parts = [], []
    fold_dirs = sorted(
        (int(m.group(1)), p)
        for p in (root / "splits").glob("fold*")
        if p.is_dir() and (m := re.fullmatch(r"fold(\d+)", p.name))
    )
    if not fold_dirs:
        raise InputError(
            "no splits/fold{k}/ folders",
            path=root / "splits",
            fix="point --carebench at the benchmark folder (with splits/ and merged/)",
        )
    first_columns: list[str] | None = None
    for k, d in fold_dirs:
        for part in PARTITIONS:
            path = d / f"stays_{part}.csv"
            if not path.is_file():
                raise InputError(f"missing stays_{part}.csv of fold {k}", path=path)
            df = pd.read_csv(path, dtype={"valid_cxrs": "string"})
            missing = [c for c in STAY_COLUMNS if c not in df.columns]
            if missing:
                raise InputError(
                    f"missing column(s) {', '.join(missing)}",
                    path=path,
                    fix="export the split files with the CareBench columns",
                )
            first_columns = first_columns or list(df.columns)
            df["_file"] = str(path)
            frames.append(df)
            parts.append(
                pd.DataFrame(
                    {"fold": k, "stay_id": df["stay_id"].astype("int64"), "partition": part}
                )
            )
    splits = pd.concat(parts, ignore_index=True).astype({"fold": "int8"})
    stays = pd.concat(frames, ignore_index=True)
    stays["stay_id"] = stays["stay_id"].astype("int64")
    return stays, splits, first_columns or []


def given_labels(root: Path, rows: pd.DataFrame, columns: list[str]) -> GivenLabels:
    """What the stays files give, for the task rules to pick from (see the module docstring)."""
    extra = tuple(c for c in columns if c not in STAY_COLUMNS)
    return GivenLabels(
        source=f"the CareBench folder {root}",
        frame=rows,
        deaths=dict(GIVEN_DEATHS),
        durations=dict(GIVEN_DURATIONS),
        flags=extra,
        flag_block=_flag_block(columns),
    )


def _unique_labels(root: Path, rows: pd.DataFrame, labels: LabelTable) -> pd.Series:
    """Reject a stay whose labels differ between split files; True for each stay's first row."""
    frame = labels.frame.assign(stay_id=rows["stay_id"].to_numpy())
    conflict = frame.groupby("stay_id").nunique(dropna=False).gt(1)
    flagged = conflict[conflict.any(axis=1)]
    if not flagged.empty:
        sid = int(flagged.index[0])
        cols = ", ".join(flagged.columns[flagged.iloc[0].to_numpy(dtype=bool)])
        raise InputError(
            f"stay {sid} has different labels ({cols}) in different split files",
            path=root / "splits",
            fix="regenerate the split files from one table",
        )
    return ~rows["stay_id"].duplicated()


def read_carebench(
    root: Path, cxr_root: Path | None = None, tasks: list[Any] | None = None
) -> dict[str, Any]:
    """Read a CareBench folder into stays (harness columns), their labels (``tasks``, default
    every task of ``tasks/``), hourly (long) and splits frames."""
    from harness.cohort.spec import load_cohort_spec, load_tasks

    root = Path(root)
    if not (root / "splits").is_dir():
        raise InputError(
            "not a CareBench folder (no splits/)",
            path=root,
            fix="point --carebench at the folder holding splits/ and merged/",
        )
    features = _read_features(root)
    rows, splits, columns = read_splits(root)
    tasks = load_tasks() if tasks is None else tasks
    labels = label_given(tasks, given_labels(root, rows, columns))
    first = _unique_labels(root, rows, labels).to_numpy()
    raw = rows[first].reset_index(drop=True)
    labels.frame = labels.frame[first].reset_index(drop=True)

    test = splits[splits["partition"] == "test"]
    n_test = test.groupby("stay_id")["fold"].agg(["min", "size"])
    fold = raw["stay_id"].map(n_test["min"])
    if (n_test["size"] > 1).any():
        log.warning(
            "%s: %d stays are in the test file of several folds; fold = the first",
            root,
            int((n_test["size"] > 1).sum()),
        )
    stays = pd.DataFrame(
        {
            "stay_id": raw["stay_id"],
            "subject_id": raw["subject_id"].astype("int64"),
            "hadm_id": raw["hadm_id"].astype("Int64") if "hadm_id" in raw else pd.NA,
            "intime": pd.to_datetime(raw["intime"]),
            "age": raw["age"].astype("float64"),
            "gender": raw["gender"].astype("string"),
            "race": raw["race"].astype("string"),
            "admission_type": raw["admission_type"].astype("string"),
        }
    )
    if fold.isna().any():
        from harness.cohort.folds import assign_folds

        log.warning(
            "%s: %d stays are in no test file; their fold is the subject-hash fold",
            root,
            int(fold.isna().sum()),
        )
        fold = fold.fillna(pd.Series(assign_folds(stays["subject_id"].to_numpy()), fold.index))
    stays["fold"] = fold.astype("int8")
    days = raw[GIVEN_DURATIONS[("intime", "outtime")]].astype("float64")
    stays["outtime"] = stays["intime"] + pd.to_timedelta(days, unit="D")
    spec = load_cohort_spec()
    stays["prediction_time"] = stays["intime"] + pd.Timedelta(hours=spec.prediction_hours)

    chosen, times, counts = [], [], []
    for sid, text, intime, src in zip(
        raw["stay_id"], raw["valid_cxrs"], stays["intime"], raw["_file"], strict=True
    ):
        entries = parse_valid_cxrs(text, where=f"{src}: stay {sid}: valid_cxrs")
        counts.append(len(entries))
        chosen.append(entries[-1][0] if entries else pd.NA)
        times.append((entries[-1][1] - intime).total_seconds() / 3600 if entries else np.nan)
    stays["dicom_id"] = pd.array(chosen, dtype="string")
    stays["cxr_path"] = stays["dicom_id"] + ".jpg"
    stays["cxr_time_hours"] = np.asarray(times, dtype="float64")
    stays["n_cxr_candidates"] = np.asarray(counts, dtype="int64")
    stays["has_cxr"] = stays["dicom_id"].notna().astype("int8")
    if cxr_root is not None and stays["has_cxr"].any():
        exists = stays.loc[stays["has_cxr"] == 1, "cxr_path"].map(
            lambda p: (Path(cxr_root) / p).is_file()
        )
        if not exists.all():
            log.warning(
                "%s: %d of %d chosen images are missing; the encode stage records them "
                "as missing_file",
                cxr_root,
                int((~exists).sum()),
                len(exists),
            )

    hourly, missing_series = read_merged(root, stays["stay_id"], features)
    return {
        "stays": stays,
        "labels": labels,
        "hourly": hourly,
        "splits": splits,
        "features": features,
        "missing_series": missing_series,
    }


def read_merged(
    root: Path, stay_ids: pd.Series, features: list[str]
) -> tuple[pd.DataFrame, list[int]]:
    """Long hourly series from ``merged/{stay_id}.csv`` (hours 0..47, observed values only).

    A value is observed when it is present and its ``{feature}_mask`` (if any) is not 1.
    """
    import duckdb

    merged = root / "merged"
    files = {int(s): merged / f"{int(s)}.csv" for s in stay_ids}
    missing = sorted(s for s, p in files.items() if not p.is_file())
    if missing:
        log.warning(
            "%s: %d stays have no time-series file (e.g. %s.csv)", merged, len(missing), missing[0]
        )
    present = [str(p) for s, p in files.items() if s not in set(missing)]
    empty = pd.DataFrame(
        {
            "stay_id": pd.Series(dtype="int64"),
            "hour": pd.Series(dtype="int16"),
            "variable": pd.Series(dtype="string"),
            "value": pd.Series(dtype="float32"),
        }
    )
    if not present:
        return empty, missing
    con = duckdb.connect()
    con.register("file_list", pd.DataFrame({"f": present}))
    try:
        rel = con.read_csv(present, all_varchar=True, union_by_name=True, filename=True)
        cols = set(rel.columns)
        absent = [f for f in ["timestep", *features] if f not in cols]
        if absent:
            raise InputError(
                f"time-series files lack column(s) {', '.join(absent)}",
                path=merged,
                fix="write one column per chartlab_feature and a timestep column",
            )
        con.register("raw", rel)

        def q(c: str) -> str:
            return '"' + c.replace('"', '""') + '"'

        exprs = []
        for f in features:
            v = f"CAST({q(f)} AS DOUBLE)"
            if f"{f}_mask" in cols:
                v = f"CASE WHEN CAST({q(f + '_mask')} AS DOUBLE) = 1 THEN NULL ELSE {v} END"
            exprs.append(f"{v} AS {q(f)}")
        stay = "CAST(regexp_extract(filename, '([0-9]+)\\.csv$', 1) AS BIGINT)"
        wide = (
            f"SELECT {stay} AS stay_id, CAST(CAST(timestep AS DOUBLE) AS SMALLINT) AS hour, "
            f"{', '.join(exprs)} FROM raw WHERE CAST(timestep AS DOUBLE) BETWEEN 0 AND 47"
        )
        df = con.execute(
            f"SELECT stay_id, hour, variable, CAST(value AS FLOAT) AS value FROM "
            f"(UNPIVOT ({wide}) ON {', '.join(q(f) for f in features)} "
            f"INTO NAME variable VALUE value) ORDER BY stay_id, hour, variable"
        ).df()
    except duckdb.Error as exc:
        raise InputError(
            f"cannot read the time-series files: {exc}",
            path=merged,
            fix="check that every merged/*.csv holds numbers",
        ) from None
    finally:
        con.close()
    keys = ["stay_id", "hour", "variable"]
    df = df.groupby(keys, as_index=False, sort=True).agg(value=("value", "mean"))
    return df.astype(
        {"stay_id": "int64", "hour": "int16", "variable": "string", "value": "float32"}
    ), missing


def build_carebench_cohorts(
    root: Path,
    cxr_root: Path | None = None,
    *,
    dataset: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Build ``base`` and ``matched`` cohorts from a CareBench folder, keeping its folds.

    Each cohort directory also gets ``carebench_splits.parquet`` (fold, stay_id, partition) with
    the folder's own train/val/test partition of every fold.
    """
    from harness.cohort.external import file_stats, write_cohorts
    from harness.io import atomic_write_bytes

    root = Path(root).expanduser().resolve()
    cxr_root = Path(cxr_root).expanduser().resolve() if cxr_root else None
    dataset = dataset or "carebench-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", root.name) or "data")
    data = read_carebench(root, cxr_root)
    stays, labels = data["stays"], data["labels"]
    no_class = {
        c.name: int(labels.frame[c.name].isna().sum())
        for c in labels.columns
        if c.role == "class" and labels.frame[c.name].isna().any()
    }
    for name, n in no_class.items():
        log.warning(
            "%s: %d stays fall below the first bin edge: %s is null (its task skips them)",
            root,
            n,
            name,
        )
    splits = data["splits"]

    def add_splits(path: Path, sub: pd.DataFrame) -> None:
        import io

        buf = io.BytesIO()
        splits[splits["stay_id"].isin(sub["stay_id"])].reset_index(drop=True).to_parquet(
            buf, index=False
        )
        atomic_write_bytes(path / SPLITS_FILE, buf.getvalue())

    source_files = [root / "splits" / "features.yaml", *sorted((root / "splits").glob("fold*/*"))]
    source = {
        "kind": "carebench",
        "carebench": str(root),
        "mimic_cxr": str(cxr_root) if cxr_root else None,
        "cxr_layout": "{cxr_root}/{dicom_id}.jpg",
        "files": file_stats(source_files),
    }
    info = {
        f: {
            "group": "rhythm" if f.startswith("rhythm_") else "carebench",
            "unit": None,
            "source": "carebench:merged",
        }
        for f in data["features"]
    }
    merged_stat = [(root / "merged").stat().st_mtime_ns] if (root / "merged").is_dir() else []
    return write_cohorts(
        stays,
        data["hourly"],
        labels=labels,
        dataset=dataset,
        source=source,
        funnel=[
            {
                "step": "carebench_stays",
                "n_stays": len(stays),
                "n_subjects": int(stays["subject_id"].nunique()),
            }
        ],
        variables=data["features"],
        variable_info=info,
        input_parts={
            "files": source["files"],
            "merged": merged_stat,
            "cxr_root": source["mimic_cxr"],
        },
        extra_manifest={
            "carebench": {
                "folds": "as given: fold = the fold whose stays_test.csv lists the stay; see "
                + SPLITS_FILE,
                "given_labels": {
                    **{col: f"death in {w}" for w, col in GIVEN_DEATHS.items()},
                    **{col: f"days from {a} to {b}" for (a, b), col in GIVEN_DURATIONS.items()},
                },
                "stays_without_series": len(data["missing_series"]),
                "stays_without_class": no_class,
            }
        },
        extra_files=add_splits,
        overwrite=overwrite,
    )


def load_carebench_splits(cohort_path: Path) -> pd.DataFrame:
    """The (fold, stay_id, partition) table of a cohort built from a CareBench folder."""
    path = Path(cohort_path) / SPLITS_FILE
    if not path.is_file():
        raise InputError(
            "no CareBench splits in this cohort",
            path=path,
            fix="build it with `harness cohort build --carebench DIR`",
        )
    return pd.read_parquet(path)


# ------------------------------------------------------------------------------------ writing


def export_labels(
    stays: pd.DataFrame, tasks: list[Any], where: Path
) -> tuple[dict[str, pd.Series], dict[str, pd.Series]]:
    """The CareBench label columns of a cohort: ({icu_mortality, los}, {label name: flags}).

    ``icu_mortality`` and ``los`` come from the first task whose rule is the death window or the
    duration a CareBench file gives (:data:`GIVEN_DEATHS`, :data:`GIVEN_DURATIONS`); every
    code-list label present in the cohort is written under its name, a list of the toolkit's
    block size last (the toolkit reads those columns by position).
    """
    given: dict[str, pd.Series] = {}
    lists = []
    for task in tasks:
        rule = task.rule
        if isinstance(rule, DeathInWindow) and rule.column in stays:
            col = GIVEN_DEATHS.get(str(rule.window))
            if col is not None:
                given.setdefault(col, stays[rule.column])
        elif isinstance(rule, DurationBins) and rule.value_column in stays:
            col = GIVEN_DURATIONS.get((str(rule.start), str(rule.end)))
            if col is not None:
                given.setdefault(col, stays[rule.value_column])
        elif isinstance(rule, CodeListRule):
            lists.append([c for c in rule.lists if c.id in stays])
    needed = [*GIVEN_DEATHS.values(), *GIVEN_DURATIONS.values()]
    missing = [c for c in needed if c not in given]
    if missing:
        raise InputError(
            f"the cohort has no label for the CareBench column(s) {', '.join(missing)} (a death "
            f"in {', '.join(GIVEN_DEATHS)} and the days from intime to outtime)",
            path=where,
            fix="build the cohort with tasks that declare these labels",
        )
    lists.sort(key=lambda group: len(group) == TOOLKIT_FLAG_BLOCK)
    flags = {c.name: stays[c.id] for group in lists for c in group}
    return {c: given[c] for c in needed}, flags


def export_carebench(
    cohort: Any,
    out_dir: Path,
    *,
    cxr_out: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a harness cohort as a CareBench folder (the toolkit can train on it directly).

    Folds follow the harness rule (test = fold k, val = fold k+1, train = the rest); the label
    columns are found through the task declarations (:func:`export_labels`) and the code-list
    columns carry their label names, followed by ``hadm_id`` (the toolkit takes the 25 columns
    before the last); ``merged/{stay}.csv`` holds hours 0..47 with NaN for unobserved values and
    masks 1 = missing; ``valid_cxrs`` lists the chosen image. With ``cxr_out``, chosen images
    are copied there as ``{dicom_id}.jpg``.
    """
    from harness.cohort.folds import split_masks
    from harness.cohort.spec import load_tasks
    from harness.io import atomic_directory

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UsageError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    stays = cohort.stays.sort_values("stay_id").reset_index(drop=True)
    features = list(cohort.variables)
    given, flags = export_labels(stays, load_tasks(), cohort.path)
    table = pd.DataFrame(
        {
            "stay_id": stays["stay_id"],
            "subject_id": stays["subject_id"],
            "intime": stays["intime"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "valid_cxrs": [
                format_valid_cxrs([(d, t + pd.Timedelta(hours=h))]) if has else "[]"
                for d, t, h, has in zip(
                    stays["dicom_id"],
                    stays["intime"],
                    stays["cxr_time_hours"],
                    stays["has_cxr"] == 1,
                    strict=True,
                )
            ],
            **given,
            "age": stays["age"],
            "gender": stays["gender"],
            "admission_type": stays["admission_type"],
            "race": stays["race"],
            **flags,
            "hadm_id": stays["hadm_id"],
        }
    )
    hourly = cohort.hourly()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "splits").mkdir()
        (tmp / "splits" / "features.yaml").write_text(
            yaml.safe_dump({"chartlab_feature": features}, sort_keys=False)
        )
        wide = hourly.pivot_table(
            index=["stay_id", "hour"], columns="variable", values="value", aggfunc="first"
        ).reindex(columns=features)
        folds = stays["fold"].to_numpy()
        for k in range(1, 6):
            masks = dict(zip(PARTITIONS, split_masks(folds, k), strict=True))
            d = tmp / "splits" / f"fold{k}"
            d.mkdir()
            train_ids = set(stays.loc[masks["train"], "stay_id"])
            stats = {}
            tw = wide[wide.index.get_level_values("stay_id").isin(train_ids)]
            for f in features:
                x = tw[f].dropna().astype("float64") if f in tw else pd.Series(dtype="float64")
                q1, q3 = x.quantile([0.25, 0.75]).tolist() if len(x) else (0.0, 0.0)
                stats[f] = {
                    "iqr": float(q3 - q1),
                    "max": float(x.max()) if len(x) else 0.0,
                    "mean": float(x.mean()) if len(x) else 0.0,
                    "median": float(x.median()) if len(x) else 0.0,
                    "min": float(x.min()) if len(x) else 0.0,
                    "std": float(x.std()) if len(x) > 1 else 0.0,
                    "normalize": not f.startswith("rhythm_"),
                }
            (d / "train_stats.yaml").write_text(yaml.safe_dump(stats, sort_keys=False))
            for part in PARTITIONS:
                table[masks[part]].to_csv(d / f"stays_{part}.csv", index=False)
        merged = tmp / "merged"
        merged.mkdir()
        for sid in stays["stay_id"]:
            frame = (
                wide.loc[sid]
                if sid in wide.index.get_level_values(0)
                else pd.DataFrame(columns=features)
            )
            frame = frame.reindex(range(48))
            frame.index.name = "timestep"
            out = frame.copy()
            for f in features:
                if not f.startswith("rhythm_"):
                    out[f"{f}_mask"] = frame[f].isna().astype("int8")
            out.reset_index().to_csv(merged / f"{int(sid)}.csv", index=False)
        if cxr_out is not None and cohort.cxr_root is not None:
            cxr_out = Path(cxr_out)
            cxr_out.mkdir(parents=True, exist_ok=True)
            for d, rel in zip(stays["dicom_id"], stays["cxr_path"], strict=True):
                if pd.notna(d) and (cohort.cxr_root / rel).is_file():
                    shutil.copyfile(cohort.cxr_root / rel, cxr_out / f"{d}.jpg")
    return out_dir
