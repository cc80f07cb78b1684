"""Render a leaderboard document as Markdown, and the cells and groupings the terminal tables and
the HTML site (:mod:`harness.leaderboard.site`) share with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.results import Result

PALETTE = ("#1b6ca8", "#d1495b", "#66a182", "#edae49", "#5c4d7d", "#00798c", "#8d6a9f", "#444")
W, H, PAD = 420, 240, 40


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(row: dict) -> str:
    return f"[{_fmt(row.get('ci_low'))}, {_fmt(row.get('ci_high'))}]"


#: Column headers of the comparison with the leader (markdown, HTML, CLI).
VS_LEADER_COLUMNS = ("Δ vs leader [95% CI], p", "tied")


def inputs_cell(row: Mapping[str, Any]) -> str:
    """A ranking row's inputs, e.g. ``ehr, cxr, demographics`` (``?`` when not recorded)."""
    inputs = row.get("inputs")
    return "?" if not inputs else ", ".join(str(i) for i in inputs)


def _p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def vs_leader(row: dict) -> tuple[str, str]:
    """The row's comparison with the leader as two cells: the difference (with the paired CI and
    p-value, or a note that only CIs were compared) and the tied flag."""
    comparison = row.get("comparison")
    if comparison == "leader":
        return "leader", "-"
    if comparison == "paired":
        cell = f"{row['delta_vs_leader']:+.3f} [{_fmt(row['delta_ci_low'])}, "
        cell += f"{_fmt(row['delta_ci_high'])}], {_p(row['p_vs_leader'])}"
    elif comparison == "ci_overlap":
        cell = f"{row['delta_vs_leader']:+.3f} (no resamples: CI overlap)"
    else:
        return "n/a", "-"
    return cell, "yes" if row.get("tied_with_leader") else "no"


def _protocol_line(table: Mapping[str, Any]) -> str:
    protocol = table.get("protocol") or {}
    return protocol.get("label") or "protocol not recorded"


def audit_line(table: Mapping[str, Any]) -> str:
    """What the cohort's leak audit (`harness audit`) said for the entries of a ranking table."""
    by: dict[Any, list[str]] = {}
    for row in table["rows"]:
        by.setdefault(row.get("audit"), []).append(str(row["name"]))
    if set(by) == {"passed"}:
        return "leak audit of the cohort: passed for every entry"
    words = {
        "passed": "passed",
        "failed-allowed": "FAILED, evaluated anyway (--allow-leaks)",
        "failed": "FAILED",
        None: "not recorded (scored before audits)",
    }
    return "leak audit of the cohort: " + "; ".join(
        f"{words.get(k, str(k))} for {', '.join(names)}" for k, names in by.items()
    )


def _protocol_groups(doc: dict) -> list[tuple[str, dict]]:
    """(protocol label, sub-document holding only the entries of that protocol), in a stable
    order; one group per profile, folds, seeds, epoch cap, resamples and threshold rule."""
    from harness.leaderboard.aggregate import protocol_label, protocol_of

    groups: dict[str, list[dict]] = {}
    for entry in doc.get("entries", []):
        # the per-task selection metric follows the profile and the task: not a group of its own
        label = protocol_label(protocol_of(entry), selection=False)
        groups.setdefault(label, []).append(entry)
    return [(label, {**doc, "entries": entries}) for label, entries in sorted(groups.items())]


def summary_by_protocol(doc: dict) -> list[dict]:
    """The summary tables (:func:`harness.leaderboard.summary.summary_tables`) of each protocol
    apart, titles suffixed with the protocol, then the conclusions that change between the
    honest and carebench profiles (:func:`profile_differences`)."""
    from harness.leaderboard.summary import summary_tables

    groups = _protocol_groups(doc)
    out = []
    for label, sub in groups:
        for table in summary_tables(sub):
            title = table["title"] if len(groups) == 1 else f"{table['title']} · {label}"
            out.append({**table, "title": title})
    return out + profile_differences(doc)


def _base_name(name: str, profile: str) -> str:
    suffix = f".{profile}"
    return name[: -len(suffix)] if profile != "honest" and name.endswith(suffix) else name


def _beats_ehr(entry: Mapping[str, Any] | None, task: str, cohort: str) -> str:
    """Whether the headline delta over the EHR-only reference is > 0 with p < 0.05: yes/no/n/a."""
    block = None if entry is None else Result.of(entry).block(task, cohort)
    delta = None if block is None else block.delta_vs_ehr
    if delta is None or delta.delta is None or delta.p_value is None:
        return "n/a"
    return "yes" if delta.better_at(0.05) else "no"


def _top_ranked(rows: Mapping[str, Mapping[str, Any]], names: list[str]) -> str:
    """The best-ranked of ``names`` on a board (rows by name); ties go to the first name."""
    return min(names, key=lambda n: (rows[n]["rank"], n))


