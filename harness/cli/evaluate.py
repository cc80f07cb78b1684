"""`harness evaluate`: train and score a submission under the harness protocol."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _dropout_rates(text: str) -> list[float]:
    from harness.errors import UsageError

    rates = []
    for item in _split([text]) or ():
        try:
            rate = float(item)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate < 1.0:
            raise UsageError(
                f"--train-cxr-dropout: {item!r} is not a rate in [0, 1); give e.g. 0.2,0.4,0.6"
            )
        rates.append(rate)
    return rates


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        submissions: list[Path] = typer.Argument(..., help="Submission folder(s)."),
        quick: bool = typer.Option(False, "--quick", help="One fold, one seed, capped epochs."),
        task: list[str] = typer.Option(None, "--task", "-t", help="Task(s); default: all."),
        cohort: list[str] = typer.Option(None, "--cohort", "-c", help="Cohort(s): base, matched."),
        folds: str = typer.Option(None, "--folds", help="Comma-separated test folds, e.g. 1,2."),
        seeds: str = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
        dataset: str = typer.Option(None, "--dataset", help="Dataset of the built cohorts."),
        encoder: str = typer.Option("default", "--encoder", help="CXR encoder of the cache."),
        device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
        max_epochs: int = typer.Option(None, "--max-epochs", help="Cap training epochs."),
        scenario: list[str] = typer.Option(None, "--scenario", help="Robustness scenario(s)."),
        no_cross_cohort: bool = typer.Option(
            False,
            "--no-cross-cohort",
            help="Skip the cross-cohort scores (each fold model predicting the other cohort).",
        ),
        n_resamples: int = typer.Option(
            None, "--n-resamples", min=10, help="Bootstrap resamples (default 1000)."
        ),
        train_cxr_dropout: str = typer.Option(
            None,
            "--train-cxr-dropout",
            help="Train-time CXR dropout sweep, e.g. 0.2,0.4,0.6: one entry per rate, "
            "named <name>.cxrdrop<rate>.",
        ),
        trusted: bool = typer.Option(
            False,
            "--trusted",
            help="Run the model in this process, with the harness's rights (your own code "
            "only). Default: a bubblewrap sandbox that sees only the contract's inputs.",
        ),
        replace_entry: bool = typer.Option(
            False, "--replace", help="Take over an entry name another folder has used."
        ),
        protocol: str = typer.Option(
            "honest",
            "--protocol",
            help="Protocol profile: honest (default) or carebench (selection on validation "
            "PRAUC/accuracy, threshold 0.5, seeds 42,123,1234, unweighted kappa, ICU mortality; "
            "entries named <name>.carebench, ranked apart).",
        ),
        tuned: bool = typer.Option(
            False,
            "--tuned",
            help="Train each fold with the configuration `harness tune` chose on that fold's "
            "validation split; the entry is <name>.tuned, ranked apart from default settings.",
        ),
        executor: str = typer.Option(
            "local",
            "--executor",
            help="Where units run: local (this machine, one after another) or ray (each unit a "
            "Ray task; pip install -e '.[ray]'). The results are the same.",
        ),
        ray_address: str | None = typer.Option(
            None,
            "--ray-address",
            help="Ray cluster for --executor ray: auto (the one `ray start` runs here) or "
            "ray://host:10001; default HARNESS_RAY_ADDRESS, else a local Ray instance.",
        ),
        allow_leaks: bool = typer.Option(
            False,
            "--allow-leaks",
            help="Evaluate even when a cohort's leak audit (`harness audit`) failed; the result "
            "and the leaderboard record it.",
        ),
    ) -> None:
        """Train per fold x seed, predict every scenario, write <dataset>/<name>/result.json."""
        from rich.console import Console
        from rich.table import Table

        from harness.evaluate.run import EvalSettings, evaluate
        from harness.progress import display
        from harness.tables import fit

        overrides: dict[str, Any] = {
            "tasks": _split(task),
            "cohorts": _split(cohort),
            "folds": tuple(int(x) for x in _split([folds]) or ()) if folds else None,
            "seeds": tuple(int(x) for x in _split([seeds]) or ()) if seeds else None,
            "dataset": dataset,
            "encoder": encoder,
            "device": device,
            "max_epochs": max_epochs,
            "scenarios": _split(scenario),
            "cross_cohort": False if no_cross_cohort else None,
            "n_resamples": n_resamples,
            "executor": "local" if trusted else None,
            "scheduler": executor,
            "ray_address": ray_address,
            "replace": True if replace_entry else None,
            "protocol": protocol,
            "tuned": True if tuned else None,
            "allow_leaks": True if allow_leaks else None,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        settings = EvalSettings.quick(**overrides) if quick else EvalSettings(**overrides)
        variants = [settings]
        if train_cxr_dropout:
            rates = _dropout_rates(train_cxr_dropout)
            variants = [replace(settings, train_cxr_dropout=r) for r in rates]
        console = Console()
        from harness.models.submission import load_submission

        for path in submissions:  # a missing or malformed folder fails before any bar is drawn
            load_submission(path)
        if settings.scheduler == "ray" and len(submissions) * len(variants) > 1:
            from harness.evaluate.cluster import prefetch  # the submissions share the cluster

            for v in variants:
                prefetch(submissions, v)
        for path, settings in ((p, v) for p in submissions for v in variants):
            with display():  # units, each unit's epochs, scoring: on stderr, on a terminal
                outcome = evaluate(path, settings)
            table = Table(title=f"{outcome.name}: {outcome.units_run} units trained, "
                          f"{outcome.units_reused} reused, {outcome.seconds:.1f} s")  # fmt: skip
            cols = ("task", "cohort", "metric", "value", "95% CI", "EHR ref.", "Δ vs EHR ref.", "p")
            for col in cols:
                table.add_column(col)
            for row in outcome.headline:
                fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
                table.add_row(
                    row["task"], row["cohort"], row["metric"], fmt(row["value"]),
                    f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]",
                    row["ehr_reference"] or "-", fmt(row["delta_vs_ehr"]), fmt(row["p_value"]),
                )  # fmt: skip
            console.print(fit(table, "task", "cohort", "EHR ref."))
            console.print(f"wrote {outcome.result_path}")
