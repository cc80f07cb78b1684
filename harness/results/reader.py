"""A typed view of ``result.json``: tasks -> cohorts -> blocks, each block's scores as values.

Every reader of results (the leaderboard's ranking, summary tables and rendering, the headline
rows `harness evaluate` prints, the choice of reference submissions, the planted-truth check)
goes through :class:`Result`, so none of them walks the JSON itself. A document is migrated to
the current schema version first (:func:`harness.results.migrate.migrate`); a block or field
that a result does not hold reads as None (a single value or block) or empty (a mapping), never
as an error: results written by older harness versions lack some of them.

The reader checks nothing: a result that comes from outside the harness's own cache is vetted
first (schema, signature, :func:`harness.leaderboard.publish.publishable_result`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.results.migrate import LEGACY_PROFILE, LEGACY_THRESHOLD, migrate, version_of

#: Fields of a protocol that make two entries comparable (the leaderboard's ranking key).
PROTOCOL_FIELDS = (
    "profile", "folds", "seeds", "max_epochs", "n_resamples", "selection", "threshold", "tuning",
)  # fmt: skip


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (absent or malformed blocks)."""
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------
# Values of one block


@dataclass(frozen=True)
class Estimate:
    """A metric's point value and 95% CI; mean and sd over folds x seeds units when recorded."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    mean: float | None = None
    sd: float | None = None
    n_units: int | None = None
    #: Share of bootstrap resamples on which the metric was undefined (left out of the CI).
    undefined_fraction: float | None = None
    unstable: bool = False

    @classmethod
    def of(cls, raw: Any) -> Estimate | None:
        """The estimate recorded in ``raw``, or None when there is none."""
        if not isinstance(raw, Mapping):
            return None
        n_units = raw.get("n_units")
        return cls(
            value=_number(raw.get("value")),
            ci_low=_number(raw.get("ci_low")),
            ci_high=_number(raw.get("ci_high")),
            mean=_number(raw.get("mean")),
            sd=_number(raw.get("sd")),
            n_units=n_units if isinstance(n_units, int) else None,
            undefined_fraction=_number(raw.get("undefined_fraction")),
            unstable=bool(raw.get("unstable", False)),
        )


@dataclass(frozen=True)
class Delta:
    """A paired difference (entry - reference) on shared resamples, with CI and p-value.

    Fusion-gain rows also carry ``q_value`` (Benjamini-Hochberg), ``significant`` and, for the
    gain over the best single modality, the ``reference`` chosen for that label.
    """

    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    q_value: float | None = None
    significant: bool = False
    reference: str | None = None

    @classmethod
    def of(cls, raw: Any) -> Delta | None:
        if not isinstance(raw, Mapping):
            return None
        reference = raw.get("reference")
        return cls(
            delta=_number(raw.get("delta")),
            ci_low=_number(raw.get("ci_low")),
            ci_high=_number(raw.get("ci_high")),
            p_value=_number(raw.get("p_value")),
            q_value=_number(raw.get("q_value")),
            significant=bool(raw.get("significant", False)),
            reference=reference if isinstance(reference, str) else None,
        )

    def better_at(self, alpha: float = 0.05) -> bool:
        """Whether the entry is significantly better: delta > 0 with p < ``alpha``."""
        return (
            self.delta is not None
            and self.p_value is not None
            and self.delta > 0
            and self.p_value < alpha
        )


@dataclass(frozen=True)
class References:
    """The reference submissions a block was compared with (None: none was evaluated)."""

    ehr_only: str | None = None
    cxr_only: str | None = None
    best_unimodal: str | None = None

    @classmethod
    def of(cls, raw: Any) -> References:
        refs = _mapping(raw)
        return cls(refs.get("ehr_only"), refs.get("cxr_only"), refs.get("best_unimodal"))


@dataclass(frozen=True)
class FusionGain:
    """Per-label gain of an entry over a reference (``fusion_gain``: the EHR-only reference;
    ``fusion_gain_unimodal``: the better single modality on each label)."""

    metric: str
    alpha: float | None
    #: The reference(s) compared with: one for ``fusion_gain``, the candidates otherwise.
    references: tuple[str, ...]
    labels: dict[str, Delta]
    bh_family: str | None = None
    bh_m: int | None = None

    @classmethod
    def of(cls, raw: Any) -> FusionGain | None:
        if not isinstance(raw, Mapping) or not raw:
            return None
        refs = raw.get("references") or [raw.get("reference")]
        labels = {k: Delta.of(v) for k, v in _mapping(raw.get("labels")).items()}
        return cls(
            metric=str(raw.get("metric")),
            alpha=_number(raw.get("alpha")),
            references=tuple(str(r) for r in refs if r is not None),
            labels={k: v for k, v in labels.items() if v is not None},
            bh_family=raw.get("bh_family"),
            bh_m=raw.get("bh_m"),
        )

    @property
    def reference(self) -> str | None:
        """The single reference of ``fusion_gain`` (the first candidate otherwise)."""
        return self.references[0] if self.references else None

    def significant_labels(self) -> dict[str, float]:
        """Labels with a significant gain and their deltas, largest first."""
        hits = [(k, d.delta or 0.0) for k, d in self.labels.items() if d.significant]
        return dict(sorted(hits, key=lambda item: -item[1]))


def _numbers(raw: Any) -> tuple[float | None, ...]:
    return tuple(_number(v) for v in raw) if isinstance(raw, list) else ()


@dataclass(frozen=True)
class Versus:
    """The paired difference of an entry to one reference at every rate of a curve."""

    delta: tuple[float | None, ...]
    ci_low: tuple[float | None, ...]
    ci_high: tuple[float | None, ...]
    p_value: tuple[float | None, ...]

    @classmethod
    def of(cls, raw: Any) -> Versus | None:
        if not isinstance(raw, Mapping):
            return None
        return cls(*(_numbers(raw.get(k)) for k in ("delta", "ci_low", "ci_high", "p_value")))


@dataclass(frozen=True)
class Curve:
    """A robustness curve: the headline metric over a scenario's rates with per-rate CIs, its
    area above chance, its normalised area (1: no degradation) with the area's CI when recorded
    (``has_ci``), and the paired comparison with the references (results of schema 1.3 on)."""

    metric: str
    rates: tuple[float, ...]
    values: tuple[float | None, ...]
    auc_normalised: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    has_ci: bool = False
    values_ci_low: tuple[float | None, ...] = ()
    values_ci_high: tuple[float | None, ...] = ()
    chance: float | None = None
    area_above_chance: float | None = None
    area_above_chance_ci: tuple[float | None, ...] = ()
    versus: Mapping[str, Versus] | None = None
    helps_up_to: float | None = None

    @classmethod
    def of(cls, raw: Any) -> Curve | None:
        if not isinstance(raw, Mapping) or not raw:
            return None
        versus = {k: Versus.of(v) for k, v in _mapping(raw.get("versus")).items()}
        return cls(
            metric=str(raw.get("metric")),
            rates=tuple(float(r) for r in raw.get("rates") or ()),
            values=tuple(_number(v) for v in raw.get("values") or ()),
            auc_normalised=_number(raw.get("auc_normalised")),
            ci_low=_number(raw.get("ci_low")),
            ci_high=_number(raw.get("ci_high")),
            has_ci="ci_low" in raw,
            values_ci_low=_numbers(raw.get("values_ci_low")),
            values_ci_high=_numbers(raw.get("values_ci_high")),
            chance=_number(raw.get("chance")),
            area_above_chance=_number(raw.get("area_above_chance")),
            area_above_chance_ci=_numbers(raw.get("area_above_chance_ci")),
            versus={k: v for k, v in versus.items() if v is not None} if "versus" in raw else None,
            helps_up_to=_number(raw.get("helps_up_to")),
        )

    def at(self, rate: float) -> float | None:
        """The value at ``rate`` (None when the curve has no such rate)."""
        return next((v for r, v in zip(self.rates, self.values, strict=False) if r == rate), None)


@dataclass(frozen=True)
class Reliance:
    """How much an entry relies on each modality: the headline metric with both, without the
    image and without the EHR, the paired drops, and the imbalance index (share of the total
    drop caused by removing the EHR: 1 for an entry that ignores the image, 0 for one that
    ignores the EHR)."""

    metric: str
    full: Estimate | None
    without_cxr: Estimate | None
    without_ehr: Estimate | None
    drop_without_cxr: Delta | None
    drop_without_ehr: Delta | None
    imbalance_index: Estimate | None
    dominant: str | None

    @classmethod
    def of(cls, raw: Any) -> Reliance | None:
        if not isinstance(raw, Mapping) or not raw:
            return None
        return cls(
            metric=str(raw.get("metric")),
            full=Estimate.of(raw.get("full")),
            without_cxr=Estimate.of(raw.get("without_cxr")),
            without_ehr=Estimate.of(raw.get("without_ehr")),
            drop_without_cxr=Delta.of(raw.get("drop_without_cxr")),
            drop_without_ehr=Delta.of(raw.get("drop_without_ehr")),
            imbalance_index=Estimate.of(raw.get("imbalance_index")),
            dominant=raw.get("dominant"),
        )


@dataclass(frozen=True)
class AttributeTable:
    """Fairness of one attribute (or intersection): per-group rows, the across-group summary per
    metric, and the gap tests (results before those: the legacy ``gap_ci``)."""

    name: str
    groups: tuple[Mapping[str, Any], ...]
    summary: Mapping[str, Mapping[str, Any]]
    gap_test: Mapping[str, Mapping[str, Any]]
    gap_ci: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, name: str, raw: Any) -> AttributeTable:
        table = _mapping(raw)
        return cls(
            name=name,
            groups=tuple(g for g in table.get("groups") or () if isinstance(g, Mapping)),
            summary=_mapping(table.get("summary")),
            gap_test=_mapping(table.get("gap_test")),
            gap_ci=_mapping(table.get("gap_ci")),
        )

    def across(self, metric: str) -> Mapping[str, Any]:
        """The across-group summary of ``metric`` (min, max, difference, worst group), or {}."""
        return _mapping(self.summary.get(metric))

    def rates(self, metric: str) -> dict[str, float]:
        """``metric`` per group that is reported (suppressed groups and nulls left out)."""
        return {
            str(g["group"]): float(g[metric])
            for g in self.groups
            if not g.get("suppressed") and _number(g.get(metric)) is not None
        }


@dataclass(frozen=True)
class Fairness:
    """A block's fairness report; a multilabel task holds one report per label (``labels``)."""

    threshold_rule: str | None
    min_group_size: int | None
    attributes: dict[str, AttributeTable]
    labels: dict[str, Fairness]

    @classmethod
    def of(cls, raw: Any) -> Fairness | None:
        if not isinstance(raw, Mapping) or not raw:
            return None
        labels = {k: cls.of(v) for k, v in _mapping(raw.get("labels")).items()}
        return cls(
            threshold_rule=raw.get("threshold_rule"),
            min_group_size=raw.get("min_group_size"),
            attributes={
                k: AttributeTable.of(k, v) for k, v in _mapping(raw.get("attributes")).items()
            },
            labels={k: v for k, v in labels.items() if v is not None},
        )

    def attribute(self, name: str) -> AttributeTable | None:
        return self.attributes.get(name)


