"""Label rules: how a task YAML declares its label, and how every data source evaluates it.

A task's ``label:`` mapping names a rule kind of :data:`LABEL_RULES` and its parameters. The
registered kinds are:

``death_in_window``
    1 when the patient's death lies in a window anchored on the stay's times, else 0.
    ``window: {start, end}``: each bound is an anchor (``intime``, ``outtime``,
    ``prediction_time`` of the stay; ``admittime``, ``dischtime`` of its admission), optionally
    shifted (``intime + 168h``, ``outtime - 1d``), or null for no bound; both ends are inclusive.
    ``evidence``: the kinds of death record (:data:`DEATH_EVIDENCE`) in order of trust; for each
    stay the first kind it has decides, the others are ignored. A record known only as a
    calendar day is compared with the calendar days of the bounds. An admission's own death
    record lies inside that admission by definition, so bounds anchored on the admission
    (``admittime``, ``dischtime``) never exclude it (discharge times are entered
    administratively and may disagree with the recorded time of death).
``duration_bins``
    The time from ``start`` to ``end`` (anchors as above) in days, binned left-closed by the
    task's ``bins.edges_days`` (the last class has no upper bound; a duration below the first
    edge has no class). ``value_column`` (optional) also stores the duration itself.
``code_list``
    One 0/1 label per code list: 1 when any diagnosis of the stay's admission has a listed code
    of its own ICD version (upper case, without dots, exact match). The lists come from the
    task's ``labels_from`` file (``tasks/phenotypes.yaml`` layout) or from ``codes:``
    (``{label column: {icd9: [...], icd10: [...]}}``).

Sources evaluate a rule in one of two ways: event-level sources (MIMIC-IV, CLIF) hand over the
stays with their anchor times and death records (:class:`StayEvents`) and the rule computes the
label; sources that ship finished labels (CareBench) describe what they give
(:class:`GivenLabels`) and the rule picks the matching column. A rule that a source cannot
provide raises :class:`LabelUnavailableError` naming the task, the source and what is missing.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, overload

import numpy as np
import pandas as pd

from harness.errors import InputError, SpecError
from harness.registry import Registry

log = logging.getLogger(__name__)

#: Times of the ICU stay a bound may be anchored on.
STAY_ANCHORS = ("intime", "outtime", "prediction_time")
#: Times of the stay's hospital admission a bound may be anchored on.
ADMISSION_ANCHORS = ("admittime", "dischtime")
ANCHORS = STAY_ANCHORS + ADMISSION_ANCHORS
#: Column roles in stays.parquet: a 0/1 label, a class index, or a plain value (not scored).
ROLES = ("flag", "class", "value")


class LabelUnavailableError(InputError):
    """A source cannot provide the label a task declares (the message says what is missing)."""


# ------------------------------------------------------------------------------ death records


@dataclass(frozen=True)
class Evidence:
    """A kind of death record: how precise it is, what it belongs to, and what it is per source.

    ``present`` names the column that says whether a stay has the record (a time column, or a
    0/1 column for a record without its own time), ``time`` the column holding its time.
    """

    name: str
    precision: str  # "time" or "date"
    scope: str  # "admission" or "patient"
    present: str
    time: str
    meaning: str

    def read(self, frame: pd.DataFrame) -> tuple[np.ndarray, pd.Series]:
        """(has the record, its time) for each stay of ``frame``."""
        present = frame[self.present]
        has = present.notna() if present.dtype.kind == "M" else present.fillna(False).astype(bool)
        return has.to_numpy(), pd.to_datetime(frame[self.time])


#: The death records a source may provide (``StayEvents.evidence`` names those it has).
DEATH_EVIDENCE: dict[str, Evidence] = {
    e.name: e
    for e in (
        Evidence(
            name="admission_death_time",
            precision="time",
            scope="admission",
            present="admission_death_time",
            time="admission_death_time",
            meaning="the admission's recorded time of an in-hospital death (MIMIC-IV "
            "admissions.deathtime; CLIF discharge_dttm of a hospitalization discharged as Expired)",
        ),
        Evidence(
            name="admission_expired",
            precision="time",
            scope="admission",
            present="admission_expired",
            time="dischtime",
            meaning="the admission ended in death, at its discharge time (MIMIC-IV "
            "hospital_expire_flag = 1; CLIF discharge_category Expired)",
        ),
        Evidence(
            name="patient_death_time",
            precision="time",
            scope="patient",
            present="patient_death_time",
            time="patient_death_time",
            meaning="the patient's recorded time of death, in or out of hospital (CLIF death_dttm)",
        ),
        Evidence(
            name="patient_death_date",
            precision="date",
            scope="patient",
            present="patient_death_date",
            time="patient_death_date",
            meaning="the patient's date of death, a calendar day (MIMIC-IV patients.dod)",
        ),
    )
}


# ----------------------------------------------------------------------------- source inputs


@dataclass
class StayEvents:
    """What an event-level source hands the rules: one row per stay, plus its diagnoses.

    ``stays`` has ``stay_id``, ``hadm_id``, the anchor times it knows (:data:`ANCHORS`) and the
    columns of the death records named in ``evidence``; ``diagnoses`` (hadm_id, icd_version,
    icd_code upper case without dots) is None when the source has none.
    """

    source: str
    stays: pd.DataFrame
    evidence: frozenset[str]
    diagnoses: pd.DataFrame | None = None

    def anchors(self) -> list[str]:
        return [a for a in ANCHORS if a in self.stays.columns]


@dataclass
class GivenLabels:
    """Labels a source ships ready-made, described so that a rule can find its own.

    ``deaths`` maps a window (its text, e.g. ``[intime, outtime]``) to the 0/1 column giving
    death in that window; ``durations`` maps ``(start, end)`` anchor texts to a column in days;
    ``flags`` lists 0/1 columns that code-list labels may match by id or name, and
    ``flag_block`` the columns a code-list task takes by position when its names are absent.
    """

    source: str
    frame: pd.DataFrame
    deaths: dict[str, str] = field(default_factory=dict)
    durations: dict[tuple[str, str], str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    flag_block: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class LabelColumn:
    """One column a rule writes to stays.parquet and its role (:data:`ROLES`)."""

    name: str
    role: str


class LabelRule(Protocol):
    """A parsed ``label:`` declaration of one task (``kind``: its registered rule kind).

    ``kind`` and ``task`` are read-only: the rules are frozen dataclasses.
    """

    @property
    def kind(self) -> str:
        """The registered rule kind (a name in :data:`LABEL_RULES`)."""

    @property
    def task(self) -> str:
        """The task the rule labels."""

    def columns(self) -> list[LabelColumn]:
        """The columns this rule writes, in order."""

    def evaluate(self, events: StayEvents) -> pd.DataFrame:
        """The label columns computed from an event-level source (index of ``events.stays``)."""

    def from_given(self, given: GivenLabels) -> pd.DataFrame:
        """The label columns taken from a source's ready-made labels (index of ``given.frame``)."""

    def describe(self) -> str:
        """One line saying what the rule computes (for messages)."""


