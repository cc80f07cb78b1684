"""The four answers of the benchmark, generated from the numbers of a leaderboard document.

1. **When does fusion improve prediction?** Per board (task x cohort), the fusion entries
   against the best unimodal reference on the paired bootstrap; per label of a multilabel task,
   the complementarity of the two modalities (what each unimodal reference predicts alone) beside
   the significant gains, and whether gains concentrate where both carry signal.
2. **How do fusion strategies compare?** The ranking with each entry tested against the leader:
   entries the test cannot separate from the leader are named as tied, never ranked.
3. **How robust are they to a missing image, and which modality do they lean on?** Absolute
   values with every image and with none, the paired difference to the EHR-only reference with
   none, the rate up to which fusion beats every unimodal reference; the modality-reliance
   table and its imbalance index.
4. **Are they fair?** Per attribute, the lowest-TPR group of each entry and whether its TPR gap
   is significant (permutation test).

Every sentence is built from the entries' numbers and says what the 95% intervals support: a
difference whose interval contains 0 is reported as no significant difference. Nothing here
recomputes a score; it reads the published (vetted, aggregate) leaderboard document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.leaderboard.aggregate import protocol_label, protocol_of
from harness.leaderboard.summary import FAIRNESS_ATTRIBUTES, HEADLINE_SCENARIO, is_fusion
from harness.leaderboard.summary import fmt_ci as _ci
from harness.leaderboard.summary import fmt_value as _f
from harness.results import Block, Result
from harness.results.reader import Delta, Estimate

#: Significance level of every statement (the intervals are 95%).
ALPHA = 0.05
#: Labels' per-label metric the complementarity is measured with (chance 0.5).
COMPLEMENTARITY_METRIC = "auroc"


@dataclass
class Table:
    """A table of a report section: a caption, its columns and rows of text."""

    caption: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Scatter:
    """A labelled scatter chart (x, y, label) with axis titles (rendered as SVG in HTML)."""

    title: str
    x_label: str
    y_label: str
    points: list[tuple[float, float, str]]


@dataclass
class Section:
    """One answer: its question, then per board the generated paragraphs and the tables and
    charts behind them, in reading order."""

    title: str
    parts: list[str | Table | Scatter] = field(default_factory=list)

    @property
    def paragraphs(self) -> list[str]:
        return [p for p in self.parts if isinstance(p, str)]

    def add(self, *parts: str | Table | Scatter) -> None:
        self.parts.extend(parts)


@dataclass
class Report:
    """The report of one dataset under one protocol."""

    dataset: str
    protocol: str
    preamble: list[str]
    sections: list[Section]
    missing: list[str] = field(default_factory=list)


def _est(e: Estimate | None, digits: int = 3) -> str:
    return "n/a" if e is None else f"{_f(e.value, digits)} {_ci(e.ci_low, e.ci_high, digits)}"


def _delta(d: Delta | None) -> str:
    return "n/a" if d is None else f"{_f(d.delta)} {_ci(d.ci_low, d.ci_high)}"


def _verdict(d: Delta | None, metric: str) -> str:
    """``better`` / ``worse`` when the 95% CI of the paired difference (entry minus
    reference) excludes 0, by the metric's direction, else ``tied`` (``n/a`` without one)."""
    from harness.metrics.registry import HIGHER_IS_BETTER

    if d is None or d.ci_low is None or d.ci_high is None:
        return "n/a"
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    low, high = sorted((sign * d.ci_low, sign * d.ci_high))
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "tied"


def _not_compared(verdicts: Mapping[str, str]) -> str:
    missing = [n for n, v in verdicts.items() if v == "n/a"]
    if not missing:
        return ""
    return (
        f" {len(missing)} could not be compared (no paired difference recorded: {_names(missing)})."
    )


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


@dataclass(frozen=True)
class Board:
    """One task x cohort of a protocol: its entries' blocks and its ranking table."""

    task: str
    cohort: str
    metric: str
    blocks: dict[str, Block]
    entries: dict[str, Result]
    ranking: Mapping[str, Any] | None

    @property
    def title(self) -> str:
        return f"{self.task} · {self.cohort}"

    def fusion(self) -> list[str]:
        return [n for n in sorted(self.blocks) if is_fusion(self.entries[n])]

    def reference(self, role: str) -> str | None:
        """The EHR-only / CXR-only / best unimodal reference the fusion entries were compared
        with (the most common choice among their blocks)."""
        chosen = Counter(
            getattr(self.blocks[n].references, role)
            for n in self.fusion()
            if getattr(self.blocks[n].references, role)
        )
        return chosen.most_common(1)[0][0] if chosen else None


