"""Shared fixtures: an isolated cache per test session and the tiny synthetic pipeline.

``tiny_pipeline`` (session) runs synth -> cohort build -> encode test_tiny once for the whole
session; it is read-only. A module that writes to a cache (results, leaderboards, rebuilt cohorts,
damaged files) takes ``tiny_pipeline_copy`` instead: its own copy of the built cache, with
``HARNESS_CACHE`` pointing there while the module runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_fixtures import cache_digest, tiny_cache


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("harness-cache")
    old = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default tiny synthetic pipeline, built once per session: 300 patients, 64-pixel
    images, the ``base`` and ``matched`` cohorts, EHR and test_tiny CXR features.

    Never write to it (copy it, or take ``tiny_pipeline_copy``); the session checks at the end
    that no test did."""
    root = tmp_path_factory.mktemp("tiny-pipeline")
    with tiny_cache(root):
        pass
    before = cache_digest(root)
    yield root
    assert cache_digest(root) == before, "a test wrote to the shared tiny_pipeline cache"


@pytest.fixture(scope="module")
def tiny_pipeline_copy(
    tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A private copy of ``tiny_pipeline`` for one module, ``HARNESS_CACHE`` pointing at it until
    the module ends; what the module writes there is seen by no other module."""
    root = tmp_path_factory.mktemp("tiny-pipeline-copy")
    shutil.copytree(tiny_pipeline, root, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root))
        yield root
