"""Cross-entry summary tables of a leaderboard: fusion gain, fairness, robustness.

The rankings answer "who is best"; these tables answer the questions the harness exists for,
one row per entry and one table per dataset x task x cohort:

- **fusion gain**: on which labels an entry that uses both modalities beats the EHR-only
  reference, and the best single modality on that label, significantly (paired bootstrap,
  Benjamini-Hochberg q < alpha);
- **fairness**: per attribute, the group with the lowest TPR at the validation-chosen threshold,
  with the TPR gap and its bootstrap CI;
- **robustness**: the main metric with every CXR present and with none, the normalised area under
  each CXR-missingness curve, the EHR-truncation area, and the train-time CXR dropout the entry
  used (entries that never saw a missing image in training are the ones missingness hurts).

Everything is read from the entries' ``result.json`` blocks; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def fusion_gain_tables(doc: dict) -> list[dict]:
    """Per-label gain over the EHR-only reference, then over the best single modality.

    Only entries that use both modalities are listed (a unimodal entry's gain over another
    unimodal model is not a fusion gain); entries whose inputs are unknown are kept.
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
                    "across the labels",
                    "columns": ["submission", "reference", "significant", "labels (delta)"],
                    "rows": [],
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
                "note": "worst group (its TPR; max - min TPR gap [95% bootstrap CI]) at the "
                "threshold chosen on the validation split; groups under the minimum size, or "
                "with fewer than 10 positives or negatives, are suppressed. A max - min gap "
                "grows under resampling when groups are small, so its percentile CI can lie "
                "above the point estimate",
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
            ci = (rec.get("gap_ci") or {}).get("tpr_difference") or {}
            ci_text = f" [{_fmt(ci.get('ci_low'), 2)}, {_fmt(ci.get('ci_high'), 2)}]" if ci else ""
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
                "normalised area under each missingness curve (1 = no loss); train CXR dropout "
                "= share of training images the entry hid (0: it never saw a missing image)",
                "columns": [
                    "submission",
                    "train CXR dropout",
                    "all CXR",
                    "no CXR",
                    "area MCAR",
                    "area acuity",
                    "area subgroup",
                    "area EHR 24 h",
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
        table["rows"].append(
            [entry["name"], _fmt(dropout, 2), _fmt(values[0]), _fmt(values[-1]), *areas]
        )
    return list(tables.values())


def summary_tables(doc: dict) -> list[dict]:
    """Every summary table, grouped by kind (fusion gain, fairness, robustness)."""
    return fusion_gain_tables(doc) + fairness_tables(doc) + robustness_tables(doc)
