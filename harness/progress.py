"""Progress bars of the long stages: synth, cohort build, encode, training epochs, scoring, demo.

Library code reports and the command line draws. A stage opens a bar and counts its work::

    with progress.bar("synth images", total=n, unit="image") as b:
        for batch in batches:
            ...
            b.advance(len(batch))

The bar reaches the *sink* the enclosing :func:`reporting` block installed, and nothing when
there is none: an unused bar costs a context-variable lookup, and no bar ever changes what a
stage computes (it only reads counts). :func:`display` is the command line's sink: rich bars on
stderr, drawn only when stderr is a terminal, every stage with the same columns
(:func:`columns`: description, bar, done/total, rate, elapsed, ETA). A test installs a sink of
its own (any callable taking an :class:`Event`) with :func:`reporting`.

A bar opened while another is open in the same context is nested under it: it is indented and,
unless opened with ``keep=True``, removed from the screen when it closes (a unit's epochs under
the evaluation's units); a top-level bar stays on screen, finished, when it closes. Work done
without cost (a unit reused from the cache) is counted with :meth:`Bar.skip`: it moves the bar
but stays out of the rate, so the ETA is that of the work left.

Events are small frozen dataclasses: an evaluation running in another process sends its bars
through a queue (:class:`QueueSink`) to the parent, which draws them under its own
(:func:`receiving`).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import ProgressColumn

log = logging.getLogger(__name__)

#: ``HARNESS_PROGRESS=0`` turns the bars off even on a terminal.
ENV_SWITCH = "HARNESS_PROGRESS"
#: Least seconds between two updates of one bar sent to another process (opening, closing and
#: the update that completes a bar are always sent).
QUEUE_INTERVAL = 0.2
INDENT = "  "


@dataclass(frozen=True)
class Event:
    """The state of one bar when it was opened, changed or closed."""

    kind: str  # "open" | "update" | "close"
    id: str
    description: str
    total: float | None
    completed: float
    #: Counted without work (reused from the cache): left out of the rate and the ETA.
    skipped: float
    unit: str
    #: 0 for a top-level bar; nested bars are indented.
    depth: int
    #: Left on screen, finished, when it closes (by default only top-level bars are).
    keep: bool
    #: The bar this one is nested under (drawn below it), or None.
    parent: str | None = None


Sink = Callable[[Event], None]

_SINK: ContextVar[Sink | None] = ContextVar("harness_progress_sink", default=None)
#: The ids of the bars open in this context, outermost first.
_OPEN: ContextVar[tuple[str, ...]] = ContextVar("harness_progress_open", default=())
_IDS = itertools.count(1)


class Bar:
    """One stage's counter; every change is sent to the sink it was opened under (if any)."""

    def __init__(
        self,
        sink: Sink | None,
        description: str,
        total: float | None,
        unit: str,
        depth: int,
        keep: bool,
        parent: str | None = None,
    ):
        self.id = f"{os.getpid()}.{next(_IDS)}"
        self.parent = parent
        self.sink = sink
        #: The description the bar was opened with (:meth:`doing` adds to it).
        self.title = description
        self.description, self.total, self.unit = description, total, unit
        self.depth, self.keep = depth, keep
        self.completed = 0.0
        self.skipped = 0.0

    @property
    def drawn(self) -> bool:
        """Whether anything receives this bar (else every method is a no-op but the counts)."""
        return self.sink is not None

    def advance(self, n: float = 1) -> None:
        """``n`` more done."""
        self.completed += n
        self._send("update")

    def skip(self, n: float = 1) -> None:
        """``n`` more done without work (reused): counted, but not in the rate."""
        self.completed += n
        self.skipped += n
        self._send("update")

    def doing(self, what: str | None) -> None:
        """Say what is being done now: the description becomes ``"<title>: <what>"`` (None:
        the title alone)."""
        self.update(description=self.title if what is None else f"{self.title}: {what}")

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self._send("update")

    def _send(self, kind: str) -> None:
        if self.sink is None:
            return
        event = Event(
            kind, self.id, self.description, self.total, self.completed, self.skipped,
            self.unit, self.depth, self.keep, self.parent,
        )  # fmt: skip
        try:
            self.sink(event)
        except Exception as exc:  # noqa: BLE001 - a broken display must never stop the work
            log.warning("progress display failed (%s); bars are off for this stage", exc)
            self.sink = None