def boards(doc: Mapping[str, Any], dataset: str) -> list[Board]:
    """The boards of one dataset under one protocol (``doc`` holds that protocol's entries)."""
    entries = {str(r.name): r for r in map(Result.of, doc["entries"]) if r.dataset == dataset}
    rankings = {
        (t["task"], t["cohort"]): t for t in doc.get("rankings", ()) if t["dataset"] == dataset
    }
    keys = sorted({(b.task, b.cohort) for r in entries.values() for b in r.blocks()})
    out = []
    for task, cohort in keys:
        blocks = {n: b for n, r in entries.items() if (b := r.block(task, cohort)) is not None}
        metric = next((b.main_metric for b in blocks.values() if b.main_metric), "")
        out.append(Board(task, cohort, metric or "", blocks, entries,
                         rankings.get((task, cohort))))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# 1. When does fusion improve prediction?


def complementarity(board: Board) -> list[dict[str, Any]]:
    """Per label of a multilabel board: each unimodal reference's AUROC with CI, the
    complementarity (min of the two AUROCs minus chance: high only when both modalities carry
    signal), whether both are above chance (CI low > 0.5), and the fusion entries' significant
    gains over the best single modality on that label."""
    ehr, cxr = board.reference("ehr_only"), board.reference("cxr_only")
    if ehr is None or cxr is None or ehr not in board.blocks or cxr not in board.blocks:
        return []
    ehr_labels = board.blocks[ehr].per_label
    cxr_labels = board.blocks[cxr].per_label
    rows = []
    for label in ehr_labels:
        a = ehr_labels[label].get(COMPLEMENTARITY_METRIC)
        b = (cxr_labels.get(label) or {}).get(COMPLEMENTARITY_METRIC)
        if a is None or b is None or a.value is None or b.value is None:
            continue
        gains = []
        for name in board.fusion():
            gain = board.blocks[name].fusion_gain_unimodal
            d = None if gain is None else gain.labels.get(label)
            if d is not None and d.delta is not None:
                gains.append(d)
        rows.append({
            "label": label, "ehr": a, "cxr": b,
            "complementarity": min(a.value, b.value) - 0.5,
            "both": (a.ci_low or 0) > 0.5 and (b.ci_low or 0) > 0.5,
            "significant": sum(d.significant for d in gains),
            "n_entries": len(gains),
            "mean_gain": float(np.mean([d.delta for d in gains])) if gains else None,
        })  # fmt: skip
    return rows


def _concentration(rows: list[dict[str, Any]]) -> str:
    """Whether significant gains sit on the labels where both modalities carry signal."""
    from scipy.stats import spearmanr

    hits = sum(r["significant"] for r in rows)
    both = [r for r in rows if r["both"]]
    on_both = sum(r["significant"] for r in both)
    text = (
        f"Of the {hits} significant (entry, label) gains over the best single modality, "
        f"{on_both} fall on the {len(both)} of {len(rows)} labels where both the EHR-only and "
        "the CXR-only reference predict above chance (both 95% CIs above 0.5)."
    )
    paired = [(r["complementarity"], r["mean_gain"]) for r in rows if r["mean_gain"] is not None]
    if len(paired) >= 5:
        x, y = zip(*paired, strict=True)
        rho, p = spearmanr(x, y)
        if np.isfinite(rho) and p < ALPHA and rho > 0:
            text += (
                " Across labels, the mean gain rises with the complementarity "
                f"(Spearman ρ = {rho:.2f}, p = {p:.3g}): gains concentrate where both "
                "modalities carry signal."
            )
        elif np.isfinite(rho):
            text += (
                " Across labels, the mean gain is not significantly associated with the "
                f"complementarity (Spearman ρ = {rho:.2f}, p = {p:.3g})."
            )
    return text


