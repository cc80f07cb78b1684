"""The JSON Schemas of ``result.json`` and ``leaderboard.json``, and validation against them.

Both schemas ship as package data in ``harness/leaderboard/schema/`` (the leaderboard's schema
embeds results by reference, so they are loaded into one registry). They are read as data of the
``harness`` package: validating a result needs nothing of the leaderboard's code.

``SCHEMA_VERSION`` is the version `harness evaluate` writes; :mod:`harness.results.migrate`
brings older results up to it when they are read.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from harness.errors import InputError

RESULT_SCHEMA = "result.schema.json"
LEADERBOARD_SCHEMA = "leaderboard.schema.json"
#: Version of the documents this harness writes (1.2: every ``ok`` result records its protocol;
#: 1.3: robustness against the references and the modality-reliance table).
SCHEMA_VERSION = "1.3"
#: Where the schema files lie inside the ``harness`` package.
SCHEMA_FOLDER = ("leaderboard", "schema")


@cache
def load_schema(name: str) -> dict:
    """The parsed JSON Schema ``name`` (:data:`RESULT_SCHEMA` or :data:`LEADERBOARD_SCHEMA`)."""
    text = resources.files("harness").joinpath(*SCHEMA_FOLDER, name).read_text("utf-8")
    return json.loads(text)


#: Base URI the schemas are registered under (their ``$id`` values are relative).
SCHEMA_BASE = "json-schema:///"


@cache
def _validator(name: str) -> Any:
    """A compiled Draft 2020-12 validator (jsonschema-rs: a result of 2 MB validates in a few
    milliseconds, against about half a second for the pure-Python jsonschema)."""
    import jsonschema_rs

    registry = jsonschema_rs.Registry(
        [
            (SCHEMA_BASE + schema, load_schema(schema))
            for schema in (RESULT_SCHEMA, LEADERBOARD_SCHEMA)
        ]
    )
    return jsonschema_rs.validator_for(
        load_schema(name), registry=registry, base_uri=SCHEMA_BASE + name
    )


def _builtin(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _plain(document: Any) -> Any:
    """``document`` as the plain JSON values it serialises to."""
    return json.loads(json.dumps(document, default=_builtin))


def schema_errors(document: Any, name: str = RESULT_SCHEMA) -> list[str]:
    """Human-readable schema violations (``path: message``), empty when the document is valid."""
    validator = _validator(name)
    try:
        return _errors(validator, document)
    except ValueError:  # numpy scalars and other float/int subclasses: plain JSON values first
        return _errors(validator, _plain(document))


def _errors(validator: Any, document: Any) -> list[str]:
    if validator.is_valid(document):
        return []
    errors = sorted(
        validator.iter_errors(document), key=lambda e: [str(p) for p in e.instance_path]
    )
    out = []
    for err in errors:
        where = "/".join(str(p) for p in err.instance_path) or "(top level)"
        message = err.message if len(err.message) < 300 else err.message[:300] + "..."
        out.append(f"{where}: {message}")
    return out


def validate(document: Any, name: str = RESULT_SCHEMA, *, path: str | Path | None = None) -> None:
    """Raise :class:`InputError` naming the first violations when ``document`` is invalid."""
    errors = schema_errors(document, name)
    if errors:
        shown = "\n  ".join(errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise InputError(
            f"does not match {name} (schema_version {SCHEMA_VERSION}):\n  {shown}{more}",
            path=path,
            fix="regenerate it with `harness evaluate`; results hold aggregates only "
            "(no stay ids, no per-patient arrays)",
        )
