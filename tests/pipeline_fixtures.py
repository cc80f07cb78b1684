"""A tiny store-built cache (synth -> cohort build -> encode test_tiny) for end-to-end tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli.main import main


@contextlib.contextmanager
def tiny_cache(root: Path, *, n_patients: int = 300) -> Iterator[Path]:
    """Build the default synthetic dataset, its cohorts and features under ``root``; while the
    context is open ``HARNESS_CACHE`` points there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root))
        assert main(["synth", "--n-patients", str(n_patients), "--image-size", "64"]) == 0
        assert main(["cohort", "build"]) == 0
        assert main(["encode", "-e", "test_tiny"]) == 0
        yield root