@dataclass(frozen=True)
class TaskFields:
    """The task-file fields a rule parser may read besides its own parameters."""

    name: str
    kind: str
    label_columns: list[str]
    edges_days: list[float] | None
    code_lists: list[Any] | None  # objects with id, name, icd9, icd10 (from ``labels_from``)
    path: Path


@dataclass(frozen=True)
class RuleKind:
    """A registered rule kind: its parser, the task kinds it serves and its parameters."""

    parse: Callable[[dict[str, Any], TaskFields], LabelRule]
    task_kinds: tuple[str, ...]
    parameters: tuple[str, ...]
    description: str


LABEL_RULES: Registry[RuleKind] = Registry("label rule")


def _register(name: str, *, task_kinds: tuple[str, ...], parameters: tuple[str, ...], doc: str):
    def decorator(fn: Callable[[dict[str, Any], TaskFields], LabelRule]):
        LABEL_RULES.add(name, RuleKind(fn, task_kinds, parameters, doc))
        return fn

    return decorator


def parse_label(data: Any, task: TaskFields) -> LabelRule:
    """Parse a task's ``label:`` mapping with its registered rule kind.

    Raises:
        SpecError: naming the task file, the field and the valid names or values.
    """
    from harness.cohort.spec import _check_mapping
    from harness.errors import UnknownNameError

    if not isinstance(data, dict) or "rule" not in data:
        raise SpecError(
            f"`label` must be a mapping with a `rule` key; rule kinds: {', '.join(LABEL_RULES)}",
            path=task.path,
            fix="declare the label, e.g. `label: {rule: death_in_window, ...}` (see tasks/)",
        )
    try:
        kind = LABEL_RULES.get(str(data["rule"]))
    except UnknownNameError as exc:
        raise SpecError(f"label.rule: {exc}", path=task.path, fix="use a registered rule") from None
    params = dict(data)
    params.pop("rule")
    _check_mapping(params, task.path, where="label", required=set(), optional=set(kind.parameters))
    if task.kind not in kind.task_kinds:
        raise SpecError(
            f"label.rule {data['rule']!r} gives {'/'.join(kind.task_kinds)} labels, "
            f"not {task.kind}",
            path=task.path,
            fix=f"set `kind:` to {' or '.join(kind.task_kinds)} or choose another rule",
        )
    return kind.parse(params, task)


