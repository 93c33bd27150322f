"""Tables that never truncate an identifier: the CLI's entry to :mod:`edgeloop_control.terminal`.

:func:`print_rows` prints a :class:`~edgeloop_control.terminal.Rows` table and says which
layout it used (full width, wrapped free text, low-value columns dropped, or vertical).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from edgeloop_control.terminal import Rows, safe_text, table, terminal_safe

__all__ = ["Cell", "print_rows", "safe_text", "table", "table_width", "terminal_safe"]

Cell = str | Text


def table_width(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> int:
    """Width of the table with every cell at full width (default box, padding 1)."""
    t = Rows(None, columns, rows)
    return sum(t._full(i) for i in range(len(columns))) + 3 * len(columns) + 1


def print_rows(
    console: Console,
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    droppable: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> str:
    """Print ``rows``; returns the layout used: ``table``, ``wrapped``, ``narrow`` (columns
    dropped) or ``vertical``. Plain str cells are data here, never markup."""
    cells = [[v if isinstance(v, Text) else safe_text(v) for v in row] for row in rows]
    out = Rows(title, columns, cells, droppable=droppable, wrap=wrap)
    console.print(out)
    return out.layout
