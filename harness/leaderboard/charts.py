"""The leaderboard site's charts, drawn with matplotlib and inlined as SVG.

Every chart is a :class:`Chart`: the SVG (text kept as ``<text>`` elements, so it scales and can
be read by a screen reader), a caption, and the numbers behind it as a table, the chart's text
alternative. Output is deterministic (no dates, a fixed hash salt per chart) and every ``id``
inside a chart is prefixed with the chart's own slug, so many charts can share one HTML page
without their clip paths colliding.

matplotlib is imported only when a chart is drawn: writing the JSON and Markdown leaderboard
does not pay for it.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.results import Curve

PALETTE = (
    "#1b6ca8", "#d1495b", "#66a182", "#edae49", "#5c4d7d", "#00798c", "#8d6a9f", "#444444",
    "#c97b2b", "#2f9e44", "#9c36b5", "#1971c2", "#e8590c", "#5f3dc4", "#087f5b", "#862e9c",
    "#a61e4d", "#364fc7",
)  # fmt: skip
#: Line styles cycled with the palette, so entries stay apart in grey print and for colour-blind
#: readers once the palette repeats.
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

_ID = re.compile(r'\bid="([^"]+)"')
_REFERENCE = re.compile(r'(?:url\(#|href="#)([^")]+)')
_REFERENCE_SITE = re.compile(r'(url\(#|href="#)([^")]+)')
#: The RDF block matplotlib writes (format, creator): page-level facts, not the chart's.
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
#: Attributes that hold coordinates only (never text a reader sees).
_COORDINATES = re.compile(r'\b(?:d|x|y|x1|x2|y1|y2|transform)="[^"]*"')
_DECIMALS = re.compile(r"(-?\d+\.\d)\d+")


def _round_numbers(attribute: str) -> str:
    return _DECIMALS.sub(r"\1", attribute)


@dataclass(frozen=True)
class Chart:
    """One rendered chart: its slug (the HTML anchor), SVG, caption and data table."""

    slug: str
    title: str
    svg: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def slugify(text: str) -> str:
    """A stable HTML id from free text (letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "chart"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Figure, slug: str, title: str) -> str:
    """The figure as an SVG element for inlining: no XML prolog, ids prefixed with ``slug``, a
    ``<title>`` and ``role="img"`` for assistive technology."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": slug, "font.sans-serif": ["DejaVu Sans"]}
    ):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _METADATA.sub("", buf.getvalue())
    # coordinates to 0.1 pt (a 1/720 inch, below what a screen shows): a third of the bytes
    text = _COORDINATES.sub(lambda m: _round_numbers(m.group(0)), text)
    text = text[text.index("<svg") :]
    # ids: those referenced (clip paths, markers) get a prefix unique to the chart, so many
    # charts share a page; the others (matplotlib names every group) are dropped
    referenced = set(_REFERENCE.findall(text))
    prefix = "c" + hashlib.sha256(slug.encode()).hexdigest()[:8] + "-"

    def rename(m: re.Match[str]) -> str:
        return f'id="{prefix}{m.group(1)}"' if m.group(1) in referenced else ""

    text = _ID.sub(rename, text)
    text = _REFERENCE_SITE.sub(lambda m: m.group(1) + prefix + m.group(2), text)
    text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return text.replace(
        "<svg ",
        f'<svg role="img" aria-labelledby="{slug}--title" class="chart" ',
        1,
    ).replace(">", f'><title id="{slug}--title">{escape(title)}</title>', 1)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _style(i: int) -> dict[str, Any]:
    return {
        "color": PALETTE[i % len(PALETTE)],
        "linestyle": STYLES[(i // len(PALETTE)) % len(STYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def metric_label(metric: str) -> str:
    """An axis title for a metric name: ``auroc_macro`` -> ``AUROC (macro average)``."""
    base, _, avg = metric.partition("_")
    name = {"auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "brier": "Brier score"}.get(
        base, base.replace("_", " ")
    )
    return f"{name} ({avg} average)" if avg else name


#: Above this many entries a robustness chart is drawn as small multiples (one panel each).
OVERLAY_MAX = 5


def _points(curve: Curve) -> tuple[list[float], list[float]]:
    pairs = [(100 * r, v) for r, v in zip(curve.rates, curve.values, strict=False) if v is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _band(ax: Any, curve: Curve, color: str) -> None:
    band = [
        (100 * r, a, b)
        for r, a, b in zip(curve.rates, curve.values_ci_low, curve.values_ci_high, strict=False)
        if a is not None and b is not None
    ]
    if band:
        ax.fill_between(
            [b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=color,
            alpha=0.15, linewidth=0,
        )  # fmt: skip


def robustness_chart(slug: str, title: str, curves: Mapping[str, Curve]) -> Chart | None:
    """Each entry's headline metric against the scenario's rate, with its per-rate 95% CI as a
    band and the chance level as a dotted line. Up to :data:`OVERLAY_MAX` entries share one
    panel; more get one panel each on a shared scale, so bands stay legible."""
    shown = dict(sorted((n, c) for n, c in curves.items() if any(v is not None for v in c.values)))
    if not shown:
        return None
    metric = next(iter(shown.values())).metric
    chance = next((c.chance for c in shown.values() if c.chance is not None), None)
    x_label = "images removed at test time (% of stays)"
    if len(shown) <= OVERLAY_MAX:
        fig = _figure(7.2, 4.0)
        ax = fig.add_subplot()
        for i, (name, curve) in enumerate(shown.items()):
            style = _style(i)
            ax.plot(*_points(curve), label=name, markersize=4, linewidth=1.4, **style)
            _band(ax, curve, style["color"])
        if chance is not None:
            ax.axhline(chance, color="#888888", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    else:
        ncols = 4
        nrows = math.ceil(len(shown) / ncols)
        fig = _figure(9.6, 0.6 + 1.9 * nrows)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
        for i, (name, curve) in enumerate(shown.items()):
            ax = axes[i]
            style = {**_style(i), "marker": None}  # the values are in the table below
            ax.plot(*_points(curve), linewidth=1.4, **style)
            _band(ax, curve, style["color"])
            if chance is not None:
                ax.axhline(chance, color="#888888", linestyle=":", linewidth=0.8)
            ax.set_title(name, fontsize=8)
            ax.grid(True, color="#eeeeee", linewidth=0.5)
            ax.tick_params(labelsize=7)
        for ax in axes[len(shown) :]:
            ax.set_visible(False)
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
        fig.supxlabel(x_label, fontsize=8)
        fig.supylabel(metric_label(metric), fontsize=8)
    rates = sorted({r for c in shown.values() for r in c.rates})
    rows = tuple(
        (name, *(_value_ci(c, r) for r in rates), _fmt(c.area_above_chance), _fmt(c.auc_normalised))
        for name, c in shown.items()
    )
    columns = (
        "entry", *(f"{100 * r:g}% removed" for r in rates), "area above chance",
        "normalised area",
    )  # fmt: skip
    caption = (
        f"{metric_label(metric)} of each entry as images are removed at test time, with 95% "
        "bootstrap CIs as bands"
        + ("" if len(shown) <= OVERLAY_MAX else " (one panel per entry, on a shared scale)")
        + "; the dotted line is chance. The table gives the same values."
    )
    return Chart(slug, title, _svg(fig, slug, title), caption, columns, rows)


def _value_ci(curve: Curve, rate: float) -> str:
    for j, r in enumerate(curve.rates):
        if r == rate:
            v = curve.values[j]
            lo = curve.values_ci_low[j] if j < len(curve.values_ci_low) else None
            hi = curve.values_ci_high[j] if j < len(curve.values_ci_high) else None
            ci = "" if lo is None or hi is None else f" [{_fmt(lo)}, {_fmt(hi)}]"
            return _fmt(v) + ci
    return "n/a"


@dataclass(frozen=True)
class Interval:
    """One point with its CI on a dot plot: ``group`` is the row, ``series`` the colour."""

    group: str
    series: str
    value: float
    low: float | None
    high: float | None
    marked: bool = False
    note: str = ""


def interval_chart(
    slug: str, title: str, x_label: str, points: Sequence[Interval], caption: str,
    note_column: str = "",
) -> Chart | None:  # fmt: skip
    """A dot plot with horizontal 95% CIs: one row per group, one colour per series, a zero
    line; filled markers are ``marked`` (e.g. significant), hollow ones are not."""
    if not points:
        return None
    groups = sorted({p.group for p in points})
    series = sorted({p.series for p in points})
    fig = _figure(7.2, 0.8 + 0.28 * len(groups) * max(1, min(len(series), 3)) ** 0.5)
    ax = fig.add_subplot()
    width = 0.7 / max(1, len(series))
    for k, name in enumerate(series):
        style = _style(k)
        for p in (p for p in points if p.series == name):
            y = groups.index(p.group) - 0.35 + width * (k + 0.5)
            if p.low is not None and p.high is not None:
                ax.plot([p.low, p.high], [y, y], color=style["color"], linewidth=1.2)
            ax.plot(
                [p.value], [y], marker=style["marker"], markersize=5, color=style["color"],
                markerfacecolor=style["color"] if p.marked else "white", linestyle="none",
            )  # fmt: skip
        if len(series) > 1:
            ax.plot([], [], marker=style["marker"], color=style["color"], linestyle="none",
                    label=name)  # fmt: skip
    ax.axvline(0, color="#888888", linewidth=0.8)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlabel(x_label)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, axis="x", color="#e5e5e5", linewidth=0.6)
    if len(series) > 1:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    columns = ("row", "series", "value", "95% CI") + ((note_column,) if note_column else ())
    rows = tuple(
        (p.group, p.series, _fmt(p.value), f"[{_fmt(p.low)}, {_fmt(p.high)}]")
        + ((p.note,) if note_column else ())
        for p in sorted(points, key=lambda p: (p.group, p.series))
    )
    return Chart(slug, title, _svg(fig, slug, title), caption, columns, rows)


def heatmap_chart(
    slug: str, title: str, rows: Sequence[str], columns: Sequence[str],
    cells: Mapping[tuple[str, str], tuple[float, bool, str]], colour_label: str, caption: str,
) -> Chart | None:  # fmt: skip
    """A diverging heatmap centred on 0 (rows x columns); ``cells[(row, column)]`` is (value,
    marked, text for the table). Marked cells carry a star."""
    if not cells:
        return None
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    grid = np.full((len(rows), len(columns)), np.nan)
    for (r, c), (v, _, _) in cells.items():
        grid[rows.index(r), columns.index(c)] = v
    bound = float(np.nanmax(np.abs(grid))) or 0.01
    # rotated tick labels take about 0.05 inch per character below the cells
    label_space = 0.05 * max(len(c) for c in columns)
    fig = _figure(min(11.0, 3.0 + 0.3 * len(columns)), 1.0 + label_space + 0.26 * len(rows))
    ax = fig.add_subplot()
    # a vector mesh (imshow would embed a raster image in the SVG)
    image = ax.pcolormesh(
        np.ma.masked_invalid(grid), cmap="RdBu", edgecolors="white", linewidth=0.5,
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
    )  # fmt: skip
    for (r, c), (_, marked, _) in cells.items():
        if marked:
            ax.text(
                columns.index(c) + 0.5, rows.index(r) + 0.5, "*", ha="center", va="center",
                fontsize=9,
            )  # fmt: skip
    ax.set_xticks([i + 0.5 for i in range(len(columns))], columns, rotation=60, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10, loc="left")
    fig.colorbar(image, ax=ax, shrink=0.8).set_label(colour_label, fontsize=8)
    table_rows = tuple((r, c, text) for (r, c), (_, _, text) in sorted(cells.items()))
    return Chart(
        slug, title, _svg(fig, slug, title), caption, ("row", "column", "value"), table_rows
    )


def scatter_chart(
    slug: str, title: str, x_label: str, y_label: str, points: Sequence[tuple[float, float, str]]
) -> Chart | None:
    """Labelled points with a zero line on the y axis."""
    if not points:
        return None
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color=PALETTE[0])
    for x, y, label in points:
        ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.axhline(0, color="#888888", linestyle="--", linewidth=0.8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    rows = tuple((label, f"{x:+.3f}", f"{y:+.3f}") for x, y, label in points)
    caption = f"{y_label} against {x_label}, one point per label."
    return Chart(slug, title, _svg(fig, slug, title), caption, ("point", x_label, y_label), rows)
