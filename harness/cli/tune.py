"""`harness tune`: an equal-budget Optuna search on the validation split (never the test)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def tune(
        submission: Path = typer.Argument(..., help="Submission folder with a `search:` section."),
        task: list[str] = typer.Option(
            None, "--task", "-t", help="Task(s); default: IHM and phenotype."
        ),
        cohort: list[str] = typer.Option(
            None, "--cohort", "-c", help="Cohort(s); default: base and matched."
        ),
        folds: str = typer.Option(
            "1", "--folds", help="Folds to tune (each on its own validation split)."
        ),
        trials: int = typer.Option(12, "--trials", min=1, help="Trials per fold (equal for all)."),
        max_epochs: int = typer.Option(
            10, "--max-epochs", min=1, help="Epoch cap per trial (equal for all)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of training."),
        dataset: str = typer.Option(None, "--dataset", help="Dataset of the built cohorts."),
        encoder: str = typer.Option("default", "--encoder", help="CXR encoder of the cache."),
        device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
        force: bool = typer.Option(False, "--force", help="Search again folds already tuned."),
        trusted: bool = typer.Option(
            False,
            "--trusted",
            help="Run the model in this process (your own code only); "
            "default: the bubblewrap sandbox.",
        ),
    ) -> None:
        """Choose a configuration per fold on validation (used by `evaluate --tuned`)."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Table

        from harness.cli.evaluate import _split
        from harness.evaluate.tune import Budget
        from harness.evaluate.tune import tune as run_tune
        from harness.tables import fit

        budget = Budget(trials=trials, max_epochs=max_epochs, seed=seed)
        fold_list = tuple(int(x) for x in _split([folds]) or ())
        console = Console()
        table = Table(title=f"{submission.name}: {budget.label()}")
        for col in ("task", "cohort", "fold", "validation", "default", "configuration"):
            table.add_column(col, overflow="fold")
        for t in _split(task) or ("mortality_in_hospital", "phenotype"):
            for c in _split(cohort) or ("base", "matched"):
                columns = (
                    TextColumn(f"[bold]{t}/{c}[/] fold {{task.fields[fold]}}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("trials · best {task.fields[best]}"),
                    TimeElapsedColumn(),
                )
                with Progress(*columns, console=console) as bar:
                    tid = bar.add_task("", total=budget.trials, fold="-", best="-")

                    def on_trial(fold: int, done: int, total: int, best, tid=tid) -> None:
                        bar.update(
                            tid,
                            completed=done,
                            total=total,
                            fold=fold,
                            best="-" if best is None else f"{best:.3f}",
                        )

                    outcome = run_tune(
                        submission,
                        task=t,
                        cohort=c,
                        folds=fold_list,
                        dataset=dataset,
                        encoder=encoder,
                        budget=budget,
                        executor="local" if trusted else None,
                        device=device,
                        force=force,
                        progress=on_trial,
                    )
                for k in fold_list:
                    study = outcome.studies[k]
                    default = study.get("default_value")
                    table.add_row(
                        t,
                        c,
                        str(k),
                        f"{study['value']:.3f}",
                        "-" if default is None else f"{default:.3f}",
                        ", ".join(
                            f"{n}={v:.3g}" if isinstance(v, float) else f"{n}={v}"
                            for n, v in study["config"].items()
                        ),
                    )
                verb = "reused" if not outcome.tuned_folds else "wrote"
                console.print(f"{verb} {outcome.path}", highlight=False)
        console.print(fit(table, "task", "cohort"))
