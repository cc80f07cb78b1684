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
- **robustness**: the main metric with every CXR present and with none, the normalised area under
  each CXR-missingness curve, the EHR-truncation area, and the train-time CXR dropout the entry
  used (entries that never saw a missing image in training are the ones missingness hurts).

Everything is read from the entries' ``result.json`` blocks; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.evaluate.stats import adjust_p_values

#: Attributes shown in the fairness table (intersections stay in the JSON).
FAIRNESS_ATTRIBUTES = (
    "insurance",
    "race_group",
    "gender",
    "age_group",
    "admission_type",
    "has_cxr",
)
CXR_SCENARIOS = ("cxr_missing_mcar", "cxr_missing_acuity", "cxr_missing_subgroup")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _blocks(doc: dict) -> Iterator[tuple[tuple[str, str, str], dict, dict]]:
    """(dataset, task, cohort), entry, block for every ok entry, in a stable order."""
    for entry in sorted(doc["entries"], key=lambda e: e["name"]):
        for task, cohorts in entry["tasks"].items():
            for cohort, block in cohorts.items():
                yield (entry["dataset"], task, cohort), entry, block


def _inputs(entry: dict) -> set[str] | None:
    """The entry's declared inputs: from its provenance, else from its submission folder (results
    written before inputs were recorded), else None (unknown)."""
    prov = entry.get("provenance") or {}
    if prov.get("inputs") is not None:
        return set(prov["inputs"])
    from harness import config
    from harness.errors import HarnessError
    from harness.models.submission import load_submission

    try:
        sub = load_submission(
            config.submissions_dir() / str(prov.get("submission") or entry["name"])
        )
    except (HarnessError, OSError):  # folder gone or no longer valid: unknown
        return None
    return set(sub.inputs)


def is_fusion(entry: dict) -> bool:
    """True unless the entry is known to use a single modality (EHR only or CXR only)."""
    inputs = _inputs(entry)
    if inputs is None:
        return True
    return bool(inputs & {"ehr", "ehr_summary"}) and bool(inputs & {"cxr", "cxr_pixels"})


def _table_wide(table: dict, alpha: float) -> None:
    """Append, per row, the labels significant with the whole table as one BH and BY family."""
    gains = table.pop("_gains")
    p = np.array(
        [np.nan if r.get("p_value") is None else r["p_value"] for g in gains for r in g.values()]
    )
    positive = np.array([(r.get("delta") or 0) > 0 for g in gains for r in g.values()], bool)
    for method in ("bh", "by"):
        hit = (adjust_p_values(p, method) < alpha) & positive  # NaN q compares False
        start = 0
        for row, gain in zip(table["rows"], gains, strict=True):
            n = len(gain)
            row.append(f"{int(hit[start : start + n].sum())} of {n}")
            start += n


def fusion_gain_tables(doc: dict) -> list[dict]:
    """Per-label gain over the EHR-only reference, then over the best single modality.

    Only entries that use both modalities are listed (a unimodal entry's gain over another
    unimodal model is not a fusion gain); entries whose inputs are unknown are kept. Besides
    each entry's own BH family (its labels), the last two columns count the labels significant
    when the table's every entry x label p-value forms one family (BH, and BY for any dependence).
    """
    tables: dict[tuple, dict] = {}
    for field in ("fusion_gain", "fusion_gain_unimodal"):
        for key, entry, block in _blocks(doc):
            gain = block.get(field)
            if not gain or not gain.get("labels") or not is_fusion(entry):
                continue
            refs = gain.get("references") or [gain.get("reference")]
            if entry["name"] in refs:
                continue
            if field == "fusion_gain":
                title, against = "Fusion gain per label over the EHR-only reference", "EHR-only"
            else:
                title = "Fusion gain per label over the best single modality"
                against = "the better of " + " and ".join(refs) + " on each label"
            table = tables.setdefault(
                (field, *key),
                {
                    "kind": field,
                    "title": f"{title} · {key[1]} · {key[2]} ({key[0]})",
                    "note": f"{gain['metric']} minus {against}'s on the same bootstrap resamples; "
                    f"significant = delta > 0 with Benjamini-Hochberg q < {gain['alpha']} "
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
                    "_alpha": gain["alpha"],
                },
            )
            labels = gain["labels"]
            hits = sorted(
                ((name, rec["delta"]) for name, rec in labels.items() if rec.get("significant")),
                key=lambda item: -item[1],
            )
            table["rows"].append(
                [
                    entry["name"],
                    " / ".join(refs),
                    f"{len(hits)} of {len(labels)}",
                    ", ".join(f"{name} ({delta:+.3f})" for name, delta in hits) or "-",
                ]
            )
            table["_gains"].append(labels)
    for table in tables.values():
        _table_wide(table, table.pop("_alpha"))
    return list(tables.values())


