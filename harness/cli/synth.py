"""`harness synth`: write a synthetic MIMIC-IV + MIMIC-CXR-JPG dataset and print its summary."""

from __future__ import annotations

from pathlib import Path

import typer

from harness import config
from harness.display import print_summary


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
        from harness.progress import display

        target = out if out is not None else config.default_dataset_dir()
        with display():
            summary = generate(
                target, n_patients=n_patients, seed=seed, image_size=image_size, overwrite=overwrite
            )
        print_summary(summary)