def profile_differences(doc: dict, a: str = "honest", b: str = "carebench") -> list[dict]:
    """Which conclusions change between two protocol profiles, per dataset, task and cohort.

    Boards of the two profiles with the same dataset, cohort fingerprint, task, cohort, folds and
    epoch cap are compared on the submissions ranked on both (``x`` and ``x.carebench``): a
    different top-ranked submission, every pair whose order flips, and each submission whose
    headline beats its EHR-only reference (delta > 0, p < 0.05) under one profile only; "none"
    for a board pair where nothing changes. Empty when no board has both profiles.
    """
    entries = {e["name"]: e for e in doc.get("entries", [])}
    boards: dict[tuple, dict[str, dict]] = {}
    for table in doc.get("rankings", []):
        protocol = table.get("protocol") or {}
        profile = protocol.get("profile")
        if profile not in (a, b):
            continue
        key = (table["dataset"], table["fingerprint"], table["task"], table["cohort"],
               tuple(protocol.get("folds") or ()), protocol.get("max_epochs"))  # fmt: skip
        boards.setdefault(key, {})[profile] = table
    rows: list[list[str]] = []
    for key, pair in sorted(boards.items(), key=lambda kv: str(kv[0])):
        if a not in pair or b not in pair:
            continue
        dataset, _, task, cohort = key[:4]
        where = f"{task} · {cohort} ({dataset})"
        ranks = {p: {_base_name(r["name"], p): r for r in pair[p]["rows"]} for p in (a, b)}
        common = sorted(set(ranks[a]) & set(ranks[b]))
        if len(common) < 1:
            continue
        metrics = f"{pair[a]['metric']} / {pair[b]['metric']}"
        top = {p: _top_ranked(ranks[p], common) for p in (a, b)}
        before = len(rows)
        if top[a] != top[b]:
            rows.append([where, f"top-ranked ({metrics})", top[a], top[b]])
        for i, x in enumerate(common):
            for y in common[i + 1 :]:
                order = {p: ranks[p][x]["rank"] - ranks[p][y]["rank"] for p in (a, b)}
                if order[a] * order[b] < 0:
                    first = {p: (x if order[p] < 0 else y) for p in (a, b)}
                    rows.append(
                        [where, f"order of {x} and {y}", f"{first[a]} first", f"{first[b]} first"]
                    )
        for name in common:
            beats = {
                p: _beats_ehr(entries.get(ranks[p][name]["name"]), task, cohort) for p in (a, b)
            }
            if beats[a] != beats[b]:
                rows.append([where, f"{name} beats its EHR-only reference", beats[a], beats[b]])
        if len(rows) == before:
            rows.append([where, f"none ({len(common)} submissions on both)", "-", "-"])
    if not rows:
        return []
    return [
        {
            "kind": "profile_differences",
            "title": f"Conclusions that change between the {a} and {b} profiles",
            "note": f"boards of the same data, task, cohort, folds and epoch cap, compared on the "
            f"submissions ranked under both; the {b} profile selects checkpoints on "
            "PRAUC/accuracy, ranks by its own headline metric, uses a 0.5 threshold and other "
            "seeds. Listed: a different top-ranked submission, pairs whose order flips, and "
            "submissions whose headline beats the EHR-only reference (delta > 0, p < 0.05) "
            "under one profile only",
            "columns": ["task · cohort", "conclusion", a, b],
            "rows": rows,
        }
    ]


def render_markdown(doc: dict) -> str:
    lines = [
        "# Leaderboard",
        "",
        f"harness {doc['harness_version']} · schema {doc['schema_version']} · "
        f"generated {doc['generated_at']}",
        "",
        "Ranks are per dataset, cohort fingerprint, task, cohort and protocol on the main metric "
        "(entries evaluated under different protocols are never ranked together); "
        "*Δ vs leader* is the entry minus the leader with the 95% CI and two-sided p-value of a "
        "paired test on the shared bootstrap resamples; *tied* means p ≥ 0.05 (not "
        "distinguishable from the leader; entries without stored resamples: the CIs overlap).",
    ]
    for table in doc["rankings"]:
        arrow = "higher is better" if table["higher_is_better"] else "lower is better"
        lines += [
            "",
            f"## {table['task']} · {table['cohort']} · {table['metric']} ({arrow})",
            "",
            f"dataset `{table['dataset']}`, cohort fingerprint `{table['fingerprint']}`",
            "",
            f"protocol: {_md(_protocol_line(table))}; {_md(audit_line(table))}",
            "",
            f"| rank | submission | version | inputs | value | 95% CI | "
            f"{' | '.join(VS_LEADER_COLUMNS)} |",
            "|---:|---|---|---|---:|---|---|---|",
        ]
        for row in table["rows"]:
            delta, tied = vs_leader(row)
            lines.append(
                f"| {row['rank']} | {row['name']} | {_md(row['version'])} | "
                f"{inputs_cell(row)} | {_fmt(row['value'])} | {_ci(row)} | {_md(delta)} | "
                f"{tied} |"
            )
    for table in summary_by_protocol(doc):
        cells = lambda row: " | ".join(str(c).replace("|", "\\|") for c in row)  # noqa: E731
        lines += [
            "",
            f"## {table['title']}",
            "",
            table["note"],
            "",
            f"| {cells(table['columns'])} |",
            "|" + "---|" * len(table["columns"]),
        ]
        lines += [f"| {cells(row)} |" for row in table["rows"]]
    if doc["failed"]:
        lines += [
            "",
            "## Failed evaluations",
            "",
            "| submission | category | message |",
            "|---|---|---|",
        ]
        for item in doc["failed"]:
            lines.append(f"| {_md(item['name'])} | {item['category']} | {_md(item['message'])} |")
    if doc.get("rejected"):
        lines += [
            "",
            "## Rejected results",
            "",
            "Not published: unreadable, invalid, unsigned or edited by hand, or holding what the "
            "leaderboard never publishes.",
            "",
            "| entry | category | reason |",
            "|---|---|---|",
        ]
        for item in doc["rejected"]:
            lines.append(f"| {_md(item['entry'])} | {item['category']} | {_md(item['reason'])} |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """One table cell: pipes escaped, on one line, at most 300 characters."""
    return " ".join(str(text).split()).replace("|", "\\|")[:300]
