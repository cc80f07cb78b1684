"""Load and validate the definitions in ``tasks/``: cohort rules, tasks, variables, phenotypes.

Every file is read with ``yaml.safe_load``; unknown or missing keys raise :class:`SpecError` naming
the file and the key. Each spec carries a content hash (of the parsed data, so comments do not
count) that goes into cohort manifests and results.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.cohort.labels import LabelRule, TaskFields, icd_codes, parse_label
from harness.config import tasks_dir
from harness.errors import SpecError, UnknownNameError
from harness.kinds import TASK_KINDS

#: Columns of ``stays.parquet`` that are not labels: identity, times, demographics (model inputs
#: of the ``demographics`` group), the CXR link and the fold. No task may write one of them.
STAY_FIELDS = (
    "stay_id", "subject_id", "hadm_id", "intime", "outtime", "prediction_time", "admittime",
    "dischtime", "age", "age_group", "gender", "race", "race_group", "insurance",
    "admission_type", "first_careunit", "dicom_id", "study_id", "cxr_path", "cxr_time_hours",
    "cxr_view", "n_cxr_candidates", "has_cxr", "fold",
)  # fmt: skip
#: Files in ``tasks/`` that are not tasks.
NON_TASK_FILES = (
    "cohort.yaml",
    "variables.yaml",
    "phenotypes.yaml",
    "clif_mapping.yaml",
    "meds_mapping.yaml",
    "meds_clif_mapping.yaml",
)
VARIABLE_SOURCES = ("chartevents", "labevents", "outputevents")
AGGREGATES = ("mean", "sum", "onehot_last")
CONVERSIONS = ("fahrenheit_to_celsius", "fraction_to_percent")
ICD_KEYS = ("icd9", "icd10")


def spec_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of parsed YAML data."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_yaml(path: Path) -> Any:
    """The parsed file (a fresh copy: callers may change it). Parsed once per file version:
    evaluation reads the task and variable tables for every unit and scenario."""
    if not path.is_file():
        raise SpecError(
            "definition file not found", path=path, fix="restore it from the repository"
        )
    stat = path.stat()
    return copy.deepcopy(_parse_yaml(path.resolve(), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _parse_yaml(path: Path, mtime_ns: int, size: int) -> Any:
    """Parse ``path``; the modification time and size in the cache key re-read an edited file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", path=path, fix="fix the YAML syntax") from None


def _check_mapping(
    data: Any,
    path: Path,
    *,
    where: str,
    required: AbstractSet[str],
    optional: AbstractSet[str] = frozenset(),
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a mapping, got {type(data).__name__}", path=path)
    allowed = required | set(optional)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(
                f"unknown key {key!r} in {where}.{hint} Allowed keys: {', '.join(sorted(allowed))}",
                path=path,
                fix=f"remove or rename {key!r}",
            )
    missing = sorted(required - set(data))
    if missing:
        raise SpecError(
            f"missing key(s) {', '.join(map(repr, missing))} in {where}",
            path=path,
            fix="add them (see the other files in tasks/ for examples)",
        )
    return data


def _range(value: Any, path: Path, where: str) -> tuple[float, float]:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) for v in value) and value[0] <= value[1]
    if not ok:
        raise SpecError(f"{where}: range must be [low, high] numbers, got {value!r}", path=path)
    return float(value[0]), float(value[1])


# --------------------------------------------------------------------------------------- variables


@dataclass(frozen=True)
class VariableSpec:
    """One EHR variable of the hourly series (or, for onehot_last, a family of 0/1 variables)."""

    name: str
    source: str
    group: str
    itemids: tuple[int, ...]
    unit: str
    range: tuple[float, float] | None
    aggregate: str = "mean"
    convert: dict[int, str] = field(default_factory=dict)
    subtract_itemids: tuple[int, ...] = ()
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    other: str | None = None

    @property
    def output_names(self) -> list[str]:
        """Names of the columns this variable contributes to the feature list."""
        if self.aggregate == "onehot_last":
            return [*self.categories, *([self.other] if self.other else [])]
        return [self.name]

    @property
    def all_itemids(self) -> tuple[int, ...]:
        return self.itemids + self.subtract_itemids


def load_variables(path: Path | None = None) -> list[VariableSpec]:
    """The variables of ``tasks/variables.yaml`` in feature-list order."""
    return _load_variables_with_hash(path)[0]


