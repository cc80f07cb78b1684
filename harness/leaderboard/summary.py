"""Cross-entry summary tables of a leaderboard: fusion gain, fairness, robustness.

The rankings answer "who is best"; these tables answer the questions the harness exists for,
one row per entry and one table per dataset x task x cohort:

- **fusion gain**: on which labels an entry that uses both modalities beats the EHR-only
  reference, and the best single modality on that label, significantly (paired bootstrap,
  Benjamini-Hochberg q < alpha within the entry's labels, as in result.json), plus how many stay
  significant when the whole table (every entry x label) is one family, by Benjamini-Hochberg
  and by Benjamini-Yekutieli (valid under any dependence: entries share references, labels and
  resamples);
- **fairness**: per attribute, the group with the lowest TPR at the validation-chosen threshold
  (``Unknown`` is never compared), with the max - min TPR gap and its permutation p-value;
- **robustness**: the main metric with every CXR present and with none (with CIs), the paired
  difference to the EHR-only reference with no image, the rate up to which the entry beats the
  unimodal references, the area above chance, then (secondary) the normalised area under each
  curve, and the train-time CXR dropout the entry used (entries that never saw a missing image
  in training are the ones missingness hurts);
- **reliance**: the main metric with both modalities, without the image and without the EHR,
  the paired drops and the imbalance index (which modality the entry leans on).

Everything is read from the entries' ``result.json`` blocks (through
:class:`harness.results.Result`); nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from harness.metrics.comparisons import adjust_p_values
from harness.results import AttributeTable, Block, Curve, Delta, FusionGain, Result

#: Attributes shown in the fairness table (intersections stay in the JSON).
FAIRNESS_ATTRIBUTES = (
    "insurance",
    "race_group",
    "gender",
    "age_group",
    "admission_type",
    "has_cxr",
)
#: The curve the robustness table's scores and CI come from.
HEADLINE_SCENARIO = "cxr_missing_mcar"


def area_scenarios() -> list[str]:
    """The registered scenarios, the headline MCAR curve first, then the other missing-CXR ones:
    one area column each, so a scenario registered in :mod:`harness.evaluate.scenarios` shows up
    here without editing this module."""
    from harness.evaluate.scenarios import SCENARIOS

    def order(name: str) -> tuple[bool, bool, str]:
        return (name != HEADLINE_SCENARIO, SCENARIOS.get(name).family != "cxr_missing", name)

    return sorted(SCENARIOS, key=order)


def fmt_value(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _blocks(doc: Mapping[str, Any]) -> Iterator[tuple[tuple[str, str, str], Result, Block]]:
    """(dataset, task, cohort), entry, block for every ok entry, in a stable order."""
    entries = [Result.of(e) for e in doc["entries"]]
    for entry in sorted(entries, key=lambda e: str(e.name)):
        for block in entry.blocks():
            yield (str(entry.dataset), block.task, block.cohort), entry, block


def _inputs(entry: Result) -> frozenset[str] | None:
    """The entry's declared inputs: from its provenance, else from its submission folder (results
    written before inputs were recorded), else None (unknown)."""
    if entry.inputs is not None:
        return entry.inputs
    from harness import config
    from harness.errors import HarnessError
    from harness.models.submission import load_submission

    try:
        sub = load_submission(config.submissions_dir() / str(entry.submission or entry.name))
    except (HarnessError, OSError):  # folder gone or no longer valid: unknown
        return None
    return frozenset(sub.inputs)


def is_fusion(entry: Result | Mapping[str, Any]) -> bool:
    """True unless the entry is known to use a single modality (EHR only or CXR only)."""
    inputs = _inputs(Result.of(entry))
    if inputs is None:
        return True
    return bool(inputs & {"ehr", "ehr_summary"}) and bool(inputs & {"cxr", "cxr_pixels"})


def _table_wide(table: dict, alpha: float) -> None:
    """Append, per row, the labels significant with the whole table as one BH and BY family."""
    gains: list[dict[str, Delta]] = table.pop("_gains")
    p = np.array([np.nan if r.p_value is None else r.p_value for g in gains for r in g.values()])
    positive = np.array([(r.delta or 0) > 0 for g in gains for r in g.values()], bool)
    for method in ("bh", "by"):
        hit = (adjust_p_values(p, method) < alpha) & positive  # NaN q compares False
        start = 0
        for row, gain in zip(table["rows"], gains, strict=True):
            n = len(gain)
            row.append(f"{int(hit[start : start + n].sum())} of {n}")
            start += n


def _gain_table(field: str, key: tuple[str, str, str], gain: FusionGain) -> dict:
    """An empty fusion-gain table of one dataset x task x cohort."""
    if field == "fusion_gain":
        title, against = "Fusion gain per label over the EHR-only reference", "EHR-only"
    else:
        title = "Fusion gain per label over the best single modality"
        against = "the better of " + " and ".join(gain.references) + " on each label"
    return {
        "kind": field,
        "title": f"{title} · {key[1]} · {key[2]} ({key[0]})",
        "note": f"{gain.metric} minus {against}'s on the same bootstrap resamples; "
        f"significant = delta > 0 with Benjamini-Hochberg q < {gain.alpha} "
        "across the entry's labels (the family of result.json); table-wide BH / BY = "
        "the same with every entry x label of this table as one family, "
        "Benjamini-Hochberg and Benjamini-Yekutieli (any dependence)",
        "columns": [
            "submission",
            "reference",
            "significant",
            "labels (delta)",
            "table-wide BH",
            "table-wide BY",
        ],
        "rows": [],
        "_gains": [],
        "_alpha": gain.alpha,
    }


def _gain_row(entry: Result, gain: FusionGain) -> list[str]:
    hits = gain.significant_labels()
    return [
        str(entry.name),
        " / ".join(gain.references),
        f"{len(hits)} of {len(gain.labels)}",
        ", ".join(f"{name} ({delta:+.3f})" for name, delta in hits.items()) or "-",
    ]


def fusion_gain_tables(doc: Mapping[str, Any]) -> list[dict]:
    """Per-label gain over the EHR-only reference, then over the best single modality.

    Only entries that use both modalities are listed (a unimodal entry's gain over another
    unimodal model is not a fusion gain); entries whose inputs are unknown are kept. Besides
    each entry's own BH family (its labels), the last two columns count the labels significant
    when the table's every entry x label p-value forms one family (BH, and BY for any dependence).
    """
    tables: dict[tuple, dict] = {}
    for field in ("fusion_gain", "fusion_gain_unimodal"):
        for key, entry, block in _blocks(doc):
            gain = block.gain(field)
            if not gain or not gain.labels or not is_fusion(entry):
                continue
            if entry.name in gain.references:
                continue
            table = tables.setdefault((field, *key), _gain_table(field, key, gain))
            table["rows"].append(_gain_row(entry, gain))
            table["_gains"].append(gain.labels)
    for table in tables.values():
        _table_wide(table, table.pop("_alpha"))
    return list(tables.values())


def _fairness_table(key: tuple[str, str, str], shown: list[str]) -> dict:
    return {
        "kind": "fairness",
        "title": f"Lowest-TPR group per attribute · {key[1]} · {key[2]} ({key[0]})",
        "note": "worst group (its TPR; max - min TPR gap, permutation p-value of equal "
        "TPRs) at the threshold chosen on the validation split; groups under the minimum "
        "size, or with fewer than 10 positives or negatives, are suppressed, and Unknown "
        "is reported but never compared (results written before the permutation test "
        "show no p-value; their percentile CI of the gap, biased upward, is not published)",
        "columns": ["submission", *shown],
        "rows": [],
    }


def _worst_tpr(table: AttributeTable | None) -> str:
    """``group (its TPR; gap, p)`` of the attribute's lowest-TPR group, or n/a."""
    tpr = table.across("tpr") if table else {}
    worst = tpr.get("worst_group")
    if table is None or worst is None:
        return "n/a"
    test = table.gap_test.get("tpr_difference") or {}
    p_text = f", p {fmt_value(test.get('p_value'), 3)}" if test else ""
    low, gap = fmt_value(tpr.get("group_min"), 2), fmt_value(tpr.get("difference"), 2)
    return f"{worst} ({low}; gap {gap}{p_text})"


