"""Read a built cohort (stays, manifest, lazily the hourly series) by name or by directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import config
from harness.errors import InputError

_BUILD_FIX = "run `harness cohort build` (or pass the directory of a build)"


@dataclass
class Cohort:
    """A built cohort: its stays table, manifest and fingerprint."""

    name: str
    dataset: str
    path: Path
    stays: pd.DataFrame
    manifest: dict[str, Any]
    fingerprint: str

    def hourly(self) -> pd.DataFrame:
        """The long-format 48-hour series (stay_id, hour, variable, value)."""
        return pd.read_parquet(self.path / "hourly.parquet")

    @property
    def variables(self) -> list[str]:
        """The canonical ordered feature list of the hourly series."""
        return list(self.manifest["variables"])

    @property
    def cxr_root(self) -> Path | None:
        """The MIMIC-CXR-JPG root that ``cxr_path`` is relative to, if the build had one."""
        root = self.manifest.get("source", {}).get("mimic_cxr")
        return Path(root) if root else None


def resolve_cohort_dir(
    cohort: str = "base", dataset: str | None = None, path: Path | None = None
) -> Path:
    """The directory of a build: ``path`` itself, or the newest build of dataset/cohort."""
    if path is not None:
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise InputError("not a cohort build (no manifest.json)", path=path, fix=_BUILD_FIX)
        return path
    dataset = dataset or config.DEFAULT_DATASET
    pointer = config.cohorts_dir() / dataset / f"{cohort}.latest"
    if not pointer.is_file():
        raise InputError(
            f"cohort {cohort!r} of dataset {dataset!r} is not built", path=pointer, fix=_BUILD_FIX
        )
    target = pointer.parent / pointer.read_text().strip()
    if not (target / "manifest.json").is_file():
        raise InputError(
            f"the build named by {pointer.name} is missing or incomplete",
            path=target,
            fix=_BUILD_FIX,
        )
    return target


def load_cohort(
    cohort: str = "base", dataset: str | None = None, path: Path | None = None
) -> Cohort:
    """Load a built cohort by name (newest build of ``dataset``) or from its directory."""
    directory = resolve_cohort_dir(cohort, dataset, path)
    manifest = json.loads((directory / "manifest.json").read_text())
    stays_path = directory / "stays.parquet"
    if not stays_path.is_file():
        raise InputError(
            "incomplete cohort build (no stays.parquet)", path=directory, fix=_BUILD_FIX
        )
    return Cohort(
        name=manifest.get("cohort", cohort),
        dataset=manifest.get("dataset", dataset or ""),
        path=directory,
        stays=pd.read_parquet(stays_path),
        manifest=manifest,
        fingerprint=manifest["fingerprint"],
    )
