"""`harness leaderboard`: aggregate every result.json and print the ranking tables."""

from __future__ import annotations

from pathlib import Path

import typer


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
        from harness.display import print_leaderboard
        from harness.leaderboard.aggregate import aggregate
        from harness.progress import display

        with display():  # reading, ranking, rendering: on stderr, on a terminal
            board = aggregate(
                results or config.results_dir(),
                out or config.leaderboard_dir(),
                accept_unsigned=accept_unsigned,
            )
        print_leaderboard(board, summary=summary)
