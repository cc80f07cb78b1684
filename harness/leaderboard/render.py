"""Render a leaderboard document as Markdown and as one self-contained HTML page with inline SVG.

The HTML has no scripts, no external fonts, styles or CDN links: it opens offline. Plots are
small hand-built SVG charts (robustness curves, fairness gaps, per-label fusion gain with CIs).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from harness.results import Block, Curve, Fairness, FusionGain, Result

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


def _protocol_line(table: dict) -> str:
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


# --------------------------------------------------------------------------------------------
# SVG


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi == lo else a + (v - lo) * (b - a) / (hi - lo)


def _axes(title: str, x_label: str, y_lo: float, y_hi: float) -> list[str]:
    parts = [
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="{PAD - 10}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{escape(x_label)}</text>',
    ]
    for v in (y_lo, (y_lo + y_hi) / 2, y_hi):
        y = _scale(v, y_lo, y_hi, H - PAD, PAD - 10)
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    return parts


def _svg(parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="10">\n{body}\n</svg>'
    )


def robustness_svg(title: str, curves: Mapping[str, Curve]) -> str:
    """Line chart: one polyline per submission, x = missingness rate, y = main metric, with the
    95% CI at each rate as a whisker (results that recorded it)."""
    values = [
        v
        for c in curves.values()
        for v in (*c.values, *c.values_ci_low, *c.values_ci_high)
        if v is not None
    ]
    rates = [r for c in curves.values() for r in c.rates]
    if not values:
        return ""
    y_lo, y_hi = min(values), max(values)
    if y_hi - y_lo < 1e-6:
        y_lo, y_hi = y_lo - 0.05, y_hi + 0.05
    x_lo, x_hi = min(rates), max(rates)
    metric = next(iter(curves.values())).metric
    parts = _axes(title, f"rate ({metric})", y_lo, y_hi)
    for i, (name, curve) in enumerate(sorted(curves.items())):
        color = PALETTE[i % len(PALETTE)]
        pts = [
            (_scale(r, x_lo, x_hi, PAD, W - 110), _scale(v, y_lo, y_hi, H - PAD, PAD - 10))
            for r, v in zip(curve.rates, curve.values, strict=True)
            if v is not None
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
        for r, lo, hi in zip(curve.rates, curve.values_ci_low, curve.values_ci_high, strict=False):
            if lo is None or hi is None:
                continue
            x = _scale(r, x_lo, x_hi, PAD, W - 110)
            y0, y1 = (_scale(v, y_lo, y_hi, H - PAD, PAD - 10) for v in (lo, hi))
            parts.append(
                f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{color}" '
                'stroke-opacity="0.5"/>'
            )
        auc = _fmt(curve.auc_normalised, 2)
        parts.append(
            f'<text x="{W - 105}" y="{PAD + 12 * i}" fill="{color}">{escape(name)} ({auc})</text>'
        )
    return _svg(parts)


def bars_svg(title: str, bars: list[tuple[str, float, float | None, float | None, bool]]) -> str:
    """Horizontal bars with optional CI whiskers; bold labels mark highlighted bars."""
    if not bars:
        return ""
    height = max(H, 30 + 16 * len(bars))
    lo = min(0.0, *(b[1] for b in bars), *(b[2] for b in bars if b[2] is not None))
    hi = max(0.0, *(b[1] for b in bars), *(b[3] for b in bars if b[3] is not None))
    if hi - lo < 1e-9:
        hi = lo + 1.0
    left, right = 170, W - 10

    def x(v: float) -> float:
        return _scale(v, lo, hi, left, right)

    parts = [
        f'<text x="{W / 2}" y="14" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{x(0):.1f}" y1="20" x2="{x(0):.1f}" y2="{height - 6}" stroke="#333"/>',
    ]
    for i, (label, value, ci_lo, ci_hi, strong) in enumerate(bars):
        y = 26 + 16 * i
        color = PALETTE[0] if value >= 0 else PALETTE[1]
        x0, x1 = sorted((x(0), x(value)))
        weight = ' font-weight="bold"' if strong else ""
        parts.append(
            f'<text x="{left - 4}" y="{y + 9}" text-anchor="end"{weight}>'
            f"{escape(label[:32])}</text>"
        )
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" height="11" '
            f'fill="{color}"/>'
        )
        if ci_lo is not None and ci_hi is not None:
            parts.append(
                f'<line x1="{x(ci_lo):.1f}" y1="{y + 5.5}" x2="{x(ci_hi):.1f}" y2="{y + 5.5}" '
                'stroke="#000"/>'
            )
    svg = _svg(parts)
    return svg.replace(
        f'height="{H}" viewBox="0 0 {W} {H}"', f'height="{height}" viewBox="0 0 {W} {height}"'
    )


def _html_table(table: dict) -> str:
    cols = ("rank", "submission", "version", "inputs", "value", "95% CI", *VS_LEADER_COLUMNS)
    head = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>"
    rows = "".join(
        f"<tr><td>{r['rank']}</td><td>{escape(r['name'])}</td><td>{escape(r['version'])}</td>"
        f"<td>{escape(inputs_cell(r))}</td><td>{_fmt(r['value'])}</td><td>{_ci(r)}</td>"
        + "".join(f"<td>{escape(c)}</td>" for c in vs_leader(r))
        + "</tr>"
        for r in table["rows"]
    )
    return f"<table>{head}{rows}</table>"


def _board_blocks(doc: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Block]:
    """Entry name -> its block on a ranking table's board (this board's protocol only)."""
    ranked = {r["name"] for r in table["rows"]}
    out = {}
    for entry in map(Result.of, doc["entries"]):
        block = entry.block(table["task"], table["cohort"])
        if block and entry.dataset == table["dataset"] and entry.name in ranked:
            out[str(entry.name)] = block
    return out


def _robustness_plots(blocks: Mapping[str, Block]) -> list[str]:
    """One chart per scenario: every entry's curve."""
    curves = {name: block.robustness for name, block in blocks.items()}
    scenarios = sorted({s for by_scenario in curves.values() for s in by_scenario})
    return [
        robustness_svg(
            f"robustness: {scenario}",
            {n: c[scenario] for n, c in curves.items() if scenario in c},
        )
        for scenario in scenarios
    ]