def _load_variables_with_hash(path: Path | None = None) -> tuple[list[VariableSpec], str]:
    path = path or tasks_dir() / "variables.yaml"
    data = _check_mapping(
        _read_yaml(path), path, where="the file", required={"version", "variables"}
    )
    out: list[VariableSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["variables"] or []):
        where = f"variables[{i}]"
        v = _check_mapping(
            raw,
            path,
            where=where,
            required={"name", "source", "group", "itemids", "unit"},
            optional={"range", "aggregate", "convert", "subtract_itemids", "categories", "other"},
        )
        where = f"variable {v['name']!r}"
        if v["source"] not in VARIABLE_SOURCES:
            raise SpecError(
                f"{where}: source {v['source']!r} is not one of {', '.join(VARIABLE_SOURCES)}",
                path=path,
            )
        aggregate = v.get("aggregate", "mean")
        if aggregate not in AGGREGATES:
            raise SpecError(
                f"{where}: aggregate {aggregate!r} is not one of {', '.join(AGGREGATES)}", path=path
            )
        convert = {int(k): str(c) for k, c in (v.get("convert") or {}).items()}
        for item, conv in convert.items():
            if conv not in CONVERSIONS or item not in v["itemids"]:
                raise SpecError(
                    f"{where}: convert {item}: {conv!r} needs an itemid of the variable and one of "
                    f"{', '.join(CONVERSIONS)}",
                    path=path,
                )
        categories = {str(k): tuple(map(str, p)) for k, p in (v.get("categories") or {}).items()}
        if aggregate == "onehot_last" and not categories:
            raise SpecError(f"{where}: onehot_last needs `categories`", path=path)
        spec = VariableSpec(
            name=str(v["name"]),
            source=v["source"],
            group=str(v["group"]),
            itemids=tuple(int(x) for x in v["itemids"]),
            unit=str(v["unit"]),
            range=_range(v["range"], path, where) if "range" in v else None,
            aggregate=aggregate,
            convert=convert,
            subtract_itemids=tuple(int(x) for x in v.get("subtract_itemids") or ()),
            categories=categories,
            other=v.get("other"),
        )
        if aggregate != "onehot_last" and spec.range is None:
            raise SpecError(f"{where}: numeric variables need a plausibility `range`", path=path)
        for name in spec.output_names:
            if name in seen:
                raise SpecError(f"{where}: duplicate variable name {name!r}", path=path)
            seen.add(name)
        out.append(spec)
    return out, spec_hash(data)


def feature_names(variables: list[VariableSpec]) -> list[str]:
    """The canonical ordered feature list (one-hot families expanded in place)."""
    return [name for v in variables for name in v.output_names]


# -------------------------------------------------------------------------------------- phenotypes


@dataclass(frozen=True)
class PhenotypeSpec:
    id: str
    name: str
    ccs_id: int
    type: str
    icd9: tuple[str, ...]
    icd10: tuple[str, ...]


def load_phenotypes(path: Path | None = None) -> list[PhenotypeSpec]:
    """The 25 phenotypes of ``tasks/phenotypes.yaml`` in label-column order."""
    return _load_phenotypes_with_hash(path)[0]


def _load_phenotypes_with_hash(path: Path | None = None) -> tuple[list[PhenotypeSpec], str]:
    path = path or tasks_dir() / "phenotypes.yaml"
    data = _check_mapping(
        _read_yaml(path), path, where="the file", required={"version", "phenotypes"}
    )
    out = []
    for i, raw in enumerate(data["phenotypes"] or []):
        p = _check_mapping(
            raw,
            path,
            where=f"phenotypes[{i}]",
            required={"id", "name", "ccs_id", "type", "icd9", "icd10"},
        )
        codes = {v: icd_codes(p[v], path, f"phenotypes[{i}] ({p['id']}).{v}") for v in ICD_KEYS}
        if not any(codes.values()):
            raise SpecError(
                f"phenotype {p['id']!r} (phenotypes[{i}]) lists no ICD code: both icd9 and icd10 "
                "are empty, so its label would be 0 for every stay",
                path=path,
                fix=f"list the codes of {p['id']!r} under icd9 and/or icd10, or remove it",
            )
        out.append(
            PhenotypeSpec(
                id=str(p["id"]),
                name=str(p["name"]),
                ccs_id=int(p["ccs_id"]),
                type=str(p["type"]),
                icd9=codes["icd9"],
                icd10=codes["icd10"],
            )
        )
    if not out:
        raise SpecError(
            "no phenotype is listed", path=path, fix="restore the file from the repository"
        )
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise SpecError("phenotype ids must be unique", path=path)
    return out, spec_hash(data)