def fairness_tables(doc: Mapping[str, Any]) -> list[dict]:
    """Per attribute, each entry's lowest-TPR group, one table per dataset x task x cohort."""
    tables: dict[tuple, dict] = {}
    for key, entry, block in _blocks(doc):
        fairness = block.fairness
        if fairness is None or not fairness.attributes:
            continue
        shown = [a for a in FAIRNESS_ATTRIBUTES if a in fairness.attributes]
        table = tables.setdefault(key, _fairness_table(key, shown))
        row = [str(entry.name)]
        row += [_worst_tpr(fairness.attribute(a)) for a in table["columns"][1:]]
        table["rows"].append(row)
    return list(tables.values())


def fmt_ci(low: float | None, high: float | None, digits: int = 3) -> str:
    return "n/a" if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _value_ci(curve: Curve, j: int) -> str:
    """The curve's value at rate index ``j`` with its CI (when recorded)."""
    value = fmt_value(curve.values[j])
    if len(curve.values_ci_low) > j and len(curve.values_ci_high) > j:
        return f"{value} {fmt_ci(curve.values_ci_low[j], curve.values_ci_high[j])}"
    return value


def _versus_last(curve: Curve, reference: str | None) -> str:
    """The paired difference to ``reference`` at the curve's last rate (every image removed)."""
    v = (curve.versus or {}).get(reference or "")
    if v is None or not v.delta:
        return "n/a"
    return f"{fmt_value(v.delta[-1], 3)} {fmt_ci(v.ci_low[-1], v.ci_high[-1])}"


