"""The report as Markdown and as a self-contained HTML page (the same content)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from harness.leaderboard.render import _scale
from harness.report.answers import Report, Scatter, Table

W, H, PAD = 460, 300, 50


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


def _inline(text: str) -> str:
    """Markdown's ``code`` and **bold** of a generated paragraph, as escaped HTML."""
    parts = escape(text).split("`")
    html = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = html.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


def _html_table(table: Table) -> str:
    head = "".join(f"<th scope='col'>{_inline(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return (
        f"<table><caption>{_inline(table.caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def scatter_svg(chart: Scatter) -> str:
    """A scatter chart with both axes, tick values, a zero line and labelled points."""
    xs = [p[0] for p in chart.points]
    ys = [p[1] for p in chart.points]
    if not xs:
        return ""
    x_lo, x_hi = min(*xs, 0.0), max(xs) or 0.01
    y_lo, y_hi = min(*ys, 0.0), max(*ys, 0.0) or 0.01

    def sx(v: float) -> float:
        return _scale(v, x_lo, x_hi, PAD, W - 20)

    def sy(v: float) -> float:
        return _scale(v, y_lo, y_hi, H - PAD, 30)

    parts = [
        f"<title>{escape(chart.title)}</title>",
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="bold">'
        f"{escape(chart.title[:80])}</text>",
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 20}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="30" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="{sy(0):.1f}" x2="{W - 20}" y2="{sy(0):.1f}" stroke="#aaa" '
        'stroke-dasharray="3,3"/>',
        f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{escape(chart.x_label)}</text>',
        f'<text x="12" y="{H / 2}" text-anchor="middle" transform="rotate(-90 12 {H / 2})">'
        f"{escape(chart.y_label)}</text>",
    ]
    for v in (x_lo, (x_lo + x_hi) / 2, x_hi):
        parts.append(
            f'<text x="{sx(v):.1f}" y="{H - PAD + 14}" text-anchor="middle">{v:.2f}</text>'
        )
    for v in (y_lo, (y_lo + y_hi) / 2, y_hi):
        parts.append(f'<text x="{PAD - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:+.3f}</text>')
    for x, y, label in chart.points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1b6ca8"/>')
        parts.append(
            f'<text x="{sx(x) + 4:.1f}" y="{sy(y) - 4:.1f}" font-size="8">'
            f"{escape(label[:24])}</text>"
        )
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="10">\n{body}\n</svg>'
    )


def render_html(reports: Sequence[Report]) -> str:
    body = ["<h1>What fusion does on this dataset</h1>",
            "<p><a href='leaderboard.html'>leaderboard</a></p>"]  # fmt: skip
    for report in reports:
        if len(reports) > 1:
            body.append(f"<h2>Protocol: {escape(report.protocol)}</h2>")
        body += [f"<p>{_inline(p)}</p>" for p in report.preamble]
        if report.missing:
            body.append(
                "<p>No answers: the report needs "
                + escape("; ".join(report.missing))
                + ", evaluated under this protocol.</p>"
            )
            continue
        for section in report.sections:
            inner = [f"<h3>{escape(section.title)}</h3>"]
            for part in section.parts:
                if isinstance(part, Table):
                    inner.append(_html_table(part))
                elif isinstance(part, Scatter):
                    inner.append(
                        f"<figure>{scatter_svg(part)}<figcaption>{escape(_chart_text(part))}"
                        "</figcaption></figure>"
                    )
                else:
                    inner.append(f"<p>{_inline(part)}</p>")
            body.append("<section>" + "".join(inner) + "</section>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "caption{text-align:left;font-style:italic;padding:4px 0}"
        "figcaption{font-size:smaller;color:#555}"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>harness report</title><style>{style}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