def answer_fusion(boards_: Sequence[Board]) -> Section:
    section = Section("1. When does fusion improve prediction?")
    for board in boards_:
        fusion, best = board.fusion(), board.reference("best_unimodal")
        if not fusion or best is None:
            section.add(
                f"**{board.title}**: no comparison (needs a fusion entry and the unimodal "
                "references evaluated under the same protocol)."
            )
            continue
        deltas = {n: board.blocks[n].paired_delta(best) for n in fusion}
        verdicts = {n: _verdict(d, board.metric) for n, d in deltas.items()}
        better = [n for n, v in verdicts.items() if v == "better"]
        worse = [n for n, v in verdicts.items() if v == "worse"]
        tied = [n for n, v in verdicts.items() if v == "tied"]
        ref_value = board.blocks[best].headline if best in board.blocks else None
        text = (
            f"**{board.title}** ({board.metric}): against the best unimodal reference "
            f"`{best}` ({_est(ref_value)}), {len(better)} of {len(fusion)} fusion entries are "
            f"significantly better on the paired bootstrap ({_names(better)}), {len(worse)} "
            f"significantly worse, and {len(tied)} not distinguishable from it."
            + _not_compared(verdicts)
        )
        if not better:
            text += " On this board the data do not show a benefit of fusion."
        section.add(text)
        section.add(Table(
            f"{board.title}: fusion entries minus `{best}` ({board.metric}, paired 95% CI)",
            ["submission", board.metric, f"Δ vs {best}", "verdict"],
            [[n, _est(board.blocks[n].headline), _delta(d), verdicts[n]]
             for n, d in sorted(deltas.items(), key=lambda kv: -(kv[1].delta or 0)
                                if kv[1] else 0)],
        ))  # fmt: skip
        rows = complementarity(board)
        if rows:
            section.add(_concentration(rows))
            section.add(Table(
                f"{board.title}: complementarity per label (AUROC of each unimodal reference; "
                "complementarity = the smaller minus 0.5) and the fusion entries' significant "
                "gains over the best single modality on that label",
                ["label", f"EHR-only `{board.reference('ehr_only')}`",
                 f"CXR-only `{board.reference('cxr_only')}`", "complementarity",
                 "both above chance", "significant gains", "mean gain"],
                [[r["label"], _est(r["ehr"]), _est(r["cxr"]), _f(r["complementarity"]),
                  "yes" if r["both"] else "no", f"{r['significant']} of {r['n_entries']}",
                  _f(r["mean_gain"])]
                 for r in sorted(rows, key=lambda r: -r["complementarity"])],
            ))  # fmt: skip
            section.add(Scatter(
                f"{board.title}: mean fusion gain vs complementarity per label",
                "complementarity (min unimodal AUROC - 0.5)", "mean gain over best modality",
                [(r["complementarity"], r["mean_gain"], r["label"]) for r in rows
                 if r["mean_gain"] is not None],
            ))  # fmt: skip
    return section


# --------------------------------------------------------------------------------------------
# 2. How do fusion strategies compare?


def _vs_leader(row: Mapping[str, Any]) -> str:
    low, high = row.get("delta_ci_low"), row.get("delta_ci_high")
    return f"{_f(row.get('delta_vs_leader'))} {_ci(low, high)}"


def answer_ranking(boards_: Sequence[Board]) -> Section:
    section = Section("2. How do fusion strategies compare?")
    for board in boards_:
        table = board.ranking
        if not table or not table["rows"]:
            continue
        rows = table["rows"]
        leader = rows[0]
        tied = [r["name"] for r in rows[1:] if r.get("tied_with_leader")]
        behind = [
            r["name"] for r in rows[1:]
            if r.get("tied_with_leader") is False and r.get("comparison") == "paired"
        ]  # fmt: skip
        others = [r["name"] for r in rows[1:] if r["name"] not in tied and r["name"] not in behind]
        text = (
            f"**{board.title}** ({board.metric}): `{leader['name']}` leads with "
            f"{_f(leader['value'])} {_ci(leader['ci_low'], leader['ci_high'])}. "
        )
        if tied:
            text += (
                f"{len(tied)} of {len(rows) - 1} other entries are not significantly different "
                f"from it (paired p ≥ {ALPHA}): {_names(tied)}; the data do not rank these "
                f"entries against each other or the leader; {len(behind)} significantly "
                "behind."
            )
        elif not others:
            text += f"It is significantly ahead of every other entry (paired p < {ALPHA})."
        else:
            text += f"It is significantly ahead of {len(behind)} entries (paired p < {ALPHA})."
        if others:
            text += (
                f" {len(others)} could not be tested against it on shared resamples "
                f"({_names(others)}): no ranking is claimed for them."
            )
        section.add(text)
        section.add(Table(
            f"{board.title}: ranking on {board.metric}, each entry against the leader",
            ["rank", "submission", "value [95% CI]", "Δ vs leader [95% CI]", "p", "tied"],
            [[str(r["rank"]), r["name"], f"{_f(r['value'])} {_ci(r['ci_low'], r['ci_high'])}",
              "leader" if r is leader else _vs_leader(r), _f(r.get("p_vs_leader")),
              "-" if r is leader else ("yes" if r.get("tied_with_leader") else "no")]
             for r in rows],
        ))  # fmt: skip
    return section


