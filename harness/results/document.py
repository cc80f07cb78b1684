"""Write one submission's ``result.json``: assemble, validate, sign, write atomically.

`harness evaluate` scores every (task, cohort) into a block
(:func:`harness.evaluate.score.score_predictions`); :func:`build_result` assembles the blocks
with the cohorts' fingerprints and the :func:`provenance` record, and :func:`write_result`
validates against ``result.schema.json``, signs (:mod:`harness.signing`) and writes the file
atomically. A failed evaluation is recorded by :func:`failed_result`: its message sanitized
(:func:`harness.sanitize.sanitize_message`) and its category one of
:data:`~harness.sanitize.ERROR_CATEGORIES`. Nothing per stay is ever written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import InputError
from harness.io import atomic_write_text
from harness.results.schema import RESULT_SCHEMA, SCHEMA_VERSION, validate
from harness.sanitize import error_category, sanitize_message
from harness.signing import SIGNATURE_FIELD, sign, signing_key

log = logging.getLogger(__name__)

#: Packages whose versions every result records (and the leaderboard publishes).
PROVENANCE_PACKAGES = (
    "numpy", "pandas", "scikit-learn", "fairlearn", "torch", "zarr", "open-clip-torch", "timm",
)  # fmt: skip


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _hardware() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.system(),
    }


def provenance(**extra: Any) -> dict[str, Any]:
    """Harness version and commit, package versions, hardware and creation time (+ ``extra``)."""
    record: dict[str, Any] = {
        "harness_version": __version__,
        "git_commit": _git_commit(),
        "package_versions": _package_versions(),
        "hardware": _hardware(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def build_result(
    name: str,
    version: str,
    dataset: str,
    *,
    cohorts: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, Mapping[str, dict]],
    provenance_record: dict[str, Any] | None = None,
    status: str = "ok",
    error: str | None = None,
    category: str | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Assemble and validate a result document (``cohorts``: {cohort: {fingerprint, ...}}).

    ``check=False`` leaves validation to :func:`write_result` (which always validates), for a
    caller that writes the document at once: a large result takes a second to validate.

    A failed result's ``error`` is sanitized and carries a ``category`` (one of
    ``ERROR_CATEGORIES``; default ``error``). An ``ok`` result must record its protocol
    (``provenance.protocol``, schema 1.2).
    """
    if status == "failed":
        error = sanitize_message(error or "")
        category = error_category(category or "error")
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "dataset": dataset,
        "status": status,
        "error": error,
        "cohorts": {k: dict(v) for k, v in cohorts.items()},
        "tasks": {t: dict(c) for t, c in tasks.items()},
        "provenance": provenance_record or provenance(),
    }
    if category is not None:
        result["category"] = error_category(category)
    if check:
        validate(result, RESULT_SCHEMA)
    return result


def failed_result(
    name: str, version: str, dataset: str, error: str, *, category: str = "error", **prov: Any
) -> dict[str, Any]:
    """A result that records a failed evaluation (listed apart on the leaderboard).

    ``error`` is sanitized here (no digit runs over 4, no absolute paths, no control characters,
    at most 300 characters); ``category`` is one of ``ERROR_CATEGORIES`` (unknown words: error).
    """
    return build_result(
        name, version, dataset, cohorts={}, tasks={}, provenance_record=provenance(**prov),
        status="failed", error=error, category=category,
    )  # fmt: skip


def _finite_copy(result: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """A JSON round-trip copy of ``result``; NaN or infinity is refused."""
    try:
        return json.loads(json.dumps(result, default=str, allow_nan=False))
    except ValueError as exc:
        raise InputError(
            f"result holds a non-finite number ({exc})",
            path=path,
            fix="summaries record undefined values as null, never NaN or infinity",
        ) from None


def write_result(result: Mapping[str, Any], path: str | Path, *, key: bytes | None = None) -> Path:
    """Validate, sign and write atomically: an invalid result never replaces a valid one.

    The written file carries ``signature``: HMAC-SHA256 of its canonical JSON with the cache's
    key (:mod:`harness.signing`; ``key`` overrides it). NaN or infinity is refused (JSON is
    written with ``allow_nan=False``); a failed result's message is sanitized again.
    """
    path = Path(path)
    doc = _finite_copy(result, path)
    doc.pop(SIGNATURE_FIELD, None)
    if doc.get("status") == "failed":
        doc["error"] = sanitize_message(doc.get("error") or "")
        doc["category"] = error_category(doc.get("category"))
    validate(doc, RESULT_SCHEMA, path=path)
    secret = key if key is not None else signing_key()
    if secret is None:  # signing_key creates the key when absent: only a broken cache gets here
        raise InputError("no result-signing key to sign with", path=path)
    doc[SIGNATURE_FIELD] = sign(doc, secret)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    log.info("wrote %s", path)
    return path
