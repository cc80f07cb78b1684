"""The demo pipeline: every stage that exists, run in order on the embedded default dataset."""

from __future__ import annotations

from rich.console import Console


def run_demo(n_patients: int | None = None, console: Console | None = None) -> None:
    console = console or Console()
    console.rule("harness demo")
    console.print("No pipeline stage is implemented yet.")