# --------------------------------------------------------------------------------------------
# 3. Robustness and modality reliance


def answer_robustness(boards_: Sequence[Board]) -> Section:
    section = Section("3. How robust are fusion models to a missing image, and what do they use?")
    for board in boards_:
        fusion = [n for n in board.fusion() if board.blocks[n].curve(HEADLINE_SCENARIO)]
        ehr = board.reference("ehr_only")
        if not fusion or ehr is None:
            continue
        rows, verdicts, helps = [], {}, []
        for name in fusion:
            curve = board.blocks[name].curve(HEADLINE_SCENARIO)
            assert curve is not None
            v = (curve.versus or {}).get(ehr or "")
            d = None
            if v is not None and v.delta and 1.0 in curve.rates:
                j = curve.rates.index(1.0)
                d = Delta(v.delta[j], v.ci_low[j], v.ci_high[j], v.p_value[j])
            verdicts[name] = _verdict(d, board.metric)
            if curve.versus is not None:
                helps.append(curve.helps_up_to)
            last = curve.rates.index(1.0) if 1.0 in curve.rates else len(curve.values) - 1
            rows.append([
                name,
                f"{_f(curve.values[0])} {_ci(*_at(curve, 0))}",
                f"{_f(curve.values[last])} {_ci(*_at(curve, last))}",
                _delta(d), verdicts[name],
                "n/a" if curve.versus is None else
                ("never" if curve.helps_up_to is None else f"{curve.helps_up_to:g}"),
                _f(curve.area_above_chance), _f(curve.auc_normalised),
            ])  # fmt: skip
        better = [n for n, v in verdicts.items() if v == "better"]
        worse = [n for n, v in verdicts.items() if v == "worse"]
        tied = [n for n, v in verdicts.items() if v == "tied"]
        text = (
            f"**{board.title}** ({board.metric}): with every image removed, {len(better)} of "
            f"{len(fusion)} fusion entries remain significantly better than the EHR-only "
            f"reference `{ehr}` ({_names(better)}), {len(worse)} are significantly worse "
            f"({_names(worse)}), {len(tied)} are not distinguishable from it."
            + _not_compared(verdicts)
        )
        if helps:
            reached = [h for h in helps if h is not None]
            text += (
                f" {len(reached)} of {len(helps)} beat both the EHR-only and the best "
                "unimodal reference with every image present"
                + (
                    f"; the median rate of missing images up to which they keep beating them "
                    f"all is {float(np.median(reached)):g}."
                    if reached
                    else "."
                )
            )
        section.add(text)
        section.add(Table(
            f"{board.title}: {board.metric} under images missing completely at random",
            ["submission", "all CXR [95% CI]", "no CXR [95% CI]", f"Δ vs {ehr}, no CXR",
             "verdict", "helps up to", "area above chance", "normalised area"],
            rows,
        ))  # fmt: skip
        section.add(*_reliance_text(board))
        table = _reliance_table(board)
        if table is not None:
            section.add(table)
    return section


def _at(curve: Any, j: int) -> tuple[float | None, float | None]:
    lo, hi = curve.values_ci_low, curve.values_ci_high
    return (lo[j] if len(lo) > j else None, hi[j] if len(hi) > j else None)


def _reliance_text(board: Board) -> list[str]:
    relied = {n: r for n in board.fusion() if (r := board.blocks[n].reliance) is not None}
    if not relied:
        return []
    counts = Counter(r.dominant for r in relied.values())
    indices = [
        r.imbalance_index.value
        for r in relied.values()
        if r.imbalance_index and r.imbalance_index.value is not None
    ]
    text = (
        f"Modality reliance on {board.title}: {counts.get('ehr', 0)} of {len(relied)} fusion "
        "entries are EHR-dominant (the 95% CI of their imbalance index lies above 0.5 and removing "
        "the EHR significantly hurts: it costs them more than removing the image), "
        f"{counts.get('cxr', 0)} image-dominant, {counts.get('balanced', 0)} not distinguishable "
        f"from balanced and {counts.get('neither', 0)} lose nothing significant without either."
    )
    if indices:
        text += f" Median imbalance index {float(np.median(indices)):.2f}."
    return [text]