@dataclass(frozen=True)
class CrossCohort:
    """The headline metric of a model scored on another cohort's test stays."""

    metric: str
    estimate: Estimate
    n_stays: int | None


# --------------------------------------------------------------------------------------------
# One (task, cohort)


@dataclass(frozen=True)
class Block:
    """The scores of one (task, cohort) of a result."""

    task: str
    cohort: str
    raw: Mapping[str, Any]

    @property
    def kind(self) -> str | None:
        return self.raw.get("kind")

    @property
    def main_metric(self) -> str | None:
        """The headline metric: what ranks, deltas and robustness curves use."""
        return self.raw.get("main_metric")

    @property
    def n_stays(self) -> int | None:
        return self.raw.get("n_stays")

    @property
    def n_subjects(self) -> int | None:
        return self.raw.get("n_subjects")

    @property
    def bootstrap(self) -> Mapping[str, Any]:
        """How the shared resamples were drawn (seed, n_resamples, n_subjects, key)."""
        return _mapping(self.raw.get("bootstrap"))

    @property
    def n_resamples(self) -> int | None:
        return self.bootstrap.get("n_resamples")

    @property
    def metrics(self) -> dict[str, Estimate]:
        estimates = {k: Estimate.of(v) for k, v in _mapping(self.raw.get("metrics")).items()}
        return {k: v for k, v in estimates.items() if v is not None}

    def metric(self, name: str) -> Estimate | None:
        return Estimate.of(_mapping(self.raw.get("metrics")).get(name))

    @property
    def headline(self) -> Estimate | None:
        """The main metric's estimate."""
        return None if self.main_metric is None else self.metric(self.main_metric)

    @property
    def main_resamples(self) -> list[float | None] | None:
        """The headline metric on every shared resample (null where undefined), or None in
        results written before they were stored."""
        values = self.raw.get("main_resamples")
        return None if values is None else [_number(v) for v in values]

    @property
    def per_label(self) -> dict[str, dict[str, Estimate]]:
        out = {}
        for label, by_metric in _mapping(self.raw.get("per_label")).items():
            estimates = {m: Estimate.of(v) for m, v in _mapping(by_metric).items()}
            out[label] = {m: v for m, v in estimates.items() if v is not None}
        return out

    @property
    def references(self) -> References:
        return References.of(self.raw.get("references"))

    @property
    def paired_deltas(self) -> dict[str, dict[str, Delta]]:
        """Reference -> metric -> paired delta."""
        out = {}
        for ref, by_metric in _mapping(self.raw.get("paired_deltas")).items():
            deltas = {m: Delta.of(v) for m, v in _mapping(by_metric).items()}
            out[ref] = {m: v for m, v in deltas.items() if v is not None}
        return out

    def paired_delta(self, reference: str | None, metric: str | None = None) -> Delta | None:
        """The delta against ``reference`` on ``metric`` (default: the headline metric)."""
        if reference is None:
            return None
        by_metric = _mapping(_mapping(self.raw.get("paired_deltas")).get(reference))
        return Delta.of(by_metric.get(metric or self.main_metric or ""))

    @property
    def delta_vs_ehr(self) -> Delta | None:
        """The headline delta against the block's EHR-only reference, if it had one."""
        return self.paired_delta(self.references.ehr_only)

    @property
    def fusion_gain(self) -> FusionGain | None:
        return FusionGain.of(self.raw.get("fusion_gain"))

    @property
    def fusion_gain_reason(self) -> str | None:
        """Why ``fusion_gain`` is null (no EHR-only reference), when it is."""
        return self.raw.get("fusion_gain_reason")

    @property
    def fusion_gain_unimodal(self) -> FusionGain | None:
        return FusionGain.of(self.raw.get("fusion_gain_unimodal"))

    def gain(self, field: str) -> FusionGain | None:
        """``fusion_gain`` or ``fusion_gain_unimodal`` by name."""
        if field not in ("fusion_gain", "fusion_gain_unimodal"):
            raise KeyError(f"{field!r} is not a fusion-gain block")
        return FusionGain.of(self.raw.get(field))

    @property
    def robustness(self) -> dict[str, Curve]:
        curves = {k: Curve.of(v) for k, v in _mapping(self.raw.get("robustness")).items()}
        return {k: v for k, v in curves.items() if v is not None}

    def curve(self, scenario: str) -> Curve | None:
        return Curve.of(_mapping(self.raw.get("robustness")).get(scenario))

    @property
    def reliance(self) -> Reliance | None:
        """The modality-reliance table (results of schema 1.3 on, with ``ehr_missing`` run)."""
        return Reliance.of(self.raw.get("reliance"))

    @property
    def fairness(self) -> Fairness | None:
        return Fairness.of(self.raw.get("fairness"))

    @property
    def cross_cohort(self) -> dict[str, CrossCohort]:
        """``<this cohort>-><other>`` -> the model scored on the other cohort's test stays."""
        out = {}
        for pair, rec in _mapping(self.raw.get("cross_cohort")).items():
            estimate = Estimate.of(rec)
            if estimate is not None:
                out[pair] = CrossCohort(str(rec.get("metric")), estimate, rec.get("n_stays"))
        return out


