"""Bring a ``result.json`` of an older schema version up to the current one, in memory.

Results are signed as written, so a file is never rewritten: the leaderboard verifies the
signature of the file as it is, then reads it through :func:`migrate`. Versions:

- ``1.0`` (or no ``schema_version``): unsigned; blocks may lack ``references``,
  ``main_resamples``, ``fusion_gain_unimodal`` and the fairness gap tests (readers treat each as
  absent).
- ``1.1``: signed; ``provenance.protocol`` only in results written after protocols were
  recorded.
- ``1.2``: every ``ok`` result records ``provenance.protocol``.
- ``1.3``: robustness curves carry per-rate CIs, the area above chance and the paired
  comparison with the references (``versus``, ``helps_up_to``); blocks carry the
  modality-reliance table (``reliance``) when the ``ehr_missing`` scenario was run. Older
  results have neither; readers treat them as absent (re-evaluating fills them in).

A result without a recorded protocol was evaluated under the only protocol the harness then had:
the ``honest`` profile with the folds, seeds and epoch cap of its provenance, checkpoints
selected on each task's headline metric and thresholds chosen on validation; its bootstrap size
is read from each block (left null here). Newer minor versions are read as they are (fields this
harness does not know are ignored); another major version is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from harness.errors import InputError
from harness.results.schema import SCHEMA_VERSION

#: Version of a result that names none (written before versions were recorded).
UNVERSIONED = "1.0"
#: Protocol profile and threshold rule of results written before protocols were recorded.
LEGACY_PROFILE = "honest"
LEGACY_THRESHOLD = "youden_j_on_validation"


def parse_version(text: Any) -> tuple[int, int]:
    """``"1.2"`` as ``(1, 2)``; :class:`InputError` for anything else."""
    try:
        major, minor = str(text).split(".")
        return int(major), int(minor)
    except ValueError:
        raise InputError(
            f"schema_version {text!r} is not of the form <major>.<minor>",
            fix="regenerate the result with `harness evaluate`",
        ) from None


def version_of(doc: Mapping[str, Any]) -> str:
    """The schema version a document was written with (``1.0`` when it names none)."""
    return str(doc.get("schema_version") or UNVERSIONED)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def legacy_selection(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint-selection metric per task of a result that did not record it: the headline
    metric of the task's blocks (selection and headline were one metric then)."""
    return {
        task: _mapping(block).get("main_metric")
        for task, by_cohort in _mapping(doc.get("tasks")).items()
        for block in _mapping(by_cohort).values()
    }


def legacy_protocol(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol of a result written before protocols were recorded (see the module doc)."""
    prov = _mapping(doc.get("provenance"))
    return {
        "profile": LEGACY_PROFILE,
        "folds": list(prov.get("folds") or []),
        "seeds": list(prov.get("seeds") or []),
        "max_epochs": prov.get("max_epochs"),
        "n_resamples": None,
        "selection": legacy_selection(doc),
        "threshold": LEGACY_THRESHOLD,
    }


def _signed(doc: Mapping[str, Any]) -> dict[str, Any]:
    """1.0 -> 1.1: signatures were added; nothing in the content changed."""
    return {**doc, "schema_version": "1.1"}


def _record_protocol(doc: Mapping[str, Any]) -> dict[str, Any]:
    """1.1 -> 1.2: ``provenance.protocol`` recorded (inferred where it is absent)."""
    prov = dict(_mapping(doc.get("provenance")))
    if not isinstance(prov.get("protocol"), Mapping):
        prov["protocol"] = legacy_protocol(doc)
    return {**doc, "schema_version": "1.2", "provenance": prov}


def _reliance(doc: Mapping[str, Any]) -> dict[str, Any]:
    """1.2 -> 1.3: only fields were added (absent in the older document)."""
    return {**doc, "schema_version": "1.3"}


#: One step per version: the function that turns a document of that version into the next.
STEPS: dict[tuple[int, int], Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    (1, 0): _signed,
    (1, 1): _record_protocol,
    (1, 2): _reliance,
}


def migrate(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """``doc`` at the current schema version: the same object when it already is (or is newer
    within major version 1), else a migrated copy (the blocks themselves are shared)."""
    version = parse_version(version_of(doc))
    current = parse_version(SCHEMA_VERSION)
    if version[0] != current[0]:
        raise InputError(
            f"result has schema_version {version_of(doc)}; this harness reads {current[0]}.x",
            fix="read it with the harness version that wrote it, or re-run `harness evaluate`",
        )
    while version < current:
        step = STEPS.get(version)
        if step is None:
            raise InputError(f"no migration from schema_version {version[0]}.{version[1]}")
        doc = step(doc)
        version = parse_version(version_of(doc))
    return doc
