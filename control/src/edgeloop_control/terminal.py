"""Terminal output shared by the CLI and the demo: tables that never cut an identifier.

Rich shrinks a table that is wider than the terminal by cutting cells with "…", which
turns ``pump-station-12`` into ``pump-sta…`` and ``challenger`` into ``challeng…``. A
:class:`Rows` table lays itself out for the width it is rendered at instead:

1. every cell at full width, if that fits;
2. else the columns the caller marked ``wrap`` (free text: lists, notes, reasons) wrap at
   spaces, never narrower than their longest word, so a name in a list stays whole;
3. else the columns marked ``droppable`` (low value: hashes, timestamps) go, first to last;
4. else each row is printed vertically as ``column : value`` lines, which wrap at spaces.

Nothing in any layout cuts a cell. Every table of the CLI goes through :func:`table`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.errors import MarkupError
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

# Control characters (an ESC starts a terminal command: colours, the window title, ...) and
# the bidirectional overrides that make text display in another order than it reads. Names
# and messages come from devices; in a terminal they are shown, never obeyed.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with control and bidi-override characters shown as ``\\x1b``/``\\u202e``."""
    return _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def safe_text(value: str | Text, style: str = "") -> Text:
    """A rich Text of ``value`` (never read as markup) with unsafe characters escaped."""
    # A line break the CLI put in a cell stays one; any other control character is shown.
    if isinstance(value, Text):
        out = value.copy()
        out.plain = "\n".join(terminal_safe(p) for p in value.plain.split("\n"))
        return out
    return Text("\n".join(terminal_safe(p) for p in value.split("\n")), style=style)


def cell_text(value: Any) -> Text:
    """A table cell: ``None`` is empty, a Text is kept, a str may carry rich markup
    (``[green]online[/]``, as the CLI's own cells do), anything else is ``str()``."""
    if value is None:
        return Text("")
    if isinstance(value, Text):
        return safe_text(value)
    if isinstance(value, str):
        try:
            return safe_text(Text.from_markup(value))
        except MarkupError:  # a bracket in data, not markup
            return safe_text(value)
    return Text(str(value))


def _width(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _longest_word(text: Text) -> int:
    return max((cell_len(word) for word in text.plain.split()), default=0)


class Rows:
    """A table that chooses its layout at the width it is rendered at (see the module)."""

    def __init__(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        wrap: Sequence[str] = (),
        droppable: Sequence[str] = (),
    ) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [[cell_text(v) for v in row] for row in rows]
        self.wrap = set(wrap)
        self.droppable = [c for c in droppable if c in self.columns]
        self.layout = ""  # the last layout used: table, wrapped, narrow or vertical

    def _full(self, i: int) -> int:
        return max([cell_len(self.columns[i])] + [_width(r[i]) for r in self.rows])

    def _least(self, i: int) -> int:
        if self.columns[i] not in self.wrap:
            return self._full(i)
        words = [_longest_word(Text(self.columns[i]))] + [_longest_word(r[i]) for r in self.rows]
        return max(words)

    def plan(self, width: int) -> tuple[str, list[int], list[int]]:
        """(layout, kept column indices, content width of each kept column)."""
        keep = list(range(len(self.columns)))
        for dropped in range(len(self.droppable) + 1):
            if dropped:
                keep.remove(self.columns.index(self.droppable[dropped - 1]))
            room = width - (3 * len(keep) + 1)  # borders and one space of padding a side
            full = [self._full(i) for i in keep]
            if sum(full) <= room:
                return ("narrow" if dropped else "table"), keep, full
            least = [self._least(i) for i in keep]
            if sum(least) <= room:
                return ("narrow" if dropped else "wrapped"), keep, _share(least, full, room)
        return "vertical", list(range(len(self.columns))), []

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.layout, keep, widths = self.plan(options.max_width)
        if self.title:
            yield safe_text(self.title, "bold")
        if self.layout == "vertical":
            yield from self._vertical()
            return
        table = Table(header_style="bold")
        for i, w in zip(keep, widths, strict=True):
            wraps = self.columns[i] in self.wrap
            table.add_column(self.columns[i], width=w, no_wrap=not wraps, overflow="fold")
        for row in self.rows:
            table.add_row(*[row[i] for i in keep])
        yield table

    def _vertical(self) -> Iterable[Text]:
        if len(self.columns) == 2:  # a field/value table: one "field : value" line each
            label = max((_width(r[0]) for r in self.rows), default=0)
            for key, value in self.rows:
                line = Text(key.plain.ljust(label), style="bold")
                line.append(" : ")
                line.append_text(value)
                yield line
            return
        label = max((cell_len(c) for c in self.columns), default=0)
        for n, row in enumerate(self.rows):
            yield Text(f"-- {n + 1} of {len(self.rows)} --", style="dim")
            for name, value in zip(self.columns, row, strict=True):
                line = Text(f"{name.ljust(label)} : ")
                line.append_text(value)
                yield line


def _share(least: list[int], full: list[int], room: int) -> list[int]:
    """Widths from ``least`` up towards ``full``, the spare room shared in proportion to
    what each column still wants."""
    spare = room - sum(least)
    want = [f - m for m, f in zip(least, full, strict=True)]
    total = sum(want) or 1
    widths = [m + min(w, spare * w // total) for m, w in zip(least, want, strict=True)]
    return widths


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    wrap: Sequence[str] = (),
    droppable: Sequence[str] = (),
) -> Rows:
    """A table that never cuts a cell; ``None`` cells print empty. ``wrap`` names free-text
    columns that may wrap at spaces, ``droppable`` low-value columns dropped (first to last)
    before the table goes vertical."""
    return Rows(title, columns, rows, wrap=wrap, droppable=droppable)
