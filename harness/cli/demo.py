"""`harness demo`: the main job on the embedded default data (what `make demo` runs)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        n_patients: int = typer.Option(None, help="Patients in the default dataset (if generated)."),
    ) -> None:
        """Run the pipeline on the default synthetic dataset and print what each stage produced."""
        from harness.demo import run_demo

        run_demo(n_patients=n_patients)