# --- bounds and windows


_BOUND = re.compile(r"^\s*([a-z_]+)\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*([hd]))?\s*$")


@dataclass(frozen=True)
class Bound:
    """An anchor time of the stay, optionally shifted by a number of hours."""

    anchor: str
    offset_hours: float = 0.0

    def __str__(self) -> str:
        if not self.offset_hours:
            return self.anchor
        sign = "+" if self.offset_hours > 0 else "-"
        return f"{self.anchor} {sign} {abs(self.offset_hours):g}h"

    def times(self, frame: pd.DataFrame) -> pd.Series:
        return pd.to_datetime(frame[self.anchor]) + pd.Timedelta(hours=self.offset_hours)


@overload
def parse_bound(value: Any, path: Path, where: str, *, optional: Literal[False]) -> Bound: ...


@overload
def parse_bound(value: Any, path: Path, where: str, *, optional: bool) -> Bound | None: ...


def parse_bound(value: Any, path: Path, where: str, *, optional: bool) -> Bound | None:
    """``intime``, ``intime + 168h``, ``outtime - 1d`` (or null when ``optional``).

    A required bound (``optional=False``) is never None, which the first overload states.
    """
    if value is None and optional:
        return None
    m = _BOUND.match(str(value)) if isinstance(value, str) else None
    if m is None or m.group(1) not in ANCHORS:
        raise SpecError(
            f"{where}: {value!r} is not an anchor time; write one of {', '.join(ANCHORS)}, "
            "optionally shifted (`intime + 168h`, `outtime - 1d`)"
            + (", or null for no bound" if optional else ""),
            path=path,
            fix=f"correct {where}",
        )
    hours = float(m.group(3) or 0) * (24 if m.group(4) == "d" else 1)
    return Bound(m.group(1), -hours if m.group(2) == "-" else hours)


@dataclass(frozen=True)
class Window:
    """Inclusive [start, end] of anchor times; a None end is unbounded."""

    start: Bound | None
    end: Bound | None

    def __str__(self) -> str:
        return f"[{self.start or 'open'}, {self.end or 'open'}]"

    @property
    def anchors(self) -> list[str]:
        return [b.anchor for b in (self.start, self.end) if b is not None]

    def contains(self, frame: pd.DataFrame, time: pd.Series, evidence: Evidence) -> np.ndarray:
        """Whether each stay's record time lies in the window (a missing time never does)."""
        inside = np.ones(len(frame), dtype=bool)
        for bound, compare, edge in (
            (self.start, operator.ge, "admittime"),
            (self.end, operator.le, "dischtime"),
        ):
            if bound is None:
                continue
            if evidence.scope == "admission" and bound == Bound(edge):
                # The admission's own death record lies inside its admission (MIMIC-IV records a
                # few deathtimes after dischtime); any other bound, shifted ones included, is
                # compared like every other record's.
                continue
            limit, t = bound.times(frame), time
            if evidence.precision == "date":
                limit, t = limit.dt.normalize(), t.dt.normalize()
            inside &= compare(t, limit).fillna(False).to_numpy(dtype=bool)
        return inside