def _helps(curve: Curve) -> str:
    if curve.versus is None:
        return "n/a"
    return "never" if curve.helps_up_to is None else f"{curve.helps_up_to:g}"


#: Scenarios with an area column in the robustness table: every one but those of the
#: modality-reliance table's own family (``ehr_missing`` removes the whole EHR).
def _area_columns() -> list[str]:
    from harness.evaluate.scenarios import SCENARIOS

    return [n for n in area_scenarios() if SCENARIOS.get(n).family != "ehr_missing"]


def _robustness_table(key: tuple[str, str, str], mcar: Curve) -> dict:
    return {
        "kind": "robustness",
        "title": f"Robustness to missing CXR · {key[1]} · {key[2]} ({key[0]})",
        "note": f"{mcar.metric} with every image present and with none (MCAR rate 1), each with "
        "its 95% CI; Δ vs EHR-only = the entry minus the EHR-only reference with every image "
        "removed (paired, 95% CI: what a clinician gets from this model instead of the "
        "EHR-only one when no image is available); helps up to = the largest missing-image "
        "rate up to which the entry beats the EHR-only and best unimodal references at every "
        "rate (never: not even with every image); area above chance = mean of "
        f"({mcar.metric} - chance) over the MCAR rates, with its CI. Secondary: normalised "
        "area under each curve (1 = no loss; a model that barely uses the image scores 1); "
        "train CXR dropout = share of training images the entry hid",
        "columns": [
            "submission",
            "train CXR dropout",
            "all CXR [95% CI]",
            "no CXR [95% CI]",
            "Δ vs EHR-only, no CXR [95% CI]",
            "helps up to",
            "area above chance [95% CI]",
            *(f"area {name}" for name in _area_columns()),
            "area MCAR 95% CI",
        ],
        "rows": [],
    }


