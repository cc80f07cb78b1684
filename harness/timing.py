"""Wall time per stage of an evaluation, for `benchmarks/evaluate_speed.py`.

Code marks its stages with ``with stage("scoring.fairness"):``; the seconds go to the clock of the
enclosing :func:`measure` block, and nowhere when there is none (the cost of an unused mark is a
context-variable lookup). Stages may nest: a nested stage's seconds are taken out of its parent's,
so the stages of one clock add up to the time measured, without double counting.

Time spent on the far side of the executor (a sandboxed worker's optimizer steps and validation
passes) is measured there and added with :func:`add`. The optimizer steps are also kept as spans
of the system's monotonic clock (:func:`add_spans`, the same clock in every process of the
machine), so that when several evaluations run at once the time during which any of them was
training can be told from the sum of their step times (:func:`union_seconds`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

#: The stages the benchmark reports, in order. Unmarked time is reported as ``other``.
STAGES = (
    "load",  # cohort, feature cache and tensors
    "train.steps",  # optimizer steps (forward, backward, update) or an estimator's fit
    "train.validation",  # validation passes for checkpoint selection
    "train.other",  # model construction, batching, worker round trips
    "predict",  # test and scenario predictions
    "scoring.bootstrap",
    "scoring.fairness",
    "scoring.robustness",
    "scoring.other",
    "write",
)


@dataclass
class Clock:
    """Seconds per stage, plus a stack of the stages open now (for nesting)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: (start, end) on ``time.monotonic()`` per stage, where the stage reports them.
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    _open: list[list[float]] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        if self._open:  # time reported from elsewhere is not the parent's own time
            self._open[-1][0] += seconds

    def total(self) -> float:
        return float(sum(self.seconds.values()))


_CLOCK: ContextVar[Clock | None] = ContextVar("harness_stage_clock", default=None)


@contextmanager
def measure() -> Iterator[Clock]:
    """Collect the stages run inside this block into a new :class:`Clock`."""
    clock = Clock()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the block's wall time, less its nested stages, as ``name`` on the current clock."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    frame = [0.0]  # seconds of nested stages
    clock._open.append(frame)
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        clock._open.pop()
        clock.seconds[name] += elapsed - frame[0]
        if clock._open:
            clock._open[-1][0] += elapsed


def add(name: str, seconds: float) -> None:
    """Add ``seconds`` measured elsewhere (e.g. in a worker process) to ``name``."""
    clock = _CLOCK.get()
    if clock is not None:
        clock.add(name, seconds)


def add_spans(name: str, spans: Sequence[tuple[float, float]]) -> None:
    """Record when ``name`` ran: (start, end) pairs on ``time.monotonic()``."""
    clock = _CLOCK.get()
    if clock is not None:
        clock.spans[name].extend((float(a), float(b)) for a, b in spans)


def union_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``spans`` (overlaps counted once)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total