# --- death_in_window


@dataclass(frozen=True)
class DeathInWindow:
    task: str
    column: str
    window: Window
    evidence: tuple[str, ...]
    kind: str = "death_in_window"

    def columns(self) -> list[LabelColumn]:
        return [LabelColumn(self.column, "flag")]

    def describe(self) -> str:
        return f"death in {self.window} (records: {', '.join(self.evidence)})"

    def evaluate(self, events: StayEvents) -> pd.DataFrame:
        frame = events.stays
        usable = [e for e in self.evidence if e in events.evidence]
        if not usable:
            raise _unavailable(
                self,
                events.source,
                f"it records none of {', '.join(self.evidence)} "
                f"(it has: {', '.join(sorted(events.evidence)) or 'no death record'})",
            )
        _require_anchors(self, events, self.window.anchors)
        label = np.zeros(len(frame), dtype=bool)
        decided = np.zeros(len(frame), dtype=bool)
        for name in usable:
            ev = DEATH_EVIDENCE[name]
            has, time = ev.read(frame)
            label |= has & ~decided & self.window.contains(frame, time, ev)
            decided |= has
        return pd.DataFrame({self.column: label.astype("int8")}, index=frame.index)

    def from_given(self, given: GivenLabels) -> pd.DataFrame:
        col = given.deaths.get(str(self.window))
        if col is None:
            offered = ", ".join(f"death in {w}" for w in given.deaths) or "no death label"
            raise _unavailable(self, given.source, f"it gives only {offered}")
        return pd.DataFrame({self.column: given.frame[col].astype("int8")})


@_register(
    "death_in_window",
    task_kinds=("binary",),
    parameters=("window", "evidence"),
    doc="1 when the first available death record lies in [start, end] of stay/admission times",
)
def _parse_death(params: dict[str, Any], task: TaskFields) -> DeathInWindow:
    from harness.cohort.spec import _check_mapping

    for key in ("window", "evidence"):
        if key not in params:
            raise SpecError(f"label: missing key {key!r} for rule death_in_window", path=task.path)
    w = _check_mapping(params["window"], task.path, where="label.window", required={"start", "end"})
    window = Window(
        parse_bound(w["start"], task.path, "label.window.start", optional=True),
        parse_bound(w["end"], task.path, "label.window.end", optional=True),
    )
    evidence = params["evidence"]
    if not isinstance(evidence, list) or not evidence:
        raise SpecError(
            "label.evidence must be a non-empty list of death records",
            path=task.path,
            fix=f"list some of {', '.join(DEATH_EVIDENCE)} in order of trust",
        )
    for name in evidence:
        if name not in DEATH_EVIDENCE:
            raise SpecError(
                f"label.evidence: unknown death record {name!r}; valid: "
                f"{', '.join(DEATH_EVIDENCE)}",
                path=task.path,
                fix="correct the name",
            )
    if len(set(evidence)) != len(evidence):
        raise SpecError("label.evidence lists a record twice", path=task.path)
    return DeathInWindow(task.name, task.label_columns[0], window, tuple(map(str, evidence)))


# --- duration_bins


