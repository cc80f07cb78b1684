"""`harness audit`: leak checks of a built cohort (subjects, images, times, labels, folds)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        cohort: list[str] = typer.Option(
            None, "--cohort", "-c", help="Cohort(s) to audit; default: base and matched."
        ),
        dataset: str = typer.Option(None, "--dataset", help="Dataset of the built cohorts."),
        encoder: str = typer.Option(
            "default",
            "--encoder",
            help="CXR encoder whose embeddings the near-duplicate search uses.",
        ),
        near_threshold: float = typer.Option(
            None,
            "--near-threshold",
            min=0.0,
            max=1.0,
            help="Centred cosine similarity at which two images are near duplicates (0.97).",
        ),
        force: bool = typer.Option(
            False, "--force", help="Audit again even if a current audit exists."
        ),
    ) -> None:
        """Check cohorts for leaks; writes audit.json and audit.md, exits 3 when one fails."""
        from rich.console import Console
        from rich.table import Table

        from harness.audit import Thresholds, run_audit
        from harness.audit.checks import FAILED, PASSED, WARNING
        from harness.cli.evaluate import _split
        from harness.progress import display
        from harness.tables import fit

        thresholds = (
            Thresholds() if near_threshold is None else Thresholds(near_duplicate=near_threshold)
        )
        console = Console()
        colour = {PASSED: "green", FAILED: "bold red", WARNING: "yellow"}
        failed = False
        for name in _split(cohort) or ("base", "matched"):
            with display():  # each check counted, on stderr, on a terminal
                result = run_audit(name, dataset, encoder, force=force, thresholds=thresholds)
            table = Table(title=f"{name}: {result.verdict}", title_justify="left")
            for col in ("check", "status", "finding"):
                table.add_column(col, overflow="fold")
            for check, rec in result.record["checks"].items():
                style = colour.get(rec["status"], "dim")
                table.add_row(check, f"[{style}]{rec['status']}[/]", rec["summary"])
            console.print(fit(table, "check"))
            verb = "reused" if result.reused else "wrote"
            console.print(
                f"{verb} {result.path} and {result.report_path.name}",
                highlight=False,
                soft_wrap=True,
            )
            console.print(result.one_line(), highlight=False, soft_wrap=True)
            failed |= not result.passed
        if failed:
            raise typer.Exit(code=3)