def _gain_plot(name: str, gain: FusionGain) -> str:
    """Per-label fusion gain with CIs (bold: significant)."""
    bars = [
        (label, g.delta, g.ci_low, g.ci_high, g.significant)
        for label, g in gain.labels.items()
        if g.delta is not None
    ]
    title = f"{name}: {gain.metric} gain vs {gain.reference} (bold: q<{gain.alpha})"
    return bars_svg(title, bars)


def _fairness_plot(name: str, fairness: Fairness) -> str:
    """AUROC gap across the groups of each single attribute."""
    bars: list[tuple[str, float, float | None, float | None, bool]] = []
    for attr, t in fairness.attributes.items():
        if "*" in attr or "auroc" not in t.summary:
            continue
        ci = t.gap_ci.get("auroc_difference") or {}
        bars.append(
            (attr, t.across("auroc")["difference"], ci.get("ci_low"), ci.get("ci_high"), False)
        )
    return bars_svg(f"{name}: AUROC gap across groups", bars)


def _board_plots(blocks: Mapping[str, Block]) -> list[str]:
    """The board's charts: robustness per scenario, then per entry its gain and fairness."""
    plots = _robustness_plots(blocks)
    for name, block in sorted(blocks.items()):
        gain = block.fusion_gain
        if gain:
            plots.append(_gain_plot(name, gain))
        fairness = block.fairness
        if fairness and fairness.attributes:
            plots.append(_fairness_plot(name, fairness))
    return plots


def render_html(doc: dict) -> str:
    sections = []
    for table in doc["rankings"]:
        task, cohort = table["task"], table["cohort"]
        plots = _board_plots(_board_blocks(doc, table))
        sections.append(
            f"<section><h2>{escape(task)} · {escape(cohort)} · {escape(table['metric'])}</h2>"
            f"<p>dataset <code>{escape(table['dataset'])}</code>, cohort fingerprint "
            f"<code>{escape(table['fingerprint'])}</code>; protocol "
            f"{escape(_protocol_line(table))}; {escape(audit_line(table))}</p>"
            f"{_html_table(table)}"
            f"<div class='plots'>{''.join(p for p in plots if p)}</div></section>"
        )
    for table in summary_by_protocol(doc):
        head = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in table["columns"]) + "</tr>"
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
            for row in table["rows"]
        )
        sections.append(
            f"<section><h2>{escape(table['title'])}</h2><p>{escape(table['note'])}</p>"
            f"<table>{head}{rows}</table></section>"
        )
    failed = ""
    if doc["failed"]:
        items = "".join(
            f"<li><b>{escape(f['name'])}</b> ({escape(f['category'])}): "
            f"{escape(f['message'][:300])}</li>"
            for f in doc["failed"]
        )
        failed = f"<section><h2>Failed evaluations</h2><ul>{items}</ul></section>"
    if doc.get("rejected"):
        items = "".join(
            f"<li><b>{escape(r['entry'])}</b> ({escape(r['category'])}): "
            f"{escape(r['reason'][:300])}</li>"
            for r in doc["rejected"]
        )
        failed += f"<section><h2>Rejected results</h2><ul>{items}</ul></section>"
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        ".plots svg{margin:6px;border:1px solid #eee}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>harness leaderboard</title>"
        f"<style>{style}</style></head><body><h1>Leaderboard</h1>"
        f"<p>harness {escape(doc['harness_version'])} · schema {escape(doc['schema_version'])} · "
        f"generated {escape(doc['generated_at'])}. Ranks on the main metric, one board per "
        "protocol; each entry is tested against the leader, paired on the shared bootstrap "
        "resamples (tied: p ≥ 0.05).</p>" + "".join(sections) + failed + "</body></html>\n"
    )