@dataclass(frozen=True)
class DurationBins:
    task: str
    column: str
    start: Bound
    end: Bound
    edges_days: tuple[float, ...]
    value_column: str | None = None
    kind: str = "duration_bins"

    def columns(self) -> list[LabelColumn]:
        value = [LabelColumn(self.value_column, "value")] if self.value_column else []
        return [*value, LabelColumn(self.column, "class")]

    def describe(self) -> str:
        edges = ", ".join(f"{e:g}" for e in self.edges_days)
        return f"days from {self.start} to {self.end}, binned at {edges}"

    def _frame(self, days: pd.Series) -> pd.DataFrame:
        days = days.astype("float64")
        first, *rest = self.edges_days
        cls = np.zeros(len(days), dtype=np.int64)
        for edge in rest:
            cls += (days >= edge).to_numpy(dtype=np.int64)
        # before the first edge, or no duration: no class (<NA> in the nullable Int8 column)
        out = pd.Series(cls, index=days.index).astype("Int8").mask((days < first) | days.isna())
        if not out.isna().any():
            out = out.astype("int8")
        frame = {self.value_column: days} if self.value_column else {}
        return pd.DataFrame({**frame, self.column: out}, index=days.index)

    def evaluate(self, events: StayEvents) -> pd.DataFrame:
        _require_anchors(self, events, [self.start.anchor, self.end.anchor])
        frame = events.stays
        delta = self.end.times(frame) - self.start.times(frame)
        return self._frame(delta.dt.total_seconds() / 86400)

    def from_given(self, given: GivenLabels) -> pd.DataFrame:
        col = given.durations.get((str(self.start), str(self.end)))
        if col is None:
            offered = ", ".join(f"{a} to {b}" for a, b in given.durations) or "no duration"
            raise _unavailable(self, given.source, f"it gives only durations {offered}")
        return self._frame(given.frame[col])


@_register(
    "duration_bins",
    task_kinds=("multiclass",),
    parameters=("start", "end", "value_column"),
    doc="days from start to end binned by the task's bins.edges_days",
)
def _parse_duration(params: dict[str, Any], task: TaskFields) -> DurationBins:
    for key in ("start", "end"):
        if key not in params:
            raise SpecError(f"label: missing key {key!r} for rule duration_bins", path=task.path)
    if not task.edges_days:
        raise SpecError("rule duration_bins needs `bins.edges_days`", path=task.path)
    value = params.get("value_column")
    if value is not None and (not isinstance(value, str) or value in task.label_columns):
        raise SpecError(
            f"label.value_column {value!r} must be a column name other than the label column",
            path=task.path,
        )
    return DurationBins(
        task.name,
        task.label_columns[0],
        parse_bound(params["start"], task.path, "label.start", optional=False),
        parse_bound(params["end"], task.path, "label.end", optional=False),
        tuple(task.edges_days),
        value,
    )


# --- code_list


@dataclass(frozen=True)
class CodeList:
    """The ICD codes (upper case, no dots) whose presence sets one label column."""

    id: str
    name: str
    icd9: tuple[str, ...]
    icd10: tuple[str, ...]


@dataclass(frozen=True)
class CodeListRule:
    task: str
    lists: tuple[CodeList, ...]
    kind: str = "code_list"

    def columns(self) -> list[LabelColumn]:
        return [LabelColumn(c.id, "flag") for c in self.lists]

    def describe(self) -> str:
        return f"diagnoses of the admission in {len(self.lists)} ICD code list(s)"

    def codes(self) -> pd.DataFrame:
        """(label, icd_version, icd_code) rows, one per listed code."""
        rows = [(c.id, 9, code) for c in self.lists for code in c.icd9]
        rows += [(c.id, 10, code) for c in self.lists for code in c.icd10]
        return pd.DataFrame(rows, columns=["label", "icd_version", "icd_code"]).drop_duplicates()

    def evaluate(self, events: StayEvents) -> pd.DataFrame:
        if events.diagnoses is None:
            raise _unavailable(self, events.source, "it has no diagnosis table")
        dx = events.diagnoses.astype({"icd_version": "int64", "icd_code": "string"})
        codes = self.codes().astype({"icd_version": "int64", "icd_code": "string"})
        hits = dx.merge(codes, on=["icd_version", "icd_code"])[["hadm_id", "label"]]
        hits = hits.drop_duplicates().assign(flag=1)
        ids = [c.id for c in self.lists]
        table = hits.pivot_table(index="hadm_id", columns="label", values="flag", fill_value=0)
        table = table.reindex(columns=ids, fill_value=0)
        hadm = events.stays["hadm_id"]
        out = table.reindex(hadm.to_numpy(), fill_value=0).fillna(0).astype("int8")
        out.index = hadm.index
        out.columns.name = None
        return out

    def from_given(self, given: GivenLabels) -> pd.DataFrame:
        found = {}
        for c in self.lists:
            col = next((n for n in (c.id, c.name) if n in given.flags), None)
            if col is not None:
                found[c.id] = col
        if len(found) < len(self.lists) and len(given.flag_block) == len(self.lists):
            log.warning(
                "%s: label columns of task %s taken by position (%s ... %s)",
                given.source,
                self.task,
                given.flag_block[0],
                given.flag_block[-1],
            )
            found = dict(zip((c.id for c in self.lists), given.flag_block, strict=True))
        if len(found) < len(self.lists):
            missing = [c.name for c in self.lists if c.id not in found]
            raise _unavailable(
                self,
                given.source,
                f"no column is named after {len(missing)} of its labels (e.g. {missing[0]!r}) "
                "and no positional block of that size exists",
            )
        return pd.DataFrame({i: given.frame[col].astype("int8") for i, col in found.items()})