# ------------------------------------------------------------------------------------------ cohort


@dataclass(frozen=True)
class CohortSpec:
    """Inclusion rules, windows and groupings shared by every task (``tasks/cohort.yaml``)."""

    version: int
    description: str
    min_age: float
    min_icu_hours: float
    prediction_hours: float
    cxr_view_positions: tuple[str, ...]
    cxr_lookback_hours: float
    age_groups: tuple[float, ...]
    race_groups: dict[str, tuple[str, ...]]
    cohorts: dict[str, str]
    n_folds: int
    sha256: str

    @property
    def age_group_labels(self) -> list[str]:
        edges = [int(e) if float(e).is_integer() else e for e in self.age_groups]
        labels = [f"{lo}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        return [*labels, f"{edges[-1]}+"]


def load_cohort_spec(path: Path | None = None) -> CohortSpec:
    path = path or tasks_dir() / "cohort.yaml"
    data = _check_mapping(
        _read_yaml(path),
        path,
        where="the file",
        required={
            "version",
            "description",
            "min_age",
            "min_icu_hours",
            "prediction_hours",
            "cxr",
            "age_groups",
            "race_groups",
            "cohorts",
            "n_folds",
        },
    )
    cxr = _check_mapping(
        data["cxr"], path, where="cxr", required={"view_positions", "lookback_hours"}
    )
    if set(data["cohorts"]) != {"base", "matched"}:
        raise SpecError(
            f"cohorts must be exactly 'base' and 'matched', got {sorted(data['cohorts'])}",
            path=path,
        )
    edges = [float(e) for e in data["age_groups"]]
    if edges != sorted(edges) or not edges:
        raise SpecError("age_groups must be increasing ages", path=path)
    if float(cxr["lookback_hours"]) < 0:
        raise SpecError("cxr.lookback_hours must be >= 0", path=path)
    return CohortSpec(
        version=int(data["version"]),
        description=str(data["description"]),
        min_age=float(data["min_age"]),
        min_icu_hours=float(data["min_icu_hours"]),
        prediction_hours=float(data["prediction_hours"]),
        cxr_view_positions=tuple(str(v).upper() for v in cxr["view_positions"]),
        cxr_lookback_hours=float(cxr["lookback_hours"]),
        age_groups=tuple(edges),
        race_groups={
            str(k): tuple(str(p).upper() for p in v) for k, v in data["race_groups"].items()
        },
        cohorts={str(k): str(v) for k, v in data["cohorts"].items()},
        n_folds=int(data["n_folds"]),
        sha256=spec_hash(data),
    )


# ------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """A prediction task: its label columns in stays.parquet, kind, main metric and meaning.

    ``rule`` is the parsed ``label:`` declaration (its ``kind`` is a rule kind of
    :data:`harness.cohort.labels.LABEL_RULES`) that every data source evaluates.
    """

    name: str
    version: int
    kind: str
    description: str
    main_metric: str
    label_columns: list[str]
    label_names: list[str]
    class_names: list[str] | None
    bin_edges_days: list[float] | None
    path: Path
    sha256: str
    rule: LabelRule

    @property
    def n_classes(self) -> int:
        """Classes of a multiclass task; 2 for binary; labels count for multilabel."""
        if self.kind == "multiclass":
            return len(self.class_names or [])
        return 2 if self.kind == "binary" else len(self.label_columns)

    @property
    def n_outputs(self) -> int:
        """Width of the model output: 1 (binary), n labels (multilabel) or n classes."""
        if self.kind == "binary":
            return 1
        return len(self.label_columns) if self.kind == "multilabel" else self.n_classes


def list_tasks() -> list[str]:
    """Names of the task files in ``tasks/`` (sorted): the one list of tasks the harness knows."""
    return sorted(p.stem for p in tasks_dir().glob("*.yaml") if p.name not in NON_TASK_FILES)


def load_tasks() -> list[TaskSpec]:
    """Every task of ``tasks/`` (:func:`list_tasks` order), loaded and validated."""
    return [load_task(name) for name in list_tasks()]


def load_task(name: str) -> TaskSpec:
    """Load ``tasks/<name>.yaml``; an unknown name lists close matches and all tasks."""
    path = tasks_dir() / f"{name}.yaml"
    if name in (Path(n).stem for n in NON_TASK_FILES) or not path.is_file():
        names = list_tasks()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(f"unknown task {name!r}.{hint} Valid task names: {', '.join(names)}")
    data = _check_mapping(
        _read_yaml(path),
        path,
        where="the file",
        required={"name", "version", "kind", "description", "main_metric", "label"},
        optional={"label_columns", "label_names", "labels_from", "bins"},
    )
    if data["name"] != name:
        raise SpecError(f"name {data['name']!r} does not match the file name", path=path)
    if data["kind"] not in TASK_KINDS:
        raise SpecError(f"kind {data['kind']!r} is not one of {', '.join(TASK_KINDS)}", path=path)
    hashes = [spec_hash(data)]
    class_names = edges = phenos = None
    if "labels_from" in data:
        phenos, h = _load_phenotypes_with_hash(tasks_dir() / data["labels_from"])
        hashes.append(h)
        label_columns = [p.id for p in phenos]
        label_names = [p.name for p in phenos]
    else:
        if "label_columns" not in data:
            raise SpecError("needs `label_columns` or `labels_from`", path=path)
        label_columns = [str(c) for c in data["label_columns"]]
        label_names = [str(c) for c in data.get("label_names") or label_columns]
    if data["kind"] == "multiclass":
        bins = _check_mapping(
            data.get("bins"), path, where="bins", required={"edges_days", "names"}
        )
        edges = [float(e) for e in bins["edges_days"]]
        class_names = [str(n) for n in bins["names"]]
        if len(class_names) != len(edges) or edges != sorted(edges):
            raise SpecError(
                "bins: need increasing edges_days and one name per edge (the last class is "
                "open-ended)",
                path=path,
            )
        label_names = class_names
    if data["kind"] in ("binary", "multiclass") and len(label_columns) != 1:
        raise SpecError(f"a {data['kind']} task has exactly one label column", path=path)
    if not label_columns:
        raise SpecError("the task has no label column", path=path, fix="list `label_columns`")
    _check_main_metric(data["kind"], data["main_metric"], path)
    fields = TaskFields(name, data["kind"], label_columns, edges, phenos, path)
    label = parse_label(data["label"], fields)
    taken = sorted({c.name for c in label.columns()} & set(STAY_FIELDS))
    if taken:
        raise SpecError(
            f"label column(s) {taken} would overwrite stays.parquet columns of the same name "
            "(identity, times, demographics, CXR link or fold): a label there could reach the "
            "models as an input",
            path=path,
            fix="name label columns (and label.value_column) after the task",
        )
    scored = [c.name for c in label.columns() if c.role != "value"]
    if scored != label_columns:
        raise SpecError(
            f"label rule {label.kind!r} writes {scored}, not the label columns {label_columns}",
            path=path,
            fix="make `label_columns` and the rule's columns agree",
        )
    return TaskSpec(
        name=name,
        version=int(data["version"]),
        kind=data["kind"],
        description=" ".join(str(data["description"]).split()),
        main_metric=str(data["main_metric"]),
        label_columns=label_columns,
        label_names=label_names,
        class_names=class_names,
        bin_edges_days=edges,
        path=path,
        sha256=spec_hash(hashes) if len(hashes) > 1 else hashes[0],
        rule=label,
    )


def _check_main_metric(kind: str, name: Any, path: Path) -> None:
    """``main_metric`` must name a registered metric of the task's kind (selection and headline
    read the same registry); otherwise the file, the field and the valid names are reported."""
    from harness.metrics.registry import main_metric_for, metric_names

    try:
        main_metric_for(kind, str(name) if name is not None else "")
        ok = name is not None and str(name).strip() != ""
    except UnknownNameError:
        ok = False
    if not ok:
        raise SpecError(
            f"main_metric {name!r} is not a metric of a {kind} task; valid names: "
            f"{', '.join(metric_names(kind))}",
            path=path,
            fix="set `main_metric:` to one of the valid names",
        )


def spec_hashes() -> dict[str, str]:
    """Content hashes of every definition file, as recorded in cohort manifests."""
    out = {
        "cohort": load_cohort_spec().sha256,
        "variables": _load_variables_with_hash()[1],
        "phenotypes": _load_phenotypes_with_hash()[1],
    }
    for name in list_tasks():
        out[f"task:{name}"] = load_task(name).sha256
    return out
