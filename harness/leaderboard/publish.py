"""What the leaderboard publishes: sanitized messages, vetted results and a last check for paths.

Results are written by `harness evaluate` while running code from strangers, and a stranger may
want to rank first or to carry patient data out through the published leaderboard. Everything
that reaches ``leaderboard.{json,md,html}`` therefore passes through this module:

- :func:`~harness.sanitize.sanitize_message`: free text (a failure's message, a skip reason, a
  rejection reason) loses control characters, absolute paths (replaced by their file name or
  ``<path>``), URLs and every run of more than 4 digits (``<n>``), and is capped at
  :data:`~harness.sanitize.MESSAGE_LIMIT` characters.
- :func:`publishable_result`: a result is published only when every number is finite and inside
  its metric's range, the ranked metric lies inside its own 95% CI, every key is a registered
  name (task, cohort, the task's label ids, scenario and its rate grid, fairness attribute,
  metric), and no fairness group is smaller than :data:`MIN_GROUP_SIZE` stays; otherwise it is
  rejected (:class:`Rejected`) with a category from :data:`REJECT_CATEGORIES`. Groups that are
  large enough but hold fewer than :data:`MIN_GROUP_CLASS_COUNT` positives or negatives are
  *suppressed* (their numbers removed, the across-group summary recomputed without them and the
  gap tests, group-vs-rest rows and legacy bootstrap gap CIs, which included them, dropped):
  results written before the harness applied this rule itself hold such groups, so they are no
  sign of forgery. Group-vs-rest rows may name kept groups only; the percentile CIs of max - min
  gaps that older results carry (``gap_ci``, biased upward) are checked, then not published.
  Provenance keeps only known keys, and paths in it are cut to their last component. The
  per-resample headline values (``main_resamples``) must number the recorded resamples, lie in
  the metric's range and give the recorded CI; they serve the paired ranking, never published.
- :func:`find_paths` / :func:`assert_publishable`: the final check over the serialized output;
  an absolute path or a home directory that slipped through stops the publication.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError
from harness.results import Result
from harness.sanitize import (
    FINAL_PATH_PATTERNS,
    LONG_DIGITS,
    clean_text,
    error_category,
    sanitize_message,
)

#: Smallest fairness group (stays) a published result may report numbers for.
MIN_GROUP_SIZE = 20
#: Fewest positives and negatives a published group reporting TPR, FPR or AUROC must hold.
MIN_GROUP_CLASS_COUNT = 10

#: Why a result.json was not published (``rejected[].category``).
REJECT_CATEGORIES = (
    "unreadable",  # could not be read (I/O error, too large)
    "encoding",  # not UTF-8
    "invalid_json",  # truncated or not JSON
    "non_finite",  # NaN or infinity in a number
    "schema",  # does not match result.schema.json, or is inconsistent with itself
    "signature",  # integrity signature missing or wrong (edited by hand, or unsigned)
    "out_of_range",  # a value outside its metric's range
    "outside_ci",  # a ranked point value outside its own confidence interval
    "unknown_key",  # a task, cohort, label, scenario, rate, attribute or metric not registered
    "patient_level",  # fairness groups below the minimum size, ids in group names
    "path",  # an absolute path survived sanitization
)


def metric_range(name: str) -> tuple[float, float]:
    """The range of a registered metric's values (declared where the metric is registered); an
    unregistered name is rejected, never published unchecked."""
    from harness.metrics.registry import METRICS

    if name not in METRICS:
        raise Rejected("unknown_key", f"{name!r} is not a registered metric")
    return METRICS.get(name).bounds


#: Ranges of the per-group fairness metrics (``n`` is checked apart).
GROUP_METRIC_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(
        "prevalence auroc auprc tpr fpr ppv selection_rate ece accuracy auroc_ovr_macro".split(),
        (0.0, 1.0),
    ),
    "auprc_lift": (0.0, math.inf),
    "kappa_linear": (-1.0, 1.0),
}
GAP_CI_NAMES = (
    "auroc_difference",
    "tpr_difference",
    "equalized_odds_difference",
    "demographic_parity_difference",
)
#: Provenance keys kept inside ``hardware`` (anything else is dropped when publishing).
HARDWARE_KEYS = ("machine", "processor", "cpu_count", "python", "system")

_TOLERANCE = 1e-9
#: Per-resample values are rounded to 6 decimals: their percentile CI moves by at most 5e-7.
_RESAMPLE_TOLERANCE = 1e-5
#: Task-block fields that are vetted and used for ranking but never published.
PRIVATE_BLOCK_FIELDS = ("main_resamples",)
#: The one URL the rendered HTML holds (the SVG namespace); the final check ignores http(s) URLs.
_WEB_URL = re.compile(r"\bhttps?://[^\s'\"`<>]*")


class PublicationError(HarnessError):
    """The serialized leaderboard still holds something it must never publish."""


class Rejected(Exception):
    """A result that may not be published: ``category`` (in REJECT_CATEGORIES) and a reason."""

    def __init__(self, category: str, reason: str):
        self.category = category if category in REJECT_CATEGORIES else "schema"
        self.reason = sanitize_message(reason)
        super().__init__(f"{self.category}: {self.reason}")

    def record(self, entry: str, source: str | None = None) -> dict:
        return rejection(entry, self.category, self.reason, source)


# --------------------------------------------------------------------------------------------
# Records of what is not ranked


def rejection(entry: str, category: str, reason: str, source: str | None = None) -> dict:
    """One ``rejected`` record of the leaderboard (every field sanitized)."""
    record = {
        "entry": sanitize_message(entry, 120) or "?",
        "category": category if category in REJECT_CATEGORIES else "schema",
        "reason": sanitize_message(reason),
    }
    if source:
        record["source"] = sanitize_message(source, 300)
    return record


#: What the leaderboard says of a failed evaluation, per category (never the submission's text).
FAILURE_MESSAGES = {
    "timeout": "a unit ran past its wall-clock limit",
    "memory": "a unit went over its memory limit",
    "crashed": "the submission's process died",
    "exited": "the submission ended its own process or was killed by a signal",
    "sandbox_violation": "the submission reached for files, network or processes it may not use",
    "sandbox_denied": "the submission reached for files, network or processes it may not use",
    "invalid_output": "the submission returned invalid predictions or messages",
    "invalid_spec": "submission.yaml or a definition file is invalid",
    "error": "the submission raised an error (details in the local result.json)",
}


def failed_record(item: Result | dict) -> dict:
    """The published form of a failed evaluation (a ``failed`` result.json, or an older record
    with ``error``): name, version, dataset, category and sanitized message only."""
    failure = Result.of(item)
    category = error_category(failure.category)
    record = {
        "name": sanitize_message(failure.name or "?", 120),
        "version": None if failure.version is None else sanitize_message(failure.version, 100),
        "category": category,
        # a fixed sentence per category: the submission's own error text stays in the local
        # result.json, since any free text it controls can carry data encoded as letters
        "message": FAILURE_MESSAGES.get(category, FAILURE_MESSAGES["error"]),
    }
    if failure.dataset:
        record["dataset"] = sanitize_message(failure.dataset, 200)
    return record


# --------------------------------------------------------------------------------------------
# The final check


#: Stretches of text between whitespace and quotes that hold a slash or a backslash: no path
#: shape of :data:`FINAL_PATH_PATTERNS` (nor a web URL) crosses whitespace or a quote, and each
#: needs a slash or a backslash, so scanning these alone finds what scanning everything finds.
_SLASHED = re.compile(r"(?<![^\s\"'])[^\s\"']*[/\\][^\s\"']*")


def find_paths(text: str) -> list[str]:
    """Absolute-path-like fragments of ``text`` (the serialized output), and the home folder."""
    hits = [
        m.group(0)
        for stretch in _SLASHED.findall(text)
        for pattern in FINAL_PATH_PATTERNS
        for m in pattern.finditer(_WEB_URL.sub("", stretch))
    ]
    home = str(Path.home())
    if len(home) > 1 and home in text:
        hits.append(home)
    return hits


def assert_publishable(text: str, what: str = "leaderboard") -> None:
    """Raise :class:`PublicationError` when ``text`` holds an absolute path or a home folder."""
    hits = find_paths(text)
    if hits:
        shown = ", ".join(sorted({sanitize_message(h, 40) for h in hits})[:5])
        raise PublicationError(
            f"{what} would publish {len(hits)} absolute path(s) (shapes: {shown}); "
            "nothing was written. Fix: report this as a harness bug (paths are stripped from "
            "results before publication)"
        )


# --------------------------------------------------------------------------------------------
# Vetting one result


def iter_numbers(obj: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """(path, value) of every number in a JSON document (booleans excluded)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_numbers(v, f"{where}/{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from iter_numbers(v, f"{where}/{i}")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield where, obj


def check_finite(doc: Any) -> None:
    """Raise :class:`Rejected` (``non_finite``) at the first NaN or infinity in ``doc``."""
    for where, value in iter_numbers(doc):
        if isinstance(value, float) and not math.isfinite(value):
            raise Rejected(
                "non_finite", f"{where or '(top level)'}: {value} is not a finite number"
            )


@cache
def _task_info(tasks_root: str, name: str) -> tuple[str, frozenset[str]] | str:
    """(kind, label ids) of a task, or the reason it cannot be loaded."""
    from harness.cohort.spec import load_task

    try:
        spec = load_task(name)
    except HarnessError as exc:
        return str(exc)
    return spec.kind, frozenset([*spec.label_columns, *(spec.class_names or [])])


def _task(name: str) -> tuple[str, frozenset[str]]:
    from harness import config

    info = _task_info(str(config.tasks_dir()), name)
    if isinstance(info, str):
        raise Rejected("unknown_key", f"tasks/{name}: not a task of this harness ({info})")
    return info


@cache
def _cohort_names(tasks_root: str) -> frozenset[str]:
    from harness.cohort.spec import load_cohort_spec

    return frozenset(load_cohort_spec().cohorts)


def _cohorts() -> frozenset[str]:
    from harness import config

    return _cohort_names(str(config.tasks_dir()))


def _in_range(value: float | None, bounds: tuple[float, float] | None, where: str) -> None:
    if value is None or bounds is None:
        return
    lo, hi = bounds
    if not lo - _TOLERANCE <= value <= hi + _TOLERANCE:
        raise Rejected("out_of_range", f"{where}: {value} lies outside [{lo:g}, {hi:g}]")


def _metric(name: str, where: str, kinds: tuple[str, ...] | None = None) -> None:
    from harness.metrics.registry import METRICS

    if name not in METRICS or (kinds and METRICS.get(name).kind not in kinds):
        raise Rejected("unknown_key", f"{where}: {name!r} is not a registered metric here")


def _summary(summary: dict, metric: str, where: str) -> None:
    bounds = metric_range(metric)
    for field in ("value", "mean", "ci_low", "ci_high"):
        _in_range(summary.get(field), bounds, f"{where}/{field}")
    sd = summary.get("sd")
    if sd is not None and bounds is not None:
        _in_range(sd, (0.0, bounds[1] - bounds[0]), f"{where}/sd")
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if low is not None and high is not None and low > high + _TOLERANCE:
        raise Rejected("outside_ci", f"{where}: ci_low {low} is above ci_high {high}")


def _within_ci(summary: dict, where: str) -> None:
    value, low, high = summary.get("value"), summary.get("ci_low"), summary.get("ci_high")
    if value is None or low is None or high is None:
        return
    if not low - _TOLERANCE <= value <= high + _TOLERANCE:
        raise Rejected(
            "outside_ci", f"{where}: point value {value} lies outside its own CI [{low}, {high}]"
        )


def _delta(delta: dict, metric: str, where: str) -> None:
    bounds = metric_range(metric)
    width = None if bounds is None else (-(bounds[1] - bounds[0]), bounds[1] - bounds[0])
    for field in ("delta", "ci_low", "ci_high"):
        _in_range(delta.get(field), width, f"{where}/{field}")
    for field in ("p_value", "q_value"):
        _in_range(delta.get(field), (0.0, 1.0), f"{where}/{field}")


def _main_resamples(block: dict, where: str) -> None:
    """The per-resample headline values: one per recorded resample, finite or null, inside the
    metric's range, and their percentile CI the recorded one (they are what it came from)."""
    import numpy as np

    from harness.metrics.bootstrap import percentile_ci

    values = block["main_resamples"]
    expected = block["bootstrap"]["n_resamples"]
    if len(values) != expected:
        raise Rejected("schema", f"{where}: {len(values)} values for {expected} resamples")
    bounds = metric_range(block["main_metric"])
    for i, value in enumerate(values):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise Rejected("non_finite", f"{where}/{i}: not a finite number")
        _in_range(value, bounds, f"{where}/{i}")
    summary = block["metrics"][block["main_metric"]]
    low, high = percentile_ci(np.array([np.nan if v is None else v for v in values], float))
    for field, got in (("ci_low", low), ("ci_high", high)):
        recorded = summary.get(field)
        same = (recorded is None) == (not math.isfinite(got))
        if not same or (recorded is not None and abs(recorded - got) > _RESAMPLE_TOLERANCE):
            raise Rejected("outside_ci", f"{where}: the resamples do not give the recorded {field}")


def strip_private(result: dict) -> dict:
    """A copy of a vetted result without what is checked but never published
    (:data:`PRIVATE_BLOCK_FIELDS`: the per-resample headline values)."""
    out = copy.deepcopy(result)
    for by_cohort in (out.get("tasks") or {}).values():
        for block in by_cohort.values():
            for field in PRIVATE_BLOCK_FIELDS:
                block.pop(field, None)
    return out


def _labels(keys, labels: frozenset[str], task: str, where: str) -> None:
    for key in keys:
        if key not in labels:
            raise Rejected("unknown_key", f"{where}: {key!r} is not a label id of task {task}")


def _known_attribute(name: str) -> bool:
    from harness.metrics.fairness import FAIRNESS_ATTRIBUTES

    parts = name.split("*")
    return (
        len(parts) in (1, 2)
        and len(set(parts)) == len(parts)
        and all(p in FAIRNESS_ATTRIBUTES for p in parts)
    )


def _group_directions() -> dict[str, bool | None]:
    from harness.metrics.fairness import BINARY_GROUP_METRICS, MULTICLASS_GROUP_METRICS

    out = {name: higher for name, (_, higher) in MULTICLASS_GROUP_METRICS.items()}
    out.update({name: higher for name, (_, higher) in BINARY_GROUP_METRICS.items()})
    return out


def _too_few_classes(row: dict) -> bool:
    """True when a group reports TPR, FPR or AUROC on fewer than 10 positives or negatives."""
    if all(row.get(k) is None for k in ("tpr", "fpr", "auroc")):
        return False
    prevalence = row.get("prevalence")
    if prevalence is None:
        return True
    positives = round(row["n"] * prevalence)
    return min(positives, row["n"] - positives) < MIN_GROUP_CLASS_COUNT


def _recompute_summary(table: dict) -> None:
    """Across-group summary of a table from its kept rows (as group_table computes it)."""
    kept = sorted((r for r in table["groups"] if not r["suppressed"]), key=lambda r: r["group"])
    directions = _group_directions()
    names = [k for k in dict.fromkeys(k for r in kept for k in r) if k in directions and k != "n"]
    summary: dict = {}
    binary = any("prevalence" in r for r in kept) or "selection_rate" in table["summary"]
    if len(kept) >= 2:
        for name in names:
            values = [(r["group"], r[name]) for r in kept if r.get(name) is not None]
            if not values:
                continue
            low = min(v for _, v in values)
            high = max(v for _, v in values)
            entry = {
                "group_min": low,
                "group_max": high,
                "difference": high - low,
                "ratio": low / high if high > 0 else None,
            }
            higher = directions[name]
            if higher is not None:
                target = low if higher else high
                entry["worst_group"] = next(g for g, v in values if v == target)
            summary[name] = entry
    table["summary"] = summary
    table.pop("gap_ci", None)
    table.pop("gap_test", None)  # computed with the groups just suppressed
    table.pop("vs_rest", None)
    table.pop("equalized_odds_difference", None)
    table.pop("demographic_parity_difference", None)
    if binary and len(kept) >= 2:
        gaps = [summary[k]["difference"] for k in ("tpr", "fpr") if k in summary]
        table["equalized_odds_difference"] = max(gaps) if gaps else None
        table["demographic_parity_difference"] = summary.get("selection_rate", {}).get("difference")


def _fairness_report(report: dict, where: str, n_stays: int, min_group_size: int) -> None:
    """Check one fairness report in place; suppress groups with too few positives/negatives."""
    if report["min_group_size"] < min_group_size:
        raise Rejected(
            "patient_level",
            f"{where}: evaluated with min_group_size {report['min_group_size']}; the leaderboard "
            f"publishes groups of at least {min_group_size} stays (re-run `harness evaluate` "
            f"with min_group_size >= {min_group_size})",
        )
    floor = max(min_group_size, report["min_group_size"])
    ranges = GROUP_METRIC_RANGES
    for attr, table in report["attributes"].items():
        at = f"{where}/attributes/{attr}"
        if not _known_attribute(attr):
            raise Rejected("unknown_key", f"{at}: not a fairness attribute of the harness")
        rows = table["groups"]
        names = [r["group"] for r in rows]
        if len(set(names)) != len(names):
            raise Rejected("schema", f"{at}: a group is listed twice")
        if any(LONG_DIGITS.search(g) for g in names):
            raise Rejected(
                "patient_level", f"{at}: a group name holds a number of more than 4 digits"
            )
        kept = [r for r in rows if not r["suppressed"]]
        total = 0.0
        for row in kept:
            n = row["n"]
            if n != int(n) or n < floor:
                raise Rejected(
                    "patient_level",
                    f"{at}: a group of {n:g} stays is published; groups under {floor} stays "
                    "must be suppressed",
                )
            total += n
            for key, value in row.items():
                if key in ("group", "suppressed", "n"):
                    continue
                if key not in ranges:
                    raise Rejected("unknown_key", f"{at}: {key!r} is not a group metric")
                _in_range(value, ranges[key], f"{at}/{row['group']}/{key}")
        if total > n_stays:
            raise Rejected(
                "patient_level", f"{at}: its groups hold {total:g} stays, more than the {n_stays} "
                "scored",
            )  # fmt: skip
        kept_names = {r["group"] for r in kept}
        for key, entry in table["summary"].items():
            if key not in ranges:
                raise Rejected("unknown_key", f"{at}/summary: {key!r} is not a group metric")
            low, high, diff = (
                entry.get("group_min"),
                entry.get("group_max"),
                entry.get("difference"),
            )
            if low is None or high is None or diff is None or abs(high - low - diff) > 1e-6:
                raise Rejected("schema", f"{at}/summary/{key}: min, max and difference disagree")
            for field in ("group_min", "group_max"):
                _in_range(entry.get(field), ranges[key], f"{at}/summary/{key}/{field}")
            worst = entry.get("worst_group")
            if worst is not None and worst not in kept_names:
                raise Rejected("schema", f"{at}/summary/{key}: worst group is not a listed group")
        for key, ci in (table.get("gap_ci") or {}).items():
            if key not in GAP_CI_NAMES:
                raise Rejected("unknown_key", f"{at}/gap_ci: {key!r} is not a gap of the harness")
            for field in ("ci_low", "ci_high"):
                _in_range(ci.get(field), (0.0, 1.0), f"{at}/gap_ci/{key}/{field}")
        # results written before the gap tests: their percentile CI of a max - min gap is biased
        # upward (it excludes 0 when every group has the same rate), so it is not published
        table.pop("gap_ci", None)
        for key, test in (table.get("gap_test") or {}).items():
            _in_range(test.get("difference"), (0.0, 1.0), f"{at}/gap_test/{key}/difference")
            _in_range(test.get("p_value"), (0.0, 1.0), f"{at}/gap_test/{key}/p_value")
        for rate, vs_rows in (table.get("vs_rest") or {}).items():
            for row in vs_rows:
                where_row = f"{at}/vs_rest/{rate}"
                if row["group"] not in kept_names:
                    raise Rejected(
                        "patient_level", f"{where_row}: a group that is not a listed kept group"
                    )
                for field in ("value", "ci_low", "ci_high"):
                    _in_range(row.get(field), (0.0, 1.0), f"{where_row}/{field}")
                for field in ("difference", "difference_ci_low", "difference_ci_high"):
                    _in_range(row.get(field), (-1.0, 1.0), f"{where_row}/{field}")
        small = {r["group"] for r in kept if _too_few_classes(r)}
        if small:
            table["groups"] = [
                {"group": r["group"], "suppressed": True} if r["group"] in small else r
                for r in rows
            ]
            table["n_suppressed_groups"] = sum(1 for r in table["groups"] if r["suppressed"])
            _recompute_summary(table)


def _block(block: dict, task: str, kind: str, labels: frozenset, where: str, mgs: int) -> None:
    from harness.evaluate.scenarios import SCENARIOS
    from harness.metrics.registry import PER_LABEL_METRICS, metrics_for

    if block["kind"] != kind:
        raise Rejected("schema", f"{where}: kind {block['kind']!r}, but task {task} is {kind}")
    allowed = set(metrics_for(kind))
    for name, summary in block["metrics"].items():
        if name not in allowed:
            raise Rejected("unknown_key", f"{where}/metrics: {name!r} is not a {kind} metric")
        _summary(summary, name, f"{where}/metrics/{name}")
    main = block["main_metric"]
    if main not in block["metrics"]:
        raise Rejected("schema", f"{where}: main metric {main!r} has no summary")
    _within_ci(block["metrics"][main], f"{where}/metrics/{main}")
    if block["n_subjects"] > block["n_stays"]:
        raise Rejected("schema", f"{where}: more subjects than stays")
    if "main_resamples" in block:
        _main_resamples(block, f"{where}/main_resamples")

    per_label = block.get("per_label") or {}
    _labels(per_label, labels, task, f"{where}/per_label")
    for label, by_metric in per_label.items():
        for name, summary in by_metric.items():
            if name not in PER_LABEL_METRICS:
                raise Rejected("unknown_key", f"{where}/per_label/{label}: {name!r}")
            _summary(summary, name, f"{where}/per_label/{label}/{name}")

    for ref, deltas in (block.get("paired_deltas") or {}).items():
        for name, delta in deltas.items():
            if name not in allowed:
                raise Rejected("unknown_key", f"{where}/paired_deltas/{ref}: {name!r}")
            _delta(delta, name, f"{where}/paired_deltas/{ref}/{name}")
    for field in ("fusion_gain", "fusion_gain_unimodal"):
        gain = block.get(field)
        if not gain:
            continue
        _metric(gain["metric"], f"{where}/{field}/metric", ("binary",))
        _in_range(gain["alpha"], (0.0, 1.0), f"{where}/{field}/alpha")
        _labels(gain["labels"], labels, task, f"{where}/{field}/labels")
        for label, delta in gain["labels"].items():
            at = f"{where}/{field}/labels/{label}"
            _delta(delta, gain["metric"], at)
            if "significant" not in delta:
                raise Rejected("schema", f"{at}: significant is missing")
            if delta["significant"] and not (delta["delta"] or 0) > 0:
                raise Rejected("schema", f"{at}: significant without a positive delta")

    cohorts = _cohorts()
    for pair, rec in (block.get("cross_cohort") or {}).items():
        if any(c not in cohorts for c in pair.split("->")):
            raise Rejected("unknown_key", f"{where}/cross_cohort: {pair!r} names no cohorts")
        _metric(rec["metric"], f"{where}/cross_cohort/{pair}/metric", (kind,))
        for field in ("value", "ci_low", "ci_high"):
            _in_range(rec.get(field), metric_range(rec["metric"]), f"{where}/{pair}/{field}")

    for name, curve in (block.get("robustness") or {}).items():
        at = f"{where}/robustness/{name}"
        if name not in SCENARIOS:
            raise Rejected("unknown_key", f"{at}: not a registered scenario")
        grid = SCENARIOS.get(name).rates
        rates = curve["rates"]
        for rate in rates:
            if not any(abs(rate - r) <= _TOLERANCE for r in grid):
                raise Rejected("unknown_key", f"{at}: rate {rate} is not on the scenario's grid")
        if len(set(rates)) != len(rates) or len(curve["values"]) != len(rates):
            raise Rejected("schema", f"{at}: rates repeat, or values and rates differ in length")
        if any(b <= a for a, b in zip(rates, rates[1:], strict=False)):
            raise Rejected("schema", f"{at}: rates are not in increasing order")
        _metric(curve["metric"], f"{at}/metric", (kind,))
        _curve_fields(curve, at, block.get("references") or {})

    if block.get("reliance"):
        _reliance(block["reliance"], main, f"{where}/reliance")

    fairness = block.get("fairness")
    if fairness:
        if "labels" in fairness:
            _labels(fairness["labels"], labels, task, f"{where}/fairness/labels")
            for label, report in fairness["labels"].items():
                _fairness_report(report, f"{where}/fairness/labels/{label}", block["n_stays"], mgs)
        else:
            _fairness_report(fairness, f"{where}/fairness", block["n_stays"], mgs)


def _curve_fields(curve: dict, at: str, references: dict) -> None:
    """Every per-rate array of a curve one value per rate, inside its range and each value
    inside its CI; ``chance`` the metric's own; the comparisons only with the block's
    references, as deltas of the curve's metric; ``helps_up_to`` what those comparisons give."""
    from harness.evaluate.score.robustness import helps_up_to
    from harness.metrics.registry import CHANCE_LEVEL

    metric, rates = curve["metric"], curve["rates"]
    bounds = metric_range(metric)
    for field in ("values", "values_ci_low", "values_ci_high"):
        values = curve.get(field)
        if values is None:
            continue
        if len(values) != len(rates):
            raise Rejected("schema", f"{at}/{field}: {len(values)} values for {len(rates)} rates")
        for i, value in enumerate(values):
            _in_range(value, bounds, f"{at}/{field}/{i}")
    lows, highs = curve.get("values_ci_low") or [], curve.get("values_ci_high") or []
    for i, (value, low, high) in enumerate(zip(curve["values"], lows, highs, strict=False)):
        if None not in (value, low, high) and not low - _TOLERANCE <= value <= high + _TOLERANCE:
            raise Rejected("schema", f"{at}/values/{i}: {value} lies outside its CI")
    if "chance" in curve and curve["chance"] != CHANCE_LEVEL.get(metric):
        raise Rejected("schema", f"{at}/chance: {curve['chance']} is not {metric}'s chance level")
    known = {r for r in references.values() if isinstance(r, str)}
    for ref in curve.get("versus") or {}:
        if ref not in known:
            raise Rejected("unknown_key", f"{at}/versus: {ref!r} is not one of the references")
    width = (-(bounds[1] - bounds[0]), bounds[1] - bounds[0])
    _in_range(curve.get("area_above_chance"), width, f"{at}/area_above_chance")
    for i, value in enumerate(curve.get("area_above_chance_ci") or ()):
        _in_range(value, width, f"{at}/area_above_chance_ci/{i}")
    for ref, versus in (curve.get("versus") or {}).items():
        for field, values in versus.items():
            if len(values) != len(rates):
                raise Rejected("schema", f"{at}/versus/{ref}/{field}: not one value per rate")
            for i, value in enumerate(values):
                _in_range(value, (0.0, 1.0) if field == "p_value" else width,
                          f"{at}/versus/{ref}/{field}/{i}")  # fmt: skip
    helps = curve.get("helps_up_to")
    if "versus" in curve and helps != helps_up_to(rates, curve["versus"], metric):
        raise Rejected("schema", f"{at}/helps_up_to: {helps} is not what the comparisons give")


def _reliance(reliance: dict, main: str, at: str) -> None:
    """The reliance table scores the block's headline metric, inside its range; the index in
    [0, 1]."""
    if reliance["metric"] != main:
        raise Rejected("schema", f"{at}/metric: {reliance['metric']!r} is not {main!r}")
    bounds = metric_range(main)
    for field in ("full", "without_cxr", "without_ehr"):
        for key, value in reliance[field].items():
            _in_range(value, bounds, f"{at}/{field}/{key}")
    for field in ("drop_without_cxr", "drop_without_ehr"):
        _delta(reliance[field], main, f"{at}/{field}")
    for key, value in reliance["imbalance_index"].items():
        _in_range(value, (0.0, 1.0), f"{at}/imbalance_index/{key}")
    from harness.evaluate.score.robustness import dominant_modality

    index = reliance["imbalance_index"]
    expected = dominant_modality(
        index["value"], index["ci_low"], index["ci_high"],
        reliance["drop_without_ehr"]["ci_low"], reliance["drop_without_cxr"]["ci_low"],
    )  # fmt: skip
    if reliance["dominant"] != expected:
        raise Rejected("schema", f"{at}/dominant: the figures give {expected!r}")


def _public_provenance(prov: dict) -> dict:
    """Known keys only; tasks and scenarios that are not registered are dropped."""
    from harness.evaluate.scenarios import SCENARIOS
    from harness.results.document import PROVENANCE_PACKAGES

    out = dict(prov)
    if "package_versions" in out:
        out["package_versions"] = {
            k: v for k, v in out["package_versions"].items() if k in PROVENANCE_PACKAGES
        }
    if "hardware" in out:
        out["hardware"] = {k: v for k, v in out["hardware"].items() if k in HARDWARE_KEYS}
    if "task_versions" in out:
        out["task_versions"] = {
            k: v for k, v in out["task_versions"].items() if not isinstance(_try_task(k), str)
        }
    if "scenarios" in out:
        out["scenarios"] = [s for s in out["scenarios"] if s in SCENARIOS]
    return out


def _try_task(name: str):
    try:
        return _task(name)
    except Rejected as exc:
        return exc.reason


def _clean_strings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean_strings(v) for v in obj]
    if isinstance(obj, str):
        return clean_text(obj)
    return obj