def _robustness_row(entry: Result, block: Block, mcar: Curve) -> list[str]:
    areas = [
        fmt_value(curve.auc_normalised if (curve := block.curve(name)) else None)
        for name in _area_columns()
    ]
    ci = fmt_ci(mcar.ci_low, mcar.ci_high) if mcar.has_ci else "n/a"
    above = fmt_value(mcar.area_above_chance)
    if len(mcar.area_above_chance_ci) == 2:
        above = f"{above} {fmt_ci(*mcar.area_above_chance_ci)}"
    last = len(mcar.values) - 1
    return [
        str(entry.name), fmt_value(entry.train_cxr_dropout, 2), _value_ci(mcar, 0),
        _value_ci(mcar, last), _versus_last(mcar, block.references.ehr_only), _helps(mcar),
        above, *areas, ci,
    ]  # fmt: skip


def robustness_tables(doc: Mapping[str, Any]) -> list[dict]:
    """Each entry's scores with and without CXR, against the EHR-only reference, and its
    missingness areas, per board."""
    tables: dict[tuple, dict] = {}
    for key, entry, block in _blocks(doc):
        mcar = block.curve(HEADLINE_SCENARIO)
        if not mcar:
            continue
        table = tables.setdefault(key, _robustness_table(key, mcar))
        table["rows"].append(_robustness_row(entry, block, mcar))
    return list(tables.values())


def _reliance_table(key: tuple[str, str, str], metric: str) -> dict:
    return {
        "kind": "reliance",
        "title": f"Modality reliance · {key[1]} · {key[2]} ({key[0]})",
        "note": f"{metric} with both modalities, without the image (every image removed) and "
        "without the EHR (every EHR value unobserved), each with its 95% CI; drop = with both "
        "minus without (paired 95% CI); imbalance index = share of the total drop caused by "
        "removing the EHR (1: the entry does not use the image, 0: it does not use the EHR); "
        "dominant: ehr / cxr when the index's CI lies above / below 0.5 and that removal's drop "
        "is significant; neither: no removal significantly hurts",
        "columns": [
            "submission",
            "inputs",
            "both",
            "no CXR",
            "no EHR",
            "drop no CXR [95% CI]",
            "drop no EHR [95% CI]",
            "imbalance index [95% CI]",
            "dominant",
        ],  # fmt: skip
        "rows": [],
    }


def _estimate(e: Any) -> str:
    return "n/a" if e is None else fmt_value(e.value)


def _drop(d: Delta | None) -> str:
    return "n/a" if d is None else f"{fmt_value(d.delta)} {fmt_ci(d.ci_low, d.ci_high)}"


def reliance_tables(doc: Mapping[str, Any]) -> list[dict]:
    """Each entry's reliance on the image and on the EHR (results of schema 1.3 on), per board."""
    tables: dict[tuple, dict] = {}
    for key, entry, block in _blocks(doc):
        rel = block.reliance
        if rel is None:
            continue
        table = tables.setdefault(key, _reliance_table(key, rel.metric))
        index = rel.imbalance_index
        index_text = (
            "n/a"
            if index is None
            else f"{fmt_value(index.value, 2)} " + fmt_ci(index.ci_low, index.ci_high, 2)
        )
        table["rows"].append([
            str(entry.name), ", ".join(sorted(entry.inputs)) if entry.inputs else "?",
            _estimate(rel.full), _estimate(rel.without_cxr), _estimate(rel.without_ehr),
            _drop(rel.drop_without_cxr), _drop(rel.drop_without_ehr), index_text,
            rel.dominant or "n/a",
        ])  # fmt: skip
    return list(tables.values())


def summary_tables(doc: Mapping[str, Any]) -> list[dict]:
    """Every summary table, grouped by kind (fusion gain, fairness, robustness, reliance)."""
    return (
        fusion_gain_tables(doc) + fairness_tables(doc) + robustness_tables(doc)
        + reliance_tables(doc)
    )  # fmt: skip
