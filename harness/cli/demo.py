"""`harness demo`: the main job on the embedded default data (what `make demo` runs)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        n_patients: int = typer.Option(None, help="Patients of the default dataset if generated."),
        task: list[str] = typer.Option(None, "--task", "-t", help="Task(s) to evaluate."),
        submission: list[str] = typer.Option(
            None, "--submission", "-s", help="Reference submission(s) to evaluate (default: all)."
        ),
    ) -> None:
        """Synth -> cohort -> encode -> evaluate the references (quick) -> leaderboard."""
        from harness.demo import DEMO_TASKS, run_demo

        run_demo(
            n_patients=n_patients, tasks=tuple(task or DEMO_TASKS), submissions=submission or None
        )
