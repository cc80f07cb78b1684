"""`harness leaderboard`: aggregate every result.json and print the ranking tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import JustifyMethod


def register(app: typer.Typer) -> None:
    @app.command()
    def leaderboard(
        results: Path = typer.Option(
            None, "--results", help="Folder of <dataset>/<name>/result.json files."
        ),
        out: Path = typer.Option(None, "--out", help="Where leaderboard.json/.md/.html go."),
        summary: bool = typer.Option(
            False, "--summary", help="Also print fusion-gain, fairness and robustness tables."
        ),
        accept_unsigned: bool = typer.Option(
            False,
            "--accept-unsigned",
            help="Maintainer override: also publish results that carry no signature (written "
            "before results were signed). Results whose signature is wrong stay rejected.",
        ),
    ) -> None:
        """Rank evaluated submissions; write leaderboard.json, .md and a self-contained .html.

        Results that cannot be published (unreadable, invalid, unsigned or edited by hand,
        patient-level content) are listed as rejected; the others are still ranked.
        """
        from harness import config
        from harness.leaderboard.aggregate import aggregate

        board = aggregate(
            results or config.results_dir(),
            out or config.leaderboard_dir(),
            accept_unsigned=accept_unsigned,
        )
        print_leaderboard(board, summary=summary)


def print_leaderboard(board, console=None, *, summary: bool = False) -> None:
    """Rich tables of every ranking (+ the summary tables), failed entries, and the files."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    for ranking in board.rankings:
        arrow = "↑" if ranking["higher_is_better"] else "↓"
        protocol = (ranking.get("protocol") or {}).get("label") or "protocol not recorded"
        table = Table(
            title=f"{ranking['task']} · {ranking['cohort']} · {ranking['metric']} {arrow}"
            f"  ({ranking['dataset']}, {ranking['fingerprint'][:12]})",
            caption=f"protocol: {protocol}",
        )
        from harness.leaderboard.render import VS_LEADER_COLUMNS, vs_leader

        columns: list[tuple[str, JustifyMethod]] = [
            ("rank", "right"), ("submission", "left"), ("value", "right"), ("95% CI", "left"),
            *((c, "left") for c in VS_LEADER_COLUMNS),
        ]  # fmt: skip
        for col, justify in columns:
            table.add_column(escape(col), justify=justify)
        for row in ranking["rows"]:
            value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
            ci = "n/a" if row["ci_low"] is None else f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            delta, tied = vs_leader(row)
            table.add_row(str(row["rank"]), row["name"], value, ci, escape(delta), tied)
        console.print(table)
    if summary:
        from harness.leaderboard.render import summary_by_protocol

        for spec in summary_by_protocol(board.document):
            table = Table(title=spec["title"], caption=spec["note"])
            for col in spec["columns"]:
                table.add_column(col)
            for row in spec["rows"]:
                table.add_row(*map(str, row))
            console.print(table)
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
