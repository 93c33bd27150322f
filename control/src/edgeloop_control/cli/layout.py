"""Tables that never truncate an identifier.

Rich shrinks a table that is wider than the terminal by wrapping or cutting cells with "…",
which turns ``pump-station-12`` into ``pump-sta…``. :func:`print_rows` prints the table
only when every cell fits at its full width; otherwise it drops the columns the caller
marked as low-value, and if it still does not fit it prints each row vertically as
``column: value`` lines, which the terminal wraps but nothing cuts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text

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


def safe_text(value: Cell, style: str = "") -> Text:
    """A rich Text of ``value`` (never read as markup) with unsafe characters escaped."""
    if isinstance(value, Text):
        out = value.copy()
        out.plain = terminal_safe(value.plain)
        return out
    return Text(terminal_safe(value), style=style)


def _plain(value: Cell) -> str:
    return terminal_safe(value.plain if isinstance(value, Text) else value)


def table_width(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> int:
    """Width of a rich table (default box, padding 1) with every cell at full width."""
    widths = [
        max([cell_len(c)] + [cell_len(_plain(r[i])) for r in rows]) for i, c in enumerate(columns)
    ]
    return sum(widths) + 3 * len(widths) + 1


def print_rows(
    console: Console,
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    droppable: Sequence[str] = (),
) -> str:
    """Print ``rows``; returns the layout used: ``table``, ``narrow`` (columns dropped) or
    ``vertical``. ``droppable`` lists low-value columns, dropped first to last."""
    keep = list(range(len(columns)))
    layout = "table"
    for dropped in range(len(droppable) + 1):
        cols = [columns[i] for i in keep]
        cut = [[row[i] for i in keep] for row in rows]
        if table_width(cols, cut) <= console.width:
            _print_table(console, title, cols, cut)
            return layout
        if dropped < len(droppable) and droppable[dropped] in columns:
            keep.remove(columns.index(droppable[dropped]))
            layout = "narrow"
    _print_vertical(console, title, columns, rows)
    return "vertical"


def _print_table(
    console: Console, title: str | None, columns: list[str], rows: list[list[Cell]]
) -> None:
    table = Table(title=title, header_style="bold", title_justify="left")
    for i, name in enumerate(columns):
        width = max([cell_len(name)] + [cell_len(_plain(r[i])) for r in rows])
        table.add_column(name, no_wrap=True, overflow="fold", min_width=width)
    for row in rows:
        table.add_row(*[safe_text(c) for c in row])
    console.print(table)


def _print_vertical(
    console: Console, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Cell]]
) -> None:
    if title:
        console.print(safe_text(title, "bold"), soft_wrap=True)
    label = max((cell_len(c) for c in columns), default=0)
    for n, row in enumerate(rows):
        console.print(Text(f"-- {n + 1} of {len(rows)} --", style="dim"), soft_wrap=True)
        for name, value in zip(columns, row, strict=True):
            line = Text(f"{name.ljust(label)} : ")
            line.append(safe_text(value))
            # soft_wrap: the terminal folds a long line, rich inserts no break and cuts nothing.
            console.print(line, soft_wrap=True)