@contextmanager
def bar(
    description: str, total: float | None = None, *, unit: str = "step", keep: bool | None = None
) -> Iterator[Bar]:
    """A bar for the block, counting ``total`` ``unit``s (None: unknown); bars opened inside it
    are nested under it. ``keep``: leave it on screen when it closes (default: when it is not
    nested)."""
    sink = _SINK.get()
    outer = _OPEN.get()
    depth = len(outer)
    b = Bar(
        sink, description, total, unit, depth, depth == 0 if keep is None else keep,
        outer[-1] if outer else None,
    )  # fmt: skip
    b._send("open")
    token = _OPEN.set((*outer, b.id))
    try:
        yield b
    finally:
        _OPEN.reset(token)
        b._send("close")


def active() -> bool:
    """Whether bars opened here are received by anything."""
    return _SINK.get() is not None


@contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Send the bars opened in the block to ``sink`` (None: to nothing)."""
    token = _SINK.set(sink)
    outer = _OPEN.set(())
    try:
        yield
    finally:
        _OPEN.reset(outer)
        _SINK.reset(token)


# --------------------------------------------------------------------------------------------
# Another process's bars


class QueueSink:
    """Sends events to a queue read by another process (:func:`receiving`). An update that only
    moves a bar's count is sent at most every :data:`QUEUE_INTERVAL` seconds per bar; one that
    says what is being done now, or completes the bar, always is. Every event carries the bar's
    whole state, so a dropped update loses nothing the next one does not bring."""

    def __init__(self, queue: Any, interval: float = QUEUE_INTERVAL):
        self.queue, self.interval = queue, interval
        self.sent: dict[str, tuple[float, str]] = {}

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if event.kind == "update":
            last, said = self.sent.get(event.id, (-1e9, ""))
            done = event.total is not None and event.completed >= event.total
            if not done and said == event.description and now - last < self.interval:
                return
        self.sent[event.id] = (now, event.description)
        if event.kind == "close":
            del self.sent[event.id]
        self.queue.put(event)


@contextmanager
def receiving(queue: Any | None) -> Iterator[Any | None]:
    """Draw the events another process puts on ``queue`` (through a :class:`QueueSink`) in this
    context's sink, nested under the bars open here; yields the queue, or None when nothing
    here draws bars (the other process then need not send any)."""
    sink, outer = _SINK.get(), _OPEN.get()
    if queue is None or sink is None:
        yield None
        return

    def pump() -> None:
        while True:
            try:
                event = queue.get()
            except (EOFError, OSError):  # the queue's manager has gone
                return
            if event is None:
                return
            if isinstance(event, Event):
                try:  # under the bars open here: nested, so removed when done
                    parent = event.parent or (outer[-1] if outer else None)
                    sink(replace(event, depth=event.depth + len(outer), keep=False, parent=parent))
                except Exception as exc:  # noqa: BLE001 - a broken display must never stop the work
                    log.warning("progress display failed (%s)", exc)

    thread = threading.Thread(target=pump, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        try:
            queue.put(None)
        except (EOFError, OSError):
            pass
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Drawing on a terminal


def progress_console() -> Console:
    """Where bars are drawn: stderr (stdout keeps the results)."""
    from rich.console import Console

    return Console(stderr=True)


def enabled(console: Console) -> bool:
    """Bars are drawn on a terminal only (not into a file, a pipe or a test's capture), never on
    a quiet console, and not with ``HARNESS_PROGRESS=0``."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return bool(console.is_terminal and not console.is_dumb_terminal and not console.quiet)


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 1e7:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def rate_of(completed: float, skipped: float, elapsed: float | None) -> float | None:
    """Work done per second since the bar opened, work skipped (reused) left out."""
    worked = completed - skipped
    if not elapsed or elapsed <= 0 or worked <= 0:
        return None
    return worked / elapsed


def columns() -> tuple[ProgressColumn, ...]:
    """The columns every stage's bar has: description, bar, done/total, rate, elapsed, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Units per second, or seconds per unit when slower than one a second."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit") or "step"
            rate = rate_of(task.completed, task.fields.get("skipped", 0.0), task.elapsed)
            if rate is None:
                text = f"- {unit}/s"
            elif rate >= 1:
                text = f"{rate:,.1f} {unit}/s"
            else:
                text = f"{1 / rate:,.1f} s/{unit}"
            return Text(text, style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        """Time left at the rate so far (work skipped left out)."""

        def render(self, task: Any) -> Text:
            if task.finished:
                return Text("ETA 0:00:00", style="progress.remaining")
            rate = rate_of(task.completed, task.fields.get("skipped", 0.0), task.elapsed)
            left = None
            if task.total is not None and rate:
                left = max(task.total - task.completed, 0) / rate
            return Text(f"ETA {_clock(left)}", style="progress.remaining")

    return (
        TextColumn(
            "{task.description}",
            markup=False,  # names come from submission folders: never read as markup
            table_column=Column(ratio=1, min_width=16, no_wrap=True, overflow="ellipsis"),
        ),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=Column(min_width=11, justify="right", no_wrap=True)),
        RateColumn(table_column=Column(min_width=14, justify="right", no_wrap=True)),
        TimeElapsedColumn(),
        EtaColumn(table_column=Column(min_width=11, no_wrap=True)),
    )


class RichSink:
    """Draws events as rich bars: one live display while any bar is open, each nested bar drawn
    below the bar it is nested under (bars of evaluations running side by side stay apart); a
    bar opened with ``keep`` is left on screen, finished, when it closes, any other removed."""

    def __init__(self, console: Console):
        self.console = console
        self.lock = threading.RLock()
        self.live: Any = None
        self.tasks: dict[str, Any] = {}
        #: Where each open bar is drawn: its parent's place, then its own opening number.
        self.places: dict[str, tuple[int, ...]] = {}
        self.opened = itertools.count()

    def _start(self) -> Any:
        from rich.progress import Progress

        class TreeProgress(Progress):
            def get_renderables(self) -> Iterator[Any]:
                tasks = sorted(self.tasks, key=lambda t: t.fields.get("place", ()))
                yield self.make_tasks_table(tasks)

        live = TreeProgress(
            *columns(),
            console=self.console,
            transient=False,
            expand=True,
            # stdout is drawn above the bars only when it is the same terminal; a redirected
            # stdout keeps its own bytes
            redirect_stdout=_stdout_is_terminal(),
            redirect_stderr=False,
            refresh_per_second=5,
        )
        live.start()
        return live

    def __call__(self, event: Event) -> None:
        with self.lock:
            if event.kind == "open":
                if self.live is None:
                    self.live = self._start()
                place = (*self.places.get(event.parent or "", ()), next(self.opened))
                self.places[event.id] = place
                self.tasks[event.id] = self.live.add_task(
                    INDENT * event.depth + event.description, total=event.total,
                    completed=event.completed, unit=event.unit, skipped=event.skipped,
                    place=place,
                )  # fmt: skip
                return
            tid = self.tasks.get(event.id)
            if tid is None or self.live is None:
                return
            self.live.update(
                tid, description=INDENT * event.depth + event.description, total=event.total,
                completed=event.completed, skipped=event.skipped,
            )  # fmt: skip
            if event.kind != "close":
                return
            del self.tasks[event.id]
            self.places.pop(event.id, None)
            if event.keep:
                self.live.stop_task(tid)
            else:
                self.live.remove_task(tid)
            if not self.tasks:
                self.close()

    def close(self) -> None:
        with self.lock:
            if self.live is not None:
                live, self.live = self.live, None
                self.tasks.clear()
                self.places.clear()
                live.stop()


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def display(console: Console | None = None) -> Iterator[bool]:
    """Draw the bars opened in the block on ``console`` (default: :func:`progress_console`) when
    it is a terminal (:func:`enabled`); yields whether the bars are received. Where a sink is
    already installed (another display, a test's recorder), the bars go to that one."""
    if _SINK.get() is not None:
        yield True
        return
    console = console or progress_console()
    if not enabled(console):
        yield False
        return
    sink = RichSink(console)
    try:
        with reporting(sink):
            yield True
    finally:
        sink.close()
