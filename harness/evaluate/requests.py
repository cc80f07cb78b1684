"""Prediction requests of a unit: every scenario row a model has not already answered, asked at
once.

A unit predicts its validation and clean test stays, each scenario at each rate, and the other
cohorts' test stays: about 40 sets of the same test stays. Most of those rows are the clean
row again (a scenario at rate 0.25 leaves three stays in four as they were; an image dropped
from an EHR-only model's inputs changes nothing it sees), and a stay degraded at rate 0.25 is
degraded the same way at 0.5 (the scenarios' affected sets are nested). Predictions are per
stay (a model's answer for one row does not depend on the other rows of its batch: the
harness already cuts a set into batches of its choosing), so a row identical, input for input,
to one already asked takes that row's answer. Only the rows that differ both from the clean
test row and from the same stay at the scenario's previous rate are sent, gathered into a few
large requests: far fewer rows through the model and one round trip to a sandbox instead of
forty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from harness.models.data import FeatureSet
    from harness.models.protocol import Tensors

#: Most rows in one request (larger sets are sent in several, bounding a message's size).
MAX_REQUEST_ROWS = 8192
#: Input tensors compared row by row (``stay_id`` too: a row is one stay's inputs).
ROW_FIELDS = (
    "ehr", "ehr_mask", "ehr_summary", "cxr", "has_cxr", "cxr_time_hours", "demographics",
    "cxr_pixels", "stay_id",
)  # fmt: skip


def _field_differs(a: torch.Tensor | None, b: torch.Tensor | None, n: int) -> np.ndarray:
    if a is None and b is None:
        return np.zeros(n, dtype=bool)
    if a is None or b is None or a.shape != b.shape:
        return np.ones(n, dtype=bool)
    ne = a != b
    if a.is_floating_point():  # NaN equals NaN here: the same input either way
        ne &= ~(a.isnan() & b.isnan())
    return ne.reshape(n, -1).any(dim=1).numpy()


def rows_differ(a: Tensors, b: Tensors) -> np.ndarray:
    """Per row, whether any input of ``a`` differs from the same row of ``b`` (same stays)."""
    n = len(a)
    if len(b) != n:
        raise ValueError(f"row counts differ: {n} vs {len(b)}")
    out = np.zeros(n, dtype=bool)
    for name in ROW_FIELDS:
        out |= _field_differs(getattr(a, name), getattr(b, name), n)
    return out


def take_rows(t: Tensors, rows: np.ndarray) -> Tensors:
    """Rows ``rows`` (positions) of ``t``."""
    import torch

    sel = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    changes: dict[str, Any] = {
        name: getattr(t, name)[sel] for name in ROW_FIELDS if getattr(t, name) is not None
    }
    y = None if t.y is None else t.y[sel]
    return replace(t, **changes, y=y, index=np.asarray(t.index)[np.asarray(rows, dtype=np.int64)])


def concat_rows(parts: Sequence[Tensors]) -> Tensors:
    """The rows of ``parts`` one after another (inputs only)."""
    import torch

    first = parts[0]
    changes: dict[str, Any] = {
        name: torch.cat([getattr(p, name) for p in parts])
        for name in ROW_FIELDS
        if getattr(first, name) is not None
    }
    index = np.concatenate([np.asarray(p.index) for p in parts])
    return replace(first, **changes, y=None, index=index)


#: Raw inputs of a FeatureSet behind each tensor a declared input opens.
RAW_FIELDS = {
    "ehr": ("ehr_values", "ehr_observed"),
    "ehr_mask": ("ehr_observed",),
    "ehr_summary": ("ehr_summary",),
    "cxr": ("cxr", "has_cxr"),
    "has_cxr": ("has_cxr",),
    "cxr_time_hours": ("cxr_time_hours", "has_cxr"),
}


def _raw_differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ne = a != b
    if np.issubdtype(a.dtype, np.floating):
        ne &= ~(np.isnan(a) & np.isnan(b))
    return ne.reshape(len(a), -1).any(axis=1)


def changed_stays(
    clean: FeatureSet, degraded: FeatureSet, idx: np.ndarray, inputs: Sequence[str] | None = None
) -> np.ndarray:
    """Per row of ``idx``, whether ``degraded`` holds other raw inputs than ``clean`` among
    those the declared ``inputs`` read (all for None); every row when the demographics or the
    pixels the inputs read were replaced."""
    from harness.models.data import INPUT_FIELDS

    opened = {n for i in (inputs or INPUT_FIELDS) for n in INPUT_FIELDS.get(i, ())}
    if ("demographics" in opened and degraded.demographics is not clean.demographics) or (
        "cxr_pixels" in opened and degraded.cxr_pixels is not clean.cxr_pixels
    ):
        return np.ones(len(idx), dtype=bool)
    raw = sorted({r for tensor in opened for r in RAW_FIELDS.get(tensor, ())})
    out = np.zeros(len(idx), dtype=bool)
    for name in raw:
        a, b = getattr(clean, name), getattr(degraded, name)
        if a is not b:
            out |= _raw_differs(np.asarray(a)[idx], np.asarray(b)[idx])
    return out


def scatter_rows(t: Tensors, rows: np.ndarray, part: Tensors) -> Tensors:
    """``t`` with its rows ``rows`` replaced by the rows of ``part`` (in order)."""
    import torch

    sel = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    changes: dict[str, Any] = {}
    for name in ROW_FIELDS:
        whole = getattr(t, name)
        if whole is None:
            continue
        whole = whole.clone()
        whole[sel] = getattr(part, name)
        changes[name] = whole
    return replace(t, **changes)


def predict_all(predict: Callable[[Tensors], np.ndarray], parts: Sequence[Tensors]) -> list:
    """``predict`` over every row of ``parts``, in requests of at most :data:`MAX_REQUEST_ROWS`;
    the answers split back per part."""
    sizes = [len(p) for p in parts]
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return [np.zeros((0,)) for _ in parts]
    whole = concat_rows(nonempty)  # empty parts give (0, ...) slices of the answer below
    n = len(whole)
    answers = [
        predict(take_rows(whole, np.arange(start, min(start + MAX_REQUEST_ROWS, n))))
        for start in range(0, n, MAX_REQUEST_ROWS)
    ]
    p = np.concatenate(answers)
    out, start = [], 0
    for size in sizes:
        out.append(p[start : start + size])
        start += size
    return out


@dataclass
class Variant:
    """One degraded copy of the test rows: which rows differ from the clean test rows and from
    the previous variant of its chain, and which of those must be asked."""

    changed: np.ndarray  # differs from clean test
    same_as_previous: np.ndarray  # changed, but equal to the previous variant's row
    ask: Tensors  # the rows to ask: changed and not equal to the previous variant
    label: Any = None  # what the variant is, e.g. (scenario, rate)


class VariantChains:
    """Scenario variants of the clean test rows, each compared with the clean rows and with the
    previous variant of its chain (the same scenario at the previous rate)."""

    def __init__(self, clean: Tensors):
        self.clean = clean
        self.variants: list[Variant] = []
        self.chains: list[list[int]] = []
        self._previous: Tensors | None = None

    def start_chain(self) -> None:
        self.chains.append([])
        self._previous = None

    def add(
        self, degraded: Tensors, candidates: np.ndarray | None = None, label: Any = None
    ) -> None:
        """Add the next variant of the current chain; ``candidates``: the only rows that may
        differ from the clean rows (all when None)."""
        n = len(self.clean)
        rows = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
        changed = np.zeros(n, dtype=bool)
        same = np.zeros(n, dtype=bool)
        if rows.size:
            here = take_rows(degraded, rows)
            changed[rows] = rows_differ(here, take_rows(self.clean, rows))
            if self._previous is not None:
                same[rows] = changed[rows] & ~rows_differ(here, take_rows(self._previous, rows))
        ask = take_rows(degraded, np.flatnonzero(changed & ~same))
        self.variants.append(Variant(changed, same, ask, label))
        self.chains[-1].append(len(self.variants) - 1)
        self._previous = degraded

    def requests(self) -> list[Tensors]:
        return [v.ask for v in self.variants]

    def answers(self, p_clean: np.ndarray, asked: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each variant's predictions for every test row, from the clean predictions and the
        answers to :meth:`requests` (in their order)."""
        out: list[np.ndarray | None] = [None] * len(self.variants)
        for chain in self.chains:
            previous = p_clean
            for i in chain:
                v = self.variants[i]
                p = p_clean.copy()
                p[v.same_as_previous] = previous[v.same_as_previous]
                p[v.changed & ~v.same_as_previous] = asked[i]
                out[i] = previous = p
        return [p for p in out if p is not None]
