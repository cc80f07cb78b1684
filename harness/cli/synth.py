"""`harness synth`: write a synthetic MIMIC-IV + MIMIC-CXR-JPG dataset and print its summary."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from harness import config


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Rich table of a ``summarize_dataset`` / ``generate`` summary."""
    console = console or Console()
    table = Table(title=f"dataset {summary.get('path', '')}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in summary["rows"].items():
        table.add_row(name, f"{n:,}")
    table.add_row("chest X-ray images (JPEG)", f"{summary['n_images']:,}")
    for key in ("n_patients", "n_stays"):
        if key in summary:
            table.add_row(key.replace("n_", "").replace("_", " "), f"{summary[key]:,}")
    console.print(table)
    if "seconds" in summary:
        console.print(f"generated in {summary['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Path = typer.Option(
            None, "--out", help="Output directory [default: the default dataset in the cache]."
        ),
        n_patients: int = typer.Option(config.DEFAULT_N_PATIENTS, help="Number of patients."),
        seed: int = typer.Option(config.DEFAULT_SEED, help="Random seed (same seed, same bytes)."),
        image_size: int = typer.Option(
            config.DEFAULT_IMAGE_SIZE, help="Chest X-ray side in pixels (64-4096)."
        ),
        overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    ) -> None:
        """Generate a MIMIC-shaped synthetic dataset with planted ground truth."""
        from harness.data.synthetic import generate

        target = out if out is not None else config.default_dataset_dir()
        summary = generate(
            target, n_patients=n_patients, seed=seed, image_size=image_size, overwrite=overwrite
        )
        print_summary(summary)
