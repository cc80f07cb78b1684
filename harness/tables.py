"""Rich tables laid out for the width of the terminal they are printed on.

rich shrinks a table that is wider than the terminal by cutting words with an ellipsis, so at
80 columns a submission reads ``late_fu…``. :func:`fit` wraps a finished table so that nothing
is cut: the name columns (submissions, labels, tasks, checks) keep the width of their longest
cell, every other column wraps at spaces and breaks a word longer than itself across lines, and
a table that cannot fit that way (many columns on a narrow terminal) is printed one row at a
time, each row a block of ``header  value`` lines.

Used by every command that prints a table (`harness.display`, `harness.cohort.show`, the
command modules); imports only rich.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table

#: The narrowest a text column is squeezed to before a table is printed row by row instead
#: (a column whose longest word is shorter stays at that word's width).
MIN_TEXT_WIDTH = 8


class Fitted:
    """A rich renderable: ``table`` laid out for the width it is printed at (see the module)."""

    def __init__(self, table: Table, whole: Iterable[int | str] = (0,)) -> None:
        self.table = table
        headers = [str(c.header) for c in table.columns]
        self.whole: set[int] = set()
        for key in whole:
            if isinstance(key, str):
                if key not in headers:
                    raise ValueError(f"no column {key!r} in the table (columns: {headers})")
                self.whole.add(headers.index(key))
            elif 0 <= key < len(headers):
                self.whole.add(key)
            else:
                raise ValueError(f"no column {key} in a table of {len(headers)} columns")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.table.columns:
            yield self.table
            return
        measured = [_widths(console, options, [c.header, *c.cells]) for c in self.table.columns]
        longest = [width for _, width in measured]
        words = [longest[i] if i in self.whole else word for i, (word, _) in enumerate(measured)]
        breaking = [w if i in self.whole else min(w, MIN_TEXT_WIDTH) for i, w in enumerate(words)]
        # as drawn, then without outer rules and padding; text columns give way, the widest
        # first, down to their longest word and then (breaking words) to MIN_TEXT_WIDTH; name
        # columns keep their longest cell
        for table in (self.table, _compact(self.table)):
            room = options.max_width - _overhead(table)
            widths = _narrow(_narrow(longest, words, room), breaking, room)
            if sum(widths) <= room:
                yield _with_widths(table, widths)
                return
        yield self._records(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table)

    def _records(self, console: Console, options: ConsoleOptions) -> Table:
        """One block of ``header  value`` lines per row, a rule between rows; the values are
        as wide as the longest name when the terminal allows, the headers take what is left."""
        source = self.table
        records = Table(
            title=source.title,
            caption=source.caption,
            title_justify=source.title_justify,
            caption_justify=source.caption_justify,
            show_header=False,
            box=source.box,
        )
        cells = [list(column.cells) for column in source.columns]
        headers = [column.header for column in source.columns]
        # the name columns first: they say which row a block is
        order = sorted(range(len(source.columns)), key=lambda i: i not in self.whole)
        records.add_column(style="bold", overflow="fold")
        records.add_column(overflow="fold")
        room = options.max_width - _overhead(records)
        header_word, header_width = _widths(console, options, headers)
        _, value_width = _widths(console, options, [c for column in cells for c in column])
        _, name_width = _widths(console, options, [c for i in self.whole for c in cells[i]])
        # the headers at full width if the values leave room, no narrower than their longest
        # word unless a name needs the room, and never under MIN_TEXT_WIDTH (or that word)
        label = min(header_width, max(header_word, room - value_width), room - name_width)
        label = max(label, min(header_word, MIN_TEXT_WIDTH), 1)
        records.columns[0].width = label
        records.columns[1].width = max(min(value_width, room - label), 1)
        for r in range(source.row_count):
            for n, i in enumerate(order):
                records.add_row(
                    headers[i],
                    cells[i][r] if r < len(cells[i]) else "",
                    end_section=n == len(order) - 1,
                )
        return records


def fit(table: Table, *whole: int | str) -> Fitted:
    """``table`` printed without cutting anything; ``whole`` names the columns (by header or
    index) whose cells stay on one line, the first column when none is named."""
    return Fitted(table, whole or (0,))


def _narrow(widths: list[int], floors: list[int], room: int) -> list[int]:
    """``widths`` narrowed, the widest first and none below its floor, until they sum to at
    most ``room`` (or every one is at its floor)."""
    widths = list(widths)
    while sum(widths) > room:
        above = [i for i, (w, f) in enumerate(zip(widths, floors, strict=True)) if w > f]
        if not above:
            break
        widest = max(above, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _with_widths(table: Table, widths: list[int]) -> Table:
    """A copy of ``table`` with these column widths, every cell wrapping and folding."""
    fixed = copy.copy(table)
    fixed.columns = [
        dataclasses.replace(column, overflow="fold", no_wrap=False, width=width)
        for column, width in zip(table.columns, widths, strict=True)
    ]
    return fixed


def _compact(table: Table) -> Table:
    """A copy of ``table`` drawn with two spaces between columns and a rule under the header
    only: each column one cell wider than its content instead of three."""
    compact = copy.copy(table)
    compact.box = box.SIMPLE_HEAD
    compact.show_edge = False
    compact.padding = (0, 0, 0, 1)
    compact.pad_edge = False
    return compact


def _widths(
    console: Console, options: ConsoleOptions, renderables: Iterable[RenderableType]
) -> tuple[int, int]:
    """The longest word and the longest line among ``renderables``, in terminal cells."""
    measured = [Measurement.get(console, options, r) for r in renderables]
    if not measured:
        return 0, 0
    return max(m.minimum for m in measured), max(m.maximum for m in measured)


def _pads(table: Table) -> tuple[int, int]:
    """The left and right padding of every cell."""
    _, right, _, left = Padding.unpack(table.padding)
    return left, right


def _overhead(table: Table) -> int:
    """Cells of a row taken by padding and rules (both edges and one between each pair of
    columns) rather than content."""
    n = len(table.columns)
    rules = 0 if table.box is None else (2 if table.show_edge else 0) + n - 1
    left, right = _pads(table)
    padding = n * (left + right) - (0 if table.pad_edge else left + right)
    return rules + padding