@_register(
    "code_list",
    task_kinds=("binary", "multilabel"),
    parameters=("table", "codes"),
    doc="1 per code list when a diagnosis of the admission has a listed ICD code",
)
def _parse_codes(params: dict[str, Any], task: TaskFields) -> CodeListRule:
    from harness.cohort.spec import _check_mapping

    table = params.get("table", "diagnoses")
    if table != "diagnoses":
        raise SpecError(
            f"label.table {table!r} is not supported; codes are matched in `diagnoses`",
            path=task.path,
        )
    if ("codes" in params) == (task.code_lists is not None):
        raise SpecError(
            "a code_list task takes its codes from `labels_from` or from `label.codes`, "
            "exactly one of them",
            path=task.path,
            fix="keep one of the two",
        )
    if task.code_lists is not None:
        lists = [CodeList(p.id, p.name, tuple(p.icd9), tuple(p.icd10)) for p in task.code_lists]
        return CodeListRule(task.name, tuple(lists))
    raw = params["codes"]
    if not isinstance(raw, dict) or set(map(str, raw)) != set(task.label_columns):
        raise SpecError(
            "label.codes must map each label column "
            f"({', '.join(task.label_columns)}) to its code lists",
            path=task.path,
            fix="write `codes: {<label column>: {icd9: [...], icd10: [...]}}`",
        )
    lists = []
    for col in task.label_columns:
        where = f"label.codes.{col}"
        entry = _check_mapping(
            raw[col], task.path, where=where, required=set(), optional={"icd9", "icd10"}
        )
        icd9 = icd_codes(entry.get("icd9"), task.path, f"{where}.icd9")
        icd10 = icd_codes(entry.get("icd10"), task.path, f"{where}.icd10")
        if not icd9 and not icd10:
            raise SpecError(f"{where} lists no code", path=task.path, fix="list icd9/icd10 codes")
        lists.append(CodeList(col, col, icd9, icd10))
    return CodeListRule(task.name, tuple(lists))


def icd_codes(value: Any, path: Path, where: str) -> tuple[str, ...]:
    """A code list (null = empty), upper-cased without dots; blank entries are errors."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(
            f"{where} must be a list of codes, got {type(value).__name__} {value!r}",
            path=path,
            fix="write one code per list item (- '5845')",
        )
    codes = tuple(str(c).strip().replace(".", "").upper() for c in value if c is not None)
    if len(codes) != len(value) or not all(codes):
        raise SpecError(f"{where} has a blank code", path=path, fix="remove the blank entry")
    return codes


# ------------------------------------------------------------------------------- helpers


def _unavailable(rule: LabelRule, source: str, why: str) -> LabelUnavailableError:
    return LabelUnavailableError(
        f"task {rule.task!r} ({rule.kind}: {rule.describe()}) cannot be labelled from {source}: "
        f"{why}",
        fix="build the cohort from a source that records it, or leave the task out of this "
        "dataset (its evaluation is then skipped)",
    )


def _require_anchors(rule: LabelRule, events: StayEvents, anchors: Sequence[str]) -> None:
    missing = [a for a in anchors if a not in events.stays.columns]
    if missing:
        raise _unavailable(
            rule,
            events.source,
            f"it has no {', '.join(missing)} time (it has: {', '.join(events.anchors())})",
        )


# ------------------------------------------------------------------------------- labelling


@dataclass
class LabelTable:
    """The label columns of a cohort's stays and the tasks the source could not label."""

    frame: pd.DataFrame
    columns: list[LabelColumn]
    unavailable: dict[str, str]  # task -> reason
    unavailable_columns: list[str]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def ordered_tasks(tasks: Sequence[Any]) -> list[Any]:
    """Tasks in stays.parquet column order: binary, then multiclass, then multilabel; by name."""
    rank = {"binary": 0, "multiclass": 1, "multilabel": 2}
    return sorted(tasks, key=lambda t: (rank.get(t.kind, 3), t.name))