# --------------------------------------------------------------------------------------------
# The whole document


class Result:
    """One ``result.json``, migrated to the current schema version.

    ``raw`` is the migrated document (the file's own content is what is signed and published;
    the reader never writes). ``source_version`` is the version it was written with.
    """

    def __init__(self, doc: Mapping[str, Any]):
        self.source_version = version_of(doc)
        self.raw: Mapping[str, Any] = migrate(doc)

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read and migrate ``path``; :class:`InputError` when it is not a JSON object."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the result ({exc})", path=path) from None
        if not isinstance(doc, Mapping):
            raise InputError("a result must be a JSON object", path=path)
        return cls(doc)

    @classmethod
    def of(cls, doc: Result | Mapping[str, Any]) -> Result:
        """``doc`` as a Result (documents are wrapped, Results returned as they are)."""
        return doc if isinstance(doc, Result) else cls(doc)

    def __repr__(self) -> str:
        return f"Result({self.name!r}, dataset={self.dataset!r}, status={self.status!r})"

    @property
    def schema_version(self) -> str:
        return version_of(self.raw)

    @property
    def name(self) -> str | None:
        return self.raw.get("name")

    @property
    def version(self) -> str | None:
        return self.raw.get("version")

    @property
    def dataset(self) -> str | None:
        return self.raw.get("dataset")

    @property
    def status(self) -> str | None:
        return self.raw.get("status")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str | None:
        return self.raw.get("error")

    @property
    def category(self) -> str | None:
        """Why a failed evaluation failed (one of the error categories), if recorded."""
        return self.raw.get("category")

    @property
    def cohorts(self) -> dict[str, Mapping[str, Any]]:
        return {k: _mapping(v) for k, v in _mapping(self.raw.get("cohorts")).items()}

    def fingerprint(self, cohort: str) -> str | None:
        """The fingerprint of the cohort build the result was scored on."""
        return self.cohorts.get(cohort, {}).get("fingerprint")

    @property
    def skipped(self) -> list[Mapping[str, Any]]:
        """(task, cohort) pairs not evaluated, with the reason."""
        return [s for s in self.raw.get("skipped") or () if isinstance(s, Mapping)]

    # ---------------------------------------------------------------------------------------
    # Provenance

    @property
    def provenance(self) -> Mapping[str, Any]:
        return _mapping(self.raw.get("provenance"))

    @property
    def run_key(self) -> str | None:
        """Key of the unit folder holding the result's predictions (local only)."""
        return self.provenance.get("run_key")

    @property
    def folds(self) -> list[int]:
        return list(self.provenance.get("folds") or [])

    @property
    def seeds(self) -> list[int]:
        return list(self.provenance.get("seeds") or [])

    @property
    def max_epochs(self) -> int | None:
        return self.provenance.get("max_epochs")

    @property
    def train_cxr_dropout(self) -> float | None:
        return _number(self.provenance.get("train_cxr_dropout"))

    @property
    def submission(self) -> str | None:
        """The submission's own name (the entry name may carry a suffix)."""
        return self.provenance.get("submission")

    @property
    def inputs(self) -> frozenset[str] | None:
        """The inputs the submission declared, or None in results that did not record them."""
        inputs = self.provenance.get("inputs")
        return None if inputs is None else frozenset(inputs)

    @property
    def protocol_record(self) -> Mapping[str, Any]:
        """``provenance.protocol`` as recorded (inferred for results that predate it)."""
        return _mapping(self.provenance.get("protocol"))

    def protocol(self, task: str | None = None, cohort: str | None = None) -> dict[str, Any]:
        """The protocol the result was evaluated under, for one task and cohort when given.

        Every field of :data:`PROTOCOL_FIELDS`: ``n_resamples`` is the blocks' own bootstrap
        size when they agree (else the recorded one), ``selection`` the selection metric of
        ``task`` (all tasks' when no task is given).
        """
        recorded, prov = self.protocol_record, self.provenance
        sizes = {b.n_resamples for b in self.blocks(task, cohort)} - {None}
        n_resamples = sizes.pop() if len(sizes) == 1 else recorded.get("n_resamples")
        selection = recorded.get("selection") or {b.task: b.main_metric for b in self.blocks()}
        return {
            "profile": recorded.get("profile", LEGACY_PROFILE),
            "folds": list(recorded.get("folds", prov.get("folds")) or []),
            "seeds": list(recorded.get("seeds", prov.get("seeds")) or []),
            "max_epochs": recorded.get("max_epochs", prov.get("max_epochs")),
            "n_resamples": n_resamples,
            "selection": selection.get(task)
            if task is not None
            else dict(sorted(selection.items())),
            "threshold": recorded.get("threshold", LEGACY_THRESHOLD),
            # results written before tuning existed were evaluated with their own settings
            "tuning": recorded.get("tuning", "default"),
        }

    # ---------------------------------------------------------------------------------------
    # Tasks -> cohorts -> blocks

    @property
    def tasks(self) -> dict[str, dict[str, Block]]:
        """Task -> cohort -> block, in the document's order."""
        return {
            task: {c: Block(task, c, _mapping(b)) for c, b in _mapping(by_cohort).items()}
            for task, by_cohort in _mapping(self.raw.get("tasks")).items()
        }

    def blocks(self, task: str | None = None, cohort: str | None = None) -> list[Block]:
        """Every block, or those of ``task`` and/or ``cohort``."""
        return [
            block
            for t, by_cohort in self.tasks.items()
            for c, block in by_cohort.items()
            if (task is None or t == task) and (cohort is None or c == cohort)
        ]

    def block(self, task: str, cohort: str) -> Block | None:
        """The block of (task, cohort), or None when the result has none."""
        return self.tasks.get(task, {}).get(cohort)

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks())
