"""A tiny store-built cache (synth -> cohort build -> encode test_tiny) for end-to-end tests.

Tests take the session's build through the ``tiny_pipeline`` / ``tiny_pipeline_copy`` fixtures
of ``conftest.py``; :func:`tiny_cache` is what builds it."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import config
from harness.cli.main import main

N_PATIENTS, IMAGE_SIZE = 300, 64


@contextlib.contextmanager
def tiny_cache(root: Path, *, n_patients: int = N_PATIENTS) -> Iterator[Path]:
    """Build the default synthetic dataset, its cohorts and features under ``root``; while the
    context is open ``HARNESS_CACHE`` points there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root))
        args = ["synth", "--n-patients", str(n_patients), "--image-size", str(IMAGE_SIZE)]
        assert main(args) == 0
        assert main(["cohort", "build"]) == 0
        assert main(["encode", "-e", "test_tiny"]) == 0
        assert main(["audit", "--encoder", "test_tiny"]) == 0
        yield root


def copy_dataset(built: Path, cache: Path) -> Path:
    """Copy only the generated default dataset of the cache ``built`` into the cache ``cache``
    (no cohorts, no features), as `harness synth` would have left it; returns its folder."""
    rel = Path("datasets", config.DEFAULT_DATASET)  # config.default_dataset_dir() of a cache
    shutil.copytree(built / rel, cache / rel)
    return cache / rel


def cache_digest(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` (lock files aside: readers may
    create them)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }
