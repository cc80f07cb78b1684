"""``result.json``: the document `harness evaluate` writes and the leaderboard reads.

- :mod:`harness.results.schema`: the JSON Schemas and ``SCHEMA_VERSION``;
- :mod:`harness.results.document`: assemble, validate, sign and write a result;
- :mod:`harness.results.migrate`: older schema versions brought up to the current one;
- :mod:`harness.results.reader`: :class:`Result`, the typed view every consumer reads through.

This package sits below both `harness.evaluate` (which writes results) and `harness.leaderboard`
(which reads them): it imports neither.
"""

from __future__ import annotations

from harness.results.reader import (
    PROTOCOL_FIELDS,
    AttributeTable,
    Block,
    CrossCohort,
    Curve,
    Delta,
    Estimate,
    Fairness,
    FusionGain,
    References,
    Result,
)
from harness.results.schema import SCHEMA_VERSION

__all__ = [
    "PROTOCOL_FIELDS",
    "SCHEMA_VERSION",
    "AttributeTable",
    "Block",
    "CrossCohort",
    "Curve",
    "Delta",
    "Estimate",
    "Fairness",
    "FusionGain",
    "References",
    "Result",
]