def fairness_tables(doc: dict) -> list[dict]:
    tables: dict[tuple, dict] = {}
    for key, entry, block in _blocks(doc):
        attributes = (block.get("fairness") or {}).get("attributes")
        if not attributes:
            continue
        shown = [a for a in FAIRNESS_ATTRIBUTES if a in attributes]
        table = tables.setdefault(
            key,
            {
                "kind": "fairness",
                "title": f"Lowest-TPR group per attribute · {key[1]} · {key[2]} ({key[0]})",
                "note": "worst group (its TPR; max - min TPR gap, permutation p-value of equal "
                "TPRs) at the threshold chosen on the validation split; groups under the minimum "
                "size, or with fewer than 10 positives or negatives, are suppressed, and Unknown "
                "is reported but never compared (results written before the permutation test "
                "show no p-value; their percentile CI of the gap, biased upward, is not published)",
                "columns": ["submission", *shown],
                "rows": [],
            },
        )
        row = [entry["name"]]
        for attribute in table["columns"][1:]:
            rec = attributes.get(attribute)
            tpr = (rec or {}).get("summary", {}).get("tpr") or {}
            worst = tpr.get("worst_group")
            if not rec or worst is None:
                row.append("n/a")
                continue
            test = (rec.get("gap_test") or {}).get("tpr_difference") or {}
            ci_text = f", p {_fmt(test.get('p_value'), 3)}" if test else ""
            row.append(
                f"{worst} ({_fmt(tpr.get('group_min'), 2)}; gap {_fmt(tpr.get('difference'), 2)}"
                f"{ci_text})"
            )
        table["rows"].append(row)
    return list(tables.values())


def robustness_tables(doc: dict) -> list[dict]:
    tables: dict[tuple, dict] = {}
    for key, entry, block in _blocks(doc):
        curves = block.get("robustness") or {}
        mcar = curves.get("cxr_missing_mcar")
        if not mcar:
            continue
        table = tables.setdefault(
            key,
            {
                "kind": "robustness",
                "title": f"Robustness to missing CXR · {key[1]} · {key[2]} ({key[0]})",
                "note": f"{mcar['metric']} with every image present and with none (MCAR rate 1); "
                "normalised area under each missingness curve (1 = no loss), the MCAR area with "
                "its 95% CI on the shared bootstrap resamples; train CXR dropout = share of "
                "training images the entry hid (0: it never saw a missing image)",
                "columns": [
                    "submission",
                    "train CXR dropout",
                    "all CXR",
                    "no CXR",
                    "area MCAR",
                    "area acuity",
                    "area subgroup",
                    "area EHR 24 h",
                    "area MCAR 95% CI",
                ],
                "rows": [],
            },
        )
        dropout = entry.get("provenance", {}).get("train_cxr_dropout")
        values = mcar["values"]
        areas = [
            _fmt((curves.get(name) or {}).get("auc_normalised"))
            for name in (*CXR_SCENARIOS, "ehr_truncate_24h")
        ]
        ci = (
            f"[{_fmt(mcar.get('ci_low'))}, {_fmt(mcar.get('ci_high'))}]"
            if "ci_low" in mcar
            else "n/a"
        )
        table["rows"].append(
            [entry["name"], _fmt(dropout, 2), _fmt(values[0]), _fmt(values[-1]), *areas, ci]
        )
    return list(tables.values())


def summary_tables(doc: dict) -> list[dict]:
    """Every summary table, grouped by kind (fusion gain, fairness, robustness)."""
    return fusion_gain_tables(doc) + fairness_tables(doc) + robustness_tables(doc)
