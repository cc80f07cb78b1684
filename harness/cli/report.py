"""`harness report`: the four answers of the benchmark for one dataset, from its leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        dataset: str = typer.Option(
            None, "--dataset", help="Dataset to report on (default: the only one evaluated)."
        ),
        out: Path = typer.Option(
            None, "--out", help="Where report.md and report.html go (default: the leaderboard's)."
        ),
    ) -> None:
        """Answer the benchmark's four questions from the evaluated entries: when fusion helps
        (and on which labels), how fusion strategies compare, how robust they are to a missing
        image and which modality they lean on, and whether they treat groups alike.

        Every sentence is generated from the numbers with its 95% interval; differences the
        intervals do not support are reported as such, never ranked.
        """
        from rich.console import Console

        from harness.progress import display
        from harness.report import write_report

        with display():  # the leaderboard it reads: on stderr, on a terminal
            written = write_report(dataset, out)
        console = Console()
        for report in written.reports:
            if report.missing:
                console.print(
                    f"[yellow]{report.protocol}[/]: no answers; the report needs "
                    + "; ".join(report.missing),
                    highlight=False,
                )
        console.print(
            "report written: " + ", ".join(str(p) for p in written.paths.values()),
            highlight=False,
            soft_wrap=True,
        )