def _reliance_table(board: Board) -> Table | None:
    rows = []
    for name in sorted(board.blocks):
        rel = board.blocks[name].reliance
        if rel is None:
            continue
        entry = board.entries[name]
        rows.append([
            name, ", ".join(sorted(entry.inputs)) if entry.inputs else "?",
            _f(entry.train_cxr_dropout, 2), _est(rel.full), _est(rel.without_cxr),
            _est(rel.without_ehr), _est(rel.imbalance_index, 2), rel.dominant or "n/a",
        ])  # fmt: skip
    if not rows:
        return None
    return Table(
        f"{board.title}: modality reliance ({board.metric}; imbalance index = share of the "
        "total drop caused by removing the EHR)",
        ["submission", "inputs", "train CXR dropout", "both", "no CXR", "no EHR",
         "imbalance index", "dominant"],
        rows,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# 4. Fairness


def answer_fairness(boards_: Sequence[Board]) -> Section:
    section = Section("4. Do fusion models treat patient groups alike?")
    for board in boards_:
        per_entry = {n: b.fairness for n, b in board.blocks.items() if b.fairness is not None}
        per_entry = {n: f for n, f in per_entry.items() if f.attributes}
        if not per_entry:
            continue
        rows, sentences = [], []
        for attr in FAIRNESS_ATTRIBUTES:
            worst: Counter[str] = Counter()
            significant = n = 0
            for fairness in per_entry.values():
                table = fairness.attribute(attr)
                group = table.across("tpr").get("worst_group") if table else None
                if table is None or group is None:
                    continue
                n += 1
                worst[group] += 1
                p = (table.gap_test.get("tpr_difference") or {}).get("p_value")
                significant += p is not None and p < ALPHA
            if not n:
                continue
            group, count = worst.most_common(1)[0]
            rows.append([attr, group, f"{count} of {n}", f"{significant} of {n}"])
            sentences.append(
                f"{attr}: `{group}` for {count} of {n} entries, the TPR gap significant "
                f"for {significant}"
            )
        if rows:
            section.add(
                f"**{board.title}**, lowest true-positive rate at the threshold chosen on "
                "validation (the gap across groups tested by permutation, p < "
                f"{ALPHA}): " + "; ".join(sentences) + "."
            )
            section.add(Table(
                f"{board.title}: the most frequent lowest-TPR group per attribute",
                ["attribute", "lowest-TPR group (most often)", "entries", "gap significant"],
                rows,
            ))  # fmt: skip
    if not section.paragraphs:
        section.add(
            "No board carries binary fairness tables (multilabel tasks are reported per label "
            "in the leaderboard)."
        )
    return section


# --------------------------------------------------------------------------------------------


def requirements(boards_: Sequence[Board]) -> list[str]:
    """What the report needs and the dataset lacks: the unimodal references and a fusion entry."""
    from harness.evaluate.score.references import CXR_REFERENCES, EHR_REFERENCES

    missing = []
    # entries of another protocol or a tuned one carry a suffix: ehr_lstm.tuned.carebench
    names = {n.split(".", 1)[0] for b in boards_ for n in b.blocks}

    if not names & set(EHR_REFERENCES):
        missing.append(f"an EHR-only reference ({', '.join(EHR_REFERENCES)})")
    if not names & set(CXR_REFERENCES):
        missing.append(f"the CXR-only reference ({', '.join(CXR_REFERENCES)})")
    if not any(b.fusion() for b in boards_):
        missing.append("a fusion entry (one that reads both the EHR and the image)")
    return missing


def build_report(doc: Mapping[str, Any], dataset: str) -> Report:
    """The four answers for ``dataset`` from a leaderboard document holding one protocol."""
    bs = boards(doc, dataset)
    entries = [Result.of(e) for e in doc["entries"] if Result.of(e).dataset == dataset]
    protocol = protocol_label(protocol_of(entries[0]), selection=False) if entries else "?"
    tuned = sum(1 for e in entries if (e.protocol_record.get("tuning") or "default") != "default")
    preamble = [
        f"Dataset `{dataset}`; protocol {protocol}; {len(entries)} entries "
        f"({sum(is_fusion(e) for e in entries)} fusion, {tuned} tuned); "
        f"{len(bs)} boards ({', '.join(b.title for b in bs)}).",
        "Every statement below is generated from the entries' result.json figures. Intervals "
        "are 95% percentile intervals on patient-level bootstrap resamples shared by all "
        "entries, differences are paired on them, and a difference whose interval contains 0 "
        "is reported as no significant difference, never as a ranking.",
    ]
    missing = requirements(bs)
    if missing:
        return Report(dataset, protocol, preamble, [], missing)
    sections = [answer_fusion(bs), answer_ranking(bs), answer_robustness(bs), answer_fairness(bs)]
    return Report(dataset, protocol, preamble, sections)
