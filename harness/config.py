"""Paths and defaults: the cache root, the task definitions folder, the default dataset and device.

Every location can be overridden by an environment variable so that tests and users can point the
harness elsewhere without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Name of the embedded synthetic dataset that every command uses when no source is given.
DEFAULT_DATASET = "synthetic-default"
#: Size of the default synthetic dataset (kept small so that `make demo` stays quick).
DEFAULT_N_PATIENTS = 2000
DEFAULT_IMAGE_SIZE = 256
DEFAULT_SEED = 0

_PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = _PACKAGE_DIR.parent


def cache_root() -> Path:
    """Root of all generated artefacts (``HARNESS_CACHE``, else ``./cache``)."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / "cache").resolve()


def tasks_dir() -> Path:
    """Folder of the versioned task, cohort and variable definitions (``HARNESS_TASKS``, else
    the package's own ``tasks/``: shipped in the wheel, and ``tasks/`` of a clone links to it)."""
    env = os.environ.get("HARNESS_TASKS")
    return Path(env).expanduser().resolve() if env else _PACKAGE_DIR / "tasks"


def submissions_dir() -> Path:
    """Folder holding the reference submissions (``HARNESS_SUBMISSIONS``)."""
    env = os.environ.get("HARNESS_SUBMISSIONS")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "submissions"


def datasets_dir() -> Path:
    return cache_root() / "datasets"


def default_dataset_dir() -> Path:
    return datasets_dir() / DEFAULT_DATASET


def cohorts_dir() -> Path:
    return cache_root() / "cohorts"


def features_dir() -> Path:
    return cache_root() / "features"


def results_dir() -> Path:
    return cache_root() / "results"


def leaderboard_dir() -> Path:
    return cache_root() / "leaderboard"


def resolve_device(device: str | None = None) -> str:
    """The torch device to run on: ``device`` when given, else CUDA when available, else CPU.

    torch is imported only here, when a device is actually needed, so importing the config stays
    cheap for commands that never touch a model.
    """
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
