"""`harness validate` and `harness new-submission`: check and scaffold submission folders."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        path: Path = typer.Argument(..., help="Submission folder (with submission.yaml)."),
        n: int = typer.Option(100, help="Stays in the tiny generated dataset."),
        epochs: int = typer.Option(2, help="Training epochs per check run."),
        seed: int = typer.Option(0, help="Seed of the generated data and of training."),
        trusted: bool = typer.Option(
            False, "--trusted", help="Run in this process (your own code only); default: sandbox."
        ),
    ) -> None:
        """Check schema, import, output shape and values, and determinism on tiny data."""
        from rich.console import Console
        from rich.table import Table

        from harness.errors import SubmissionError
        from harness.progress import display
        from harness.tables import fit
        from harness.validate import validate_isolated, validate_submission

        console = Console()
        run = validate_submission if trusted else validate_isolated
        with display():  # the checks as they pass: on stderr, on a terminal
            report = run(path, n=n, max_epochs=epochs, seed=seed)
        table = Table(title=f"validate {report.name or path}", show_lines=False)
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in report.checks:
            mark = "[green]ok[/]" if check.ok else "[bold red]FAIL[/]"
            table.add_row(check.name, mark, check.message if check.ok else "see below")
        console.print(fit(table, "check"))
        if not report.ok:
            for check in report.failures:
                console.print(f"[bold red]{check.name}[/]: {check.message}", highlight=False)
            raise SubmissionError(f"{path}: {len(report.failures)} check(s) failed")
        console.print(f"[green]{path} passes validation[/]")

    @app.command("new-submission")
    def new_submission_cmd(
        name: str = typer.Argument(..., help="Name of the new submission (an identifier)."),
        directory: Path = typer.Option(Path("submissions"), "--dir", help="Parent folder."),
    ) -> None:
        """Create a submission folder from the template (it passes `harness validate`)."""
        from harness.models.scaffold import new_submission

        target = new_submission(name, directory)
        typer.echo(f"created {target}: edit model.py, then run `harness validate {target}`")