def label_columns(tasks: Sequence[Any]) -> list[LabelColumn]:
    """Every column the tasks' rules write, in :func:`ordered_tasks` order (no duplicates)."""
    out: dict[str, LabelColumn] = {}
    for task in ordered_tasks(tasks):
        for col in task.rule.columns():
            if col.name in out:
                raise SpecError(
                    f"label column {col.name!r} of task {task.name!r} is also written by another "
                    "task",
                    path=task.path,
                    fix="give the task its own label column names",
                )
            out[col.name] = col
    return list(out.values())


def compute_labels(
    tasks: Sequence[Any], label: Callable[[LabelRule], pd.DataFrame], index: pd.Index
) -> LabelTable:
    """Evaluate every task's rule with ``label`` (a source's way of evaluating a rule).

    Tasks whose rule raises :class:`LabelUnavailableError` are left out with a warning and
    named in the result; if no task can be labelled the first error is raised.
    """
    frames, columns, unavailable, gone = [], [], {}, []
    first_error: LabelUnavailableError | None = None
    for task in ordered_tasks(tasks):
        cols = task.rule.columns()
        try:
            frame = label(task.rule)
        except LabelUnavailableError as exc:
            log.warning("%s", str(exc).splitlines()[0])
            unavailable[task.name] = str(exc).splitlines()[0]
            gone += [c.name for c in cols]
            first_error = first_error or exc
            continue
        frames.append(frame[[c.name for c in cols]].set_axis(index, axis=0))
        columns += cols
    if not frames and first_error is not None:
        raise first_error
    frame = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=index)
    return LabelTable(frame, columns, unavailable, gone)


def label_stays(tasks: Sequence[Any], events: StayEvents) -> LabelTable:
    """Labels of an event-level source's stays (index and order of ``events.stays``)."""
    return compute_labels(tasks, lambda rule: rule.evaluate(events), events.stays.index)


def label_given(tasks: Sequence[Any], given: GivenLabels) -> LabelTable:
    """Labels taken from a source's ready-made label columns (index of ``given.frame``)."""
    return compute_labels(tasks, lambda rule: rule.from_given(given), given.frame.index)


def diagnosis_codes(tasks: Sequence[Any]) -> pd.DataFrame:
    """(icd_version, icd_code) of every code any task lists (to read only useful diagnoses)."""
    frames = [t.rule.codes() for t in tasks if isinstance(t.rule, CodeListRule)]
    if not frames:
        return pd.DataFrame({"icd_version": pd.Series(dtype="int64"), "icd_code": []})
    return pd.concat(frames)[["icd_version", "icd_code"]].drop_duplicates().reset_index(drop=True)


def prevalence(stays: pd.DataFrame, columns: Sequence[LabelColumn]) -> dict[str, Any]:
    """Share of 1s of each flag column, then counts per class of each class column."""
    out: dict[str, Any] = {
        c.name: (float(stays[c.name].mean()) if len(stays) else None)
        for c in columns
        if c.role == "flag"
    }
    for c in columns:
        if c.role == "class":
            counts = stays[c.name].value_counts().sort_index()
            classes = counts.index.to_numpy(dtype=np.int64)
            out[c.name] = {str(k): int(v) for k, v in zip(classes, counts, strict=True)}
    return out
