"""The report as Markdown and as a self-contained HTML page (the same content)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from harness.leaderboard.answers import Report, Scatter, Table
from harness.leaderboard.site import page, report_sections_html


def _md_text(text: str) -> str:
    """Generated text for Markdown: no raw HTML gets through (names come from result files)."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [f"*{table.caption}*", ""]
    lines.append("| " + " | ".join(map(_md_cell, table.columns)) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _chart_text(chart: Scatter) -> str:
    """The chart's data as text (its alternative in Markdown and under the HTML figure)."""
    points = "; ".join(f"{label} ({x:.3f}, {y:+.3f})" for x, y, label in chart.points)
    return f"{chart.title} ({chart.x_label}, {chart.y_label}): {points}"


def render_markdown(reports: Sequence[Report]) -> str:
    out = ["# What fusion does on this dataset", ""]
    for report in reports:
        if len(reports) > 1:
            out += [f"## Protocol: {report.protocol}", ""]
        out += [*(_md_text(p) + "\n" for p in report.preamble)]
        if report.missing:
            out += [
                "No answers: the report needs " + "; ".join(report.missing) + ", evaluated "
                "under this protocol.",
                "",
            ]
            continue
        level = "###" if len(reports) > 1 else "##"
        for section in report.sections:
            out += [f"{level} {section.title}", ""]
            for part in section.parts:
                if isinstance(part, Table):
                    out += [_md_table(part), ""]
                elif isinstance(part, Scatter):
                    out += [f"Chart data — {_md_text(_chart_text(part))}", ""]
                else:
                    out += [_md_text(part), ""]
    return "\n".join(out).rstrip() + "\n"


def render_html(reports: Sequence[Report]) -> str:
    """The report as a page of the leaderboard site (same style, charts and tables)."""
    body = ["<p><a href='leaderboard.html'>leaderboard</a></p>"]
    for k, report in enumerate(reports):
        if len(reports) > 1:
            body.append(f"<h2>Protocol: {escape(report.protocol)}</h2>")
        body.append(report_sections_html(report, level=3, prefix=f"protocol-{k}-"))
    return page("harness report", "What fusion does on this dataset", "".join(body))
