"""Rich tables for the terminal: a dataset summary and the leaderboard rankings.

Shared by the command modules (`harness synth`, `harness leaderboard`) and `harness.demo`, which
prints the same tables between its stages; neither should have to import the other to do so.
rich is imported when a table is printed, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console, JustifyMethod

    from harness.leaderboard.aggregate import Leaderboard


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Rich table of a ``summarize_dataset`` / ``generate`` summary."""
    from rich.console import Console
    from rich.table import Table

    from harness.tables import fit

    console = console or Console()
    table = Table(title=f"dataset {summary.get('path', '')}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in summary["rows"].items():
        table.add_row(name, f"{n:,}")
    table.add_row("chest X-ray images (JPEG)", f"{summary['n_images']:,}")
    for key in ("n_patients", "n_stays"):
        if key in summary:
            table.add_row(key.replace("n_", "").replace("_", " "), f"{summary[key]:,}")
    console.print(fit(table, "table"))
    if "seconds" in summary:
        console.print(f"generated in {summary['seconds']:.1f} s")


def print_leaderboard(
    board: Leaderboard, console: Console | None = None, *, summary: bool = False
) -> None:
    """Rich tables of every ranking (+ the summary tables), failed entries, and the files."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.leaderboard.render import (
        VS_LEADER_COLUMNS,
        audit_line,
        inputs_cell,
        summary_by_protocol,
        vs_leader,
    )
    from harness.tables import fit

    console = console or Console()
    for ranking in board.rankings:
        arrow = "↑" if ranking["higher_is_better"] else "↓"
        protocol = (ranking.get("protocol") or {}).get("label") or "protocol not recorded"
        table = Table(
            title=f"{ranking['task']} · {ranking['cohort']} · {ranking['metric']} {arrow}"
            f"  ({ranking['dataset']}, {ranking['fingerprint'][:12]})",
            caption=f"protocol: {protocol}; {audit_line(ranking)}",
        )
        columns: list[tuple[str, JustifyMethod]] = [
            ("rank", "right"), ("submission", "left"), ("inputs", "left"), ("value", "right"),
            ("95% CI", "left"),
            *((c, "left") for c in VS_LEADER_COLUMNS),
        ]  # fmt: skip
        for col, justify in columns:
            table.add_column(escape(col), justify=justify)
        for row in ranking["rows"]:
            value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
            ci = "n/a" if row["ci_low"] is None else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            delta, tied = vs_leader(row)
            table.add_row(
                str(row["rank"]), row["name"], inputs_cell(row), value, ci, escape(delta), tied
            )
        console.print(fit(table, "submission"))
    if summary:
        for spec in summary_by_protocol(board.document):
            table = Table(title=spec["title"], caption=spec["note"])
            for col in spec["columns"]:
                table.add_column(col)
            for row in spec["rows"]:
                table.add_row(*map(str, row))
            console.print(fit(table, 0))
    for item in board.failed:
        console.print(
            f"[red]failed[/] {escape(item['name'])} ({item['category']}): "
            f"{escape(item['message'])}",
            highlight=False,
        )
    for item in board.document.get("rejected", []):
        console.print(
            f"[yellow]rejected[/] {escape(item['entry'])} ({item['category']}): "
            f"{escape(item['reason'])}",
            highlight=False,
        )
    if not board.rankings and not board.failed and not board.document.get("rejected"):
        console.print("no results found")
    console.print(f"wrote {board.paths['json'].parent}/leaderboard.{{json,md,html}}")
