"""The leaderboard site: ``leaderboard.html``, one self-contained page that works offline.

Reading order: the answers first (the report's generated answers for every dataset and protocol,
then the summary tables: fusion gain per label, the worst-off groups, robustness, modality
reliance), then one section per task x cohort board (the ranking with paired differences against
the leader and the EHR-only reference, then its charts), then failed and rejected results. A
navigation list links every section. Tables sort by any column (a small inline script; without
it they read in rank order). Charts are drawn by matplotlib (:mod:`harness.leaderboard.charts`),
inlined as SVG, each with a caption and its numbers as a table, the chart's text alternative.

Nothing is fetched: no external script, style, font or image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from harness.leaderboard import charts
from harness.leaderboard.answers import Report, Scatter, Table
from harness.leaderboard.render import (
    VS_LEADER_COLUMNS,
    _fmt,
    _p,
    _protocol_groups,
    _protocol_line,
    audit_line,
    inputs_cell,
    summary_by_protocol,
    vs_leader,
)
from harness.leaderboard.summary import FAIRNESS_ATTRIBUTES, HEADLINE_SCENARIO, is_fusion
from harness.results import Block, Result

STYLE = """
body{font-family:system-ui,sans-serif;color:#222;line-height:1.45;margin:0}
.layout{display:flex;align-items:flex-start;max-width:1400px;margin:0 auto}
nav{position:sticky;top:0;max-height:100vh;overflow:auto;min-width:14em;max-width:18em;
  padding:1em;font-size:.9em;border-right:1px solid #ddd}
nav ul{list-style:none;padding-left:.8em;margin:.2em 0}
main{flex:1;min-width:0;padding:0 1.5em 3em}
section{margin-top:2em}
.scroll{overflow-x:auto;max-width:100%}
.answer{background:#f6f8fa;border-left:4px solid #1b6ca8;padding:.4em 1em;margin:.6em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #d0d7de;padding:3px 8px;vertical-align:top}
th{background:#f6f8fa;text-align:left}
th button{all:unset;cursor:pointer;font-weight:bold}
th button::after{content:" \\2195";color:#999}
th[aria-sort=ascending] button::after{content:" \\2191";color:#222}
th[aria-sort=descending] button::after{content:" \\2193";color:#222}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;font-style:italic;padding:4px 0}
figure{margin:1em 0}
figure svg{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
details{font-size:.85em}
.meta{color:#555;font-size:.9em}
@media (max-width:800px){.layout{display:block}nav{position:static;max-width:none;
  border-right:none;border-bottom:1px solid #ddd}}
"""

#: Sorting for every ``table.sortable``: a button in each header; numbers (``data-v`` or the
#: cell's leading number) sort numerically and before text such as ``n/a``, in either direction.
SCRIPT = """
(function(){
  function key(td){
    var v = td.getAttribute('data-v');
    var n = parseFloat(v === null ? td.textContent : v);
    return isNaN(n) ? null : n;
  }
  function sortBy(table, i, th){
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){
      h.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a.cells[i]), y = key(b.cells[i]);
      if (x === null || y === null){
        if (x !== null) return -1;
        if (y !== null) return 1;
        x = a.cells[i].textContent; y = b.cells[i].textContent;
      }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      var b = document.createElement('button');
      b.type = 'button';
      b.textContent = th.textContent;
      b.title = 'sort by ' + th.textContent;
      th.textContent = '';
      th.appendChild(b);
      b.addEventListener('click', function(){ sortBy(table, i, th); });
    });
  });
})();
"""


def _inline(text: str) -> str:
    """Generated text's ``code`` and **bold**, as escaped HTML."""
    parts = escape(text).split("`")
    html = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = html.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


def _cell(value: Any, number: float | None = None) -> str:
    """A table cell; ``number`` (when given) is what the column sorts on."""
    if number is None:
        return f"<td>{_inline(str(value))}</td>"
    return f"<td class='num' data-v='{number!r}'>{escape(str(value))}</td>"


def table_html(
    columns: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", sortable: bool = True
) -> str:
    """A table with a header row; ``sortable`` adds the sorting buttons (the script)."""
    head = "".join(f"<th scope='col'>{_inline(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    cls = " class='sortable'" if sortable else ""
    cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
    return (
        f"<div class='scroll'><table{cls}>{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def chart_html(chart: charts.Chart | None) -> str:
    """A chart as a figure: the SVG, its caption, and its numbers in a collapsed table."""
    if chart is None:
        return ""
    data = table_html(chart.columns, chart.rows, sortable=False)
    return (
        f"<figure id='{chart.slug}'>{chart.svg}<figcaption>{escape(chart.caption)}"
        f"<details><summary>the numbers behind the chart</summary>{data}</details>"
        "</figcaption></figure>"
    )


def report_sections_html(report: Report, level: int = 3, prefix: str = "") -> str:
    """A report's sections (the generated answers with their tables and charts) as HTML."""
    out = [f"<p>{_inline(p)}</p>" for p in report.preamble]
    if report.missing:
        out.append(
            "<p>No answers: the report needs " + escape("; ".join(report.missing))
            + ", evaluated under this protocol.</p>"
        )  # fmt: skip
        return "".join(out)
    for k, section in enumerate(report.sections):
        inner = [f"<h{level}>{escape(section.title)}</h{level}>"]
        for j, part in enumerate(section.parts):
            if isinstance(part, Table):
                inner.append(table_html(part.columns, part.rows, part.caption))
            elif isinstance(part, Scatter):
                slug = charts.slugify(f"{prefix}answer-{k}-{j}-{part.title}")
                inner.append(
                    chart_html(
                        charts.scatter_chart(slug, part.title, part.x_label, part.y_label,
                                             part.points)
                    )
                )  # fmt: skip
            else:
                inner.append(f"<p class='answer'>{_inline(part)}</p>")
        out.append("<section>" + "".join(inner) + "</section>")
    return "".join(out)


def page(title: str, heading: str, body: str, nav: Sequence[tuple[int, str, str]] = ()) -> str:
    """A whole page: the navigation list (level, anchor, text), the body, style and script."""
    items = []
    for level, anchor, text in nav:
        indent = " style='padding-left:1em'" if level > 1 else ""
        items.append(f"<li{indent}><a href='#{anchor}'>{escape(text)}</a></li>")
    navigation = (
        f"<nav aria-label='contents'><b>Contents</b><ul>{''.join(items)}</ul></nav>"
        if items
        else ""
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<div class='layout'>{navigation}<main><h1>{escape(heading)}</h1>{body}</main></div>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# The boards


#: Entry name -> (the entry, its block on one board).
Pairs = dict[str, tuple[Result, Block]]


def _board_blocks(doc: Mapping[str, Any], table: Mapping[str, Any]) -> Pairs:
    """Entry name -> (entry, its block) on a ranking table's board (this board's entries)."""
    ranked = {r["name"] for r in table["rows"]}
    out = {}
    for entry in map(Result.of, doc["entries"]):
        block = entry.block(table["task"], table["cohort"])
        if block and entry.dataset == table["dataset"] and entry.name in ranked:
            out[str(entry.name)] = (entry, block)
    return out


def _ranking_html(table: Mapping[str, Any], blocks: Pairs) -> str:
    columns = (
        "rank", "submission", "version", "inputs", table["metric"], "95% CI", *VS_LEADER_COLUMNS,
        "Δ vs EHR-only [95% CI], p",
    )  # fmt: skip
    rows = []
    for r in table["rows"]:
        delta_cell, tied = vs_leader(r)
        pair = blocks.get(str(r["name"]))
        delta = pair[1].delta_vs_ehr if pair else None
        if delta is None or delta.delta is None:
            ehr_cell, ehr_v = "n/a", None
        else:
            ehr_cell = (
                f"{delta.delta:+.3f} [{_fmt(delta.ci_low)}, {_fmt(delta.ci_high)}], "
                f"{_p(delta.p_value)}"
            )
            ehr_v = delta.delta
        lead = r.get("delta_vs_leader")
        rows.append(
            "<tr>"
            + _cell(r["rank"], float(r["rank"]))
            + f"<th scope='row'>{escape(str(r['name']))}</th>"
            + _cell(r["version"])
            + _cell(inputs_cell(r))
            + _cell(_fmt(r["value"]), r["value"])
            + _cell(f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]", r.get("ci_low"))
            + _cell(delta_cell, 0.0 if r.get("comparison") == "leader" else lead)
            + _cell(tied)
            + _cell(ehr_cell, ehr_v)
            + "</tr>"
        )
    head = "".join(f"<th scope='col'>{escape(c)}</th>" for c in columns)
    return (
        "<div class='scroll'><table class='sortable'><caption>ranking on "
        f"{escape(table['metric'])}: each entry against the leader and the EHR-only reference, "
        "paired on the shared bootstrap resamples"
        f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _robustness_charts(slug: str, blocks: Pairs) -> list[str]:
    curves = {name: block.robustness for name, (_, block) in blocks.items()}
    scenarios = sorted(
        {s for by in curves.values() for s in by}, key=lambda s: (s != HEADLINE_SCENARIO, s)
    )
    return [
        chart_html(
            charts.robustness_chart(
                f"{slug}-robustness-{charts.slugify(scenario)}",
                f"robustness: {scenario}",
                {n: c[scenario] for n, c in curves.items() if scenario in c},
            )
        )
        for scenario in scenarios
    ]


def _gain_chart(slug: str, blocks: Pairs) -> str:
    """Per-label gain of every fusion entry over the best single modality (else over the
    EHR-only reference), starred where significant after Benjamini-Hochberg."""
    for field in ("fusion_gain_unimodal", "fusion_gain"):
        cells: dict[tuple[str, str], tuple[float, bool, str]] = {}
        metric, alpha = "", None
        for name, (entry, block) in sorted(blocks.items()):
            gain = block.gain(field)
            if not gain or not is_fusion(entry) or name in gain.references:
                continue
            metric, alpha = gain.metric, gain.alpha
            for label, d in gain.labels.items():
                if d.delta is None:
                    continue
                q = "q n/a" if d.q_value is None else f"q={d.q_value:.3f}"
                text = f"{d.delta:+.3f} [{_fmt(d.ci_low)}, {_fmt(d.ci_high)}], {q}"
                cells[(name, label)] = (d.delta, d.significant, text)
        if cells:
            against = (
                "the best single modality"
                if field == "fusion_gain_unimodal"
                else ("the EHR-only reference")
            )
            rows = sorted({r for r, _ in cells})
            labels = sorted({c for _, c in cells})
            return chart_html(
                charts.heatmap_chart(
                    f"{slug}-gain", f"{metric} gain per label over {against}", rows, labels,
                    cells, f"Δ {charts.metric_label(metric)}",
                    f"Each fusion entry's {metric} minus that of {against} on each label, on the "
                    f"same bootstrap resamples; * marks a gain significant at Benjamini-Hochberg "
                    f"q < {alpha} across the entry's labels. The table lists each Δ with its 95% "
                    "CI and q-value.",
                )
            )  # fmt: skip
    return ""


def _fairness_charts(slug: str, blocks: Pairs) -> list[str]:
    """Per attribute: each group's TPR minus the other groups' pooled TPR (Newcombe 95% CI),
    one row per entry; filled markers where the CI excludes 0."""
    out = []
    attributes: list[str] = []
    for _, block in blocks.values():
        fairness = block.fairness
        for attr in fairness.attributes if fairness else ():
            if "*" not in attr and attr not in attributes:
                attributes.append(attr)
    order = {a: i for i, a in enumerate(FAIRNESS_ATTRIBUTES)}
    for attr in sorted(attributes, key=lambda a: (order.get(a, len(order)), a)):
        points = []
        for name, (_, block) in sorted(blocks.items()):
            raw = ((block.raw.get("fairness") or {}).get("attributes") or {}).get(attr) or {}
            test = (raw.get("gap_test") or {}).get("tpr_difference") or {}
            gap_p = test.get("p_value")
            for row in (raw.get("vs_rest") or {}).get("tpr") or ():
                lo, hi = row.get("difference_ci_low"), row.get("difference_ci_high")
                points.append(
                    charts.Interval(
                        group=name, series=str(row["group"]), value=float(row["difference"]),
                        low=lo, high=hi,
                        marked=lo is not None and hi is not None and (lo > 0 or hi < 0),
                        note="n/a" if gap_p is None else f"{gap_p:.3f}",
                    )
                )  # fmt: skip
        out.append(
            chart_html(
                charts.interval_chart(
                    f"{slug}-fairness-{charts.slugify(attr)}",
                    f"true-positive rate by {attr}: each group vs the rest",
                    "TPR of the group minus TPR of the other groups pooled", points,
                    "Per entry, each group's true-positive rate (at the threshold chosen on the "
                    "validation split) minus that of the other groups pooled, with its Newcombe "
                    "95% CI; a filled marker's CI excludes 0. The table adds the permutation "
                    "p-value of the entry's max - min TPR gap for this attribute.",
                    note_column="TPR gap p (permutation)",
                )
            )
        )  # fmt: skip
    return out


def _board_slug(table: Mapping[str, Any], k: int) -> str:
    return charts.slugify(f"board-{k}-{table['dataset']}-{table['task']}-{table['cohort']}")


def _board_html(doc: Mapping[str, Any], table: Mapping[str, Any], slug: str) -> str:
    blocks = _board_blocks(doc, table)
    parts = [
        f"<section id='{slug}'><h2>{escape(table['task'])} · {escape(table['cohort'])}</h2>",
        f"<p class='meta'>dataset <code>{escape(table['dataset'])}</code>, cohort fingerprint "
        f"<code>{escape(table['fingerprint'])}</code>; protocol "
        f"{escape(_protocol_line(table))}; {escape(audit_line(table))}. Ranked on "
        f"{escape(table['metric'])}; tied: p ≥ 0.05 against the leader.</p>",
        _ranking_html(table, blocks),
        *_robustness_charts(slug, blocks),
        _gain_chart(slug, blocks),
        *_fairness_charts(slug, blocks),
        "</section>",
    ]
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# The page


def _answers_html(doc: dict) -> tuple[str, list[tuple[int, str, str]]]:
    """The report's answers for every dataset and protocol, then the summary tables."""
    from harness.leaderboard.answers import build_report

    nav: list[tuple[int, str, str]] = [(1, "answers", "Answers")]
    body = ["<section id='answers'><h2>Answers</h2>"]
    datasets = sorted({str(e.get("dataset")) for e in doc["entries"]})
    for dataset in datasets:
        mine = {**doc, "entries": [e for e in doc["entries"] if e.get("dataset") == dataset]}
        for label, sub in _protocol_groups(mine):
            report = build_report(sub, dataset)
            anchor = charts.slugify(f"answers-{dataset}-{label}")
            nav.append((2, anchor, f"{dataset} · {label}"))
            body.append(
                f"<section id='{anchor}'><h3>{escape(dataset)} · protocol {escape(label)}</h3>"
                + report_sections_html(report, level=4, prefix=anchor) + "</section>"
            )  # fmt: skip
    if not datasets:
        body.append("<p>No evaluated entry yet: run <code>harness evaluate</code>.</p>")
    summaries = summary_by_protocol(doc)
    if summaries:
        nav.append((1, "summaries", "Summary tables"))
        body.append("<section id='summaries'><h2>Summary tables</h2>")
        kinds = {t.get("kind") for t in summaries}
        if "fusion_gain" not in kinds and "fusion_gain_unimodal" not in kinds:
            body.append(
                "<p>No fusion-gain table: per-label gains are computed for multilabel tasks "
                "(e.g. phenotypes) with an EHR-only reference evaluated on the same board.</p>"
            )
        for t in summaries:
            body.append(f"<h3>{escape(t['title'])}</h3><p class='meta'>{escape(t['note'])}</p>")
            body.append(table_html(t["columns"], t["rows"]))
        body.append("</section>")
    body.append("</section>")
    return "".join(body), nav


def _failures_html(doc: Mapping[str, Any]) -> str:
    out = ""
    if doc.get("failed"):
        out += "<section id='failed'><h2>Failed evaluations</h2>" + table_html(
            ("submission", "category", "message"),
            [(f["name"], f["category"], f["message"][:300]) for f in doc["failed"]],
        ) + "</section>"  # fmt: skip
    if doc.get("rejected"):
        out += "<section id='rejected'><h2>Rejected results</h2>" + table_html(
            ("entry", "category", "reason"),
            [(r["entry"], r["category"], r["reason"][:300]) for r in doc["rejected"]],
        ) + "</section>"  # fmt: skip
    return out


def render_html(doc: dict) -> str:
    """The leaderboard document as the site's single page."""
    answers, nav = _answers_html(doc)
    boards = []
    nav.append((1, "boards", "Boards"))
    for k, table in enumerate(doc["rankings"]):
        slug = _board_slug(table, k)
        nav.append((2, slug, f"{table['task']} · {table['cohort']} ({table['dataset']})"))
        boards.append(_board_html(doc, table, slug))
    if doc.get("failed"):
        nav.append((1, "failed", "Failed evaluations"))
    if doc.get("rejected"):
        nav.append((1, "rejected", "Rejected results"))
    intro = (
        f"<p class='meta'>harness {escape(doc['harness_version'])} · schema "
        f"{escape(doc['schema_version'])} · generated {escape(doc['generated_at'])}. One board "
        "per task, cohort and protocol; each entry is tested against the leader, paired on the "
        "shared bootstrap resamples (tied: p ≥ 0.05). The report beside this page "
        "(<a href='report.html'>report.html</a>) holds the answers alone.</p>"
    )
    body = intro + answers + "<section id='boards'><h2>Boards</h2>" + "".join(boards)
    if not doc["rankings"]:
        body += "<p>No board yet.</p>"
    body += "</section>" + _failures_html(doc)
    return page("harness leaderboard", "Leaderboard", body, nav)