def publishable_result(
    doc: dict, *, min_group_size: int = MIN_GROUP_SIZE, keep_private: bool = False
) -> dict:
    """A copy of an ``ok`` result that may be published, or :class:`Rejected`.

    See the module docstring for what is checked, suppressed and stripped. The copy has no
    ``signature`` (it no longer matches the file) and passes result.schema.json. The fields of
    :data:`PRIVATE_BLOCK_FIELDS` are checked, then stripped unless ``keep_private`` (the
    leaderboard keeps them to rank, and strips them with :func:`strip_private` before writing).
    """
    from harness.results.schema import schema_errors

    if min_group_size < MIN_GROUP_SIZE:
        raise UsageError(f"min_group_size must be at least {MIN_GROUP_SIZE}, got {min_group_size}")
    if not isinstance(doc, dict):
        raise Rejected("schema", "a result must be a JSON object")
    check_finite(doc)
    out = copy.deepcopy(doc)
    out.pop("signature", None)
    errors = schema_errors(out)
    if errors:
        raise Rejected("schema", "does not match result.schema.json: " + "; ".join(errors[:3]))
    if out["status"] != "ok":
        raise Rejected("schema", "a failed evaluation is listed under failed, not ranked")
    cohorts = _cohorts()
    for name in out["cohorts"]:
        if name not in cohorts:
            raise Rejected("unknown_key", f"cohorts/{name}: not a cohort of the harness")
    for task, by_cohort in out["tasks"].items():
        kind, labels = _task(task)
        for cohort, block in by_cohort.items():
            where = f"tasks/{task}/{cohort}"
            if cohort not in cohorts:
                raise Rejected("unknown_key", f"{where}: not a cohort of the harness")
            _block(block, task, kind, labels, where, min_group_size)
    for item in out.get("skipped") or []:
        _task(item["task"])
        if item["cohort"] not in cohorts:
            raise Rejected("unknown_key", f"skipped: {item['cohort']!r} is not a cohort")
        item["reason"] = sanitize_message(item["reason"])
    out["provenance"] = _public_provenance(out["provenance"])
    out = _clean_strings(out)
    errors = schema_errors(out)
    if errors:  # cleaning must never make a valid result invalid; refuse rather than publish
        raise Rejected("schema", "invalid once sanitized: " + "; ".join(errors[:3]))
    return out if keep_private else strip_private(out)
