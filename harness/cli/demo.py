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
        folds: str = typer.Option(
            "1", "--folds", help="Test folds, e.g. 1,2,3,4,5 for the full protocol (default: 1)."
        ),
        seeds: str = typer.Option("0", "--seeds", help="Training seeds, e.g. 0,1,2 (default: 0)."),
        trusted: bool = typer.Option(
            False,
            "--trusted",
            help="Run the reference submissions in-process instead of sandboxed (faster; only "
            "for a submissions folder whose code you trust).",
        ),
        jobs: int = typer.Option(
            None,
            "--jobs",
            "-j",
            min=1,
            help="Submissions evaluated at once, the cores split between them (default: one "
            "per core; 1 runs them one after another in this process).",
        ),
    ) -> None:
        """Synth -> cohort -> encode -> evaluate the references (quick) -> leaderboard."""
        from harness.demo import DEMO_TASKS, run_demo
        from harness.errors import UsageError
        from harness.progress import display

        try:
            fold_list = tuple(int(x) for x in folds.split(",") if x.strip())
            seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
        except ValueError as exc:
            raise UsageError(f"--folds/--seeds take comma-separated integers: {exc}") from exc
        with display():  # every stage's bars, on stderr, on a terminal
            run_demo(
                n_patients=n_patients,
                tasks=tuple(task or DEMO_TASKS),
                submissions=submission or None,
                folds=fold_list,
                seeds=seed_list,
                executor="local" if trusted else None,
                jobs=jobs,
            )
