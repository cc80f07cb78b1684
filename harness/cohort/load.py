"""Read a built cohort (stays, manifest, lazily the hourly series) by name or by directory.

Loading verifies the build: the fingerprint parts of stays.parquet (stay ids, folds, labels, chosen
images) are recomputed and compared with the manifest, and the sha256 of every data file recorded
in the manifest's ``files`` field at build time is checked. A mismatch raises :class:`InputError`
naming the file and the command that rebuilds it. Builds made before ``files`` existed get the
fingerprint check only, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import config
from harness.errors import InputError

log = logging.getLogger(__name__)

_BUILD_FIX = "run `harness cohort build` (or pass the directory of a build)"
#: Data files of a build whose sha256 the manifest records (``files``).
DATA_FILES = ("stays.parquet", "hourly.parquet", "splits.csv")
#: Label columns of the builds made before manifests recorded ``label_columns`` (a fixed past
#: layout, read only to verify those builds; newer builds list their own columns).
LEGACY_OUTCOME_LABELS = ("mortality_in_hospital", "mortality_icu", "los_days", "los_class")
_warned_unverified: set[str] = set()


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
        import difflib

        built = sorted(q.name.removesuffix(".latest") for q in pointer.parent.glob("*.latest"))
        close = difflib.get_close_matches(cohort, built, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        have = f"; built: {', '.join(built)}" if built else ""
        raise InputError(
            f"cohort {cohort!r} of dataset {dataset!r} is not built{hint}{have}",
            path=pointer,
            fix=_BUILD_FIX,
        )
    target = pointer.parent / pointer.read_text().strip()
    if not (target / "manifest.json").is_file():
        raise InputError(
            f"the build named by {pointer.name} is missing or incomplete",
            path=target,
            fix=_BUILD_FIX,
        )
    return target


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def rebuild_command(manifest: dict[str, Any] | None) -> str:
    """The `harness cohort build` command that rebuilds the build described by ``manifest``
    (the source's options come from its registration, :mod:`harness.cohort.datasources`)."""
    from harness.cohort.datasources import DEFAULT_SOURCE, source_for_kind

    manifest = manifest or {}
    source = manifest.get("source") or {}
    dataset = manifest.get("dataset")
    kind = source.get("kind")
    if kind == DEFAULT_SOURCE and dataset == config.DEFAULT_DATASET:
        return "harness cohort build"
    registered = source_for_kind(kind)
    args = registered.rebuild_args(source) if registered is not None else None
    if not args:
        return "harness cohort build (with the source options of the original build)"
    if dataset:
        args += ["--dataset", dataset]
    return "harness cohort build " + " ".join(args)


def _rebuild_fix(manifest: dict[str, Any] | None) -> str:
    return (
        f"rebuild it with `{rebuild_command(manifest)}` (a damaged or modified build is "
        "detected and rewritten)"
    )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest.json of a build.

    Raises:
        InputError: the file is missing, truncated or not a JSON object.
    """
    path = Path(directory) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            "not a cohort build (no manifest.json)", path=path, fix=_BUILD_FIX
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"unreadable manifest (truncated or damaged: {exc})",
            path=path,
            fix=_rebuild_fix(None),
        ) from None
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise InputError(
            "not a cohort manifest (no fingerprint field)", path=path, fix=_rebuild_fix(None)
        )
    return data


def manifest_label_columns(manifest: dict[str, Any], stays: pd.DataFrame) -> list[str]:
    """The label columns the build's fingerprint covers, in order.

    Recorded as ``label_columns`` since file checksums exist; older manifests list the binary
    labels (outcomes then phenotypes) and ``los_class`` in ``label_prevalence``.
    """
    return label_column_candidates(manifest, stays)[0]


def label_column_candidates(manifest: dict[str, Any], stays: pd.DataFrame) -> list[list[str]]:
    """The possible fingerprinted label columns of a build, most likely first.

    A manifest that records ``label_columns`` has exactly those. One that does not (a build made
    before they were recorded) has the legacy layout: the outcome columns of
    :data:`LEGACY_OUTCOME_LABELS` then the other labels of ``label_prevalence``; the same columns
    in the order stays.parquet holds them are the second candidate.
    """
    if "label_columns" in manifest:
        return [list(manifest["label_columns"])]
    prevalence = list((manifest.get("label_prevalence") or {}).keys())
    outcomes = [
        c
        for c in LEGACY_OUTCOME_LABELS
        if c in stays.columns and c not in manifest.get("labels_unavailable", [])
    ]
    legacy = outcomes + [c for c in prevalence if c not in LEGACY_OUTCOME_LABELS]
    in_file = [c for c in stays.columns if c in set(legacy)]
    return [legacy] if in_file == legacy else [legacy, in_file]


def verify_build(directory: Path, manifest: dict[str, Any], stays: pd.DataFrame) -> None:
    """Check a build's files against its manifest (see the module docstring).

    Raises:
        InputError: naming the file that does not match and the command that rebuilds it.
    """
    from harness.cohort.fingerprint import combine, fingerprint_parts

    directory = Path(directory)
    fix = _rebuild_fix(manifest)
    recorded = manifest.get("fingerprint_parts") or {}
    stays_path = directory / "stays.parquet"
    try:
        for label_cols in label_column_candidates(manifest, stays):
            parts = fingerprint_parts(
                stays, label_cols, recorded.get("hourly", ""), manifest.get("spec_hashes") or {}
            )
            if parts["labels"] == recorded.get("labels"):
                break
    except KeyError as exc:
        raise InputError(
            f"a column the fingerprint covers is missing ({exc})", path=stays_path, fix=fix
        ) from None
    differing = [k for k in ("stays", "folds", "labels", "cxr") if parts[k] != recorded.get(k)]
    if differing:
        raise InputError(
            f"does not match the cohort's fingerprint: the {', '.join(differing)} part(s) differ "
            "from what was built (the file was modified after the build)",
            path=stays_path,
            fix=fix,
        )
    fingerprint = str(manifest.get("fingerprint"))
    name = directory.name
    cohort = str(manifest.get("cohort", ""))
    named = re.fullmatch(rf"{re.escape(cohort)}-([0-9a-f]{{12}})", name)
    if combine(recorded) != fingerprint or (named and named.group(1) != fingerprint[:12]):
        raise InputError(
            "the fingerprint does not match its parts or the directory name (the manifest was "
            "modified after the build)",
            path=directory / "manifest.json",
            fix=fix,
        )
    files = manifest.get("files")
    if files is None:
        if str(directory) not in _warned_unverified:
            _warned_unverified.add(str(directory))
            log.warning(
                "%s was built before file checksums existed: only its fingerprint was verified "
                "(hourly.parquet and splits.csv are not); `%s --overwrite` records them",
                directory,
                rebuild_command(manifest),
            )
        return
    for fname, digest in files.items():
        path = directory / fname
        if not path.is_file():
            raise InputError("file of the build is missing", path=path, fix=fix)
        if file_sha256(path) != digest:
            raise InputError(
                "file differs from the one written by the build (sha256 mismatch: modified or "
                "damaged after the build)",
                path=path,
                fix=fix,
            )


def load_cohort(
    cohort: str = "base", dataset: str | None = None, path: Path | None = None
) -> Cohort:
    """Load a built cohort by name (newest build of ``dataset``) or from its directory.

    The build is verified first (:func:`verify_build`).

    Raises:
        InputError: the cohort is not built, or a file of the build is missing, damaged or was
            modified after the build.
    """
    directory = resolve_cohort_dir(cohort, dataset, path)
    manifest = read_manifest(directory)
    stays_path = directory / "stays.parquet"
    if not stays_path.is_file():
        raise InputError(
            "incomplete cohort build (no stays.parquet)", path=directory, fix=_rebuild_fix(manifest)
        )
    try:
        stays = pd.read_parquet(stays_path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(
            f"unreadable stays table ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            path=stays_path,
            fix=_rebuild_fix(manifest),
        ) from None
    verify_build(directory, manifest, stays)
    return Cohort(
        name=manifest.get("cohort", cohort),
        dataset=manifest.get("dataset", dataset or ""),
        path=directory,
        stays=stays,
        manifest=manifest,
        fingerprint=manifest["fingerprint"],
    )


def build_problem(directory: Path) -> str | None:
    """Why the build in ``directory`` cannot be reused as it is (None: intact and complete)."""
    try:
        load_cohort(path=directory)
    except InputError as exc:
        return str(exc).splitlines()[0]
    if "files" not in read_manifest(directory):
        return "built before file checksums existed"
    return None
