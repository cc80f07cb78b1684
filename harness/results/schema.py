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
#: Version of the documents this harness writes (1.2: every ``ok`` result records its protocol).
SCHEMA_VERSION = "1.2"
#: Where the schema files lie inside the ``harness`` package.
SCHEMA_FOLDER = ("leaderboard", "schema")


@cache
def load_schema(name: str) -> dict:
    """The parsed JSON Schema ``name`` (:data:`RESULT_SCHEMA` or :data:`LEADERBOARD_SCHEMA`)."""
    text = resources.files("harness").joinpath(*SCHEMA_FOLDER, name).read_text("utf-8")
    return json.loads(text)


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(v) for v in node.values())
    return isinstance(node, list) and any(_has_ref(v) for v in node)


def inline_leaf_definitions(schema: dict) -> dict:
    """``schema`` with every ``{"$ref": "#/$defs/x"}`` whose definition holds no reference
    replaced by a copy of that definition.

    The same constraints, checked without a reference lookup: a result holds tens of thousands
    of numbers that each point at ``#/$defs/number``, and resolving those references is about
    half of the validation time.
    """
    defs = schema.get("$defs") or {}
    leaves = {f"#/$defs/{k}": v for k, v in defs.items() if not _has_ref(v)}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"} and node["$ref"] in leaves:
                return walk(leaves[node["$ref"]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (schema, Resource.from_contents(inline_leaf_definitions(load_schema(schema))))
        for schema in (RESULT_SCHEMA, LEADERBOARD_SCHEMA)
    )
    return Draft202012Validator(inline_leaf_definitions(load_schema(name)), registry=registry)


def schema_errors(document: Any, name: str = RESULT_SCHEMA) -> list[str]:
    """Human-readable schema violations (``path: message``), empty when the document is valid."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(e.absolute_path))
    out = []
    for err in errors:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
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
