"""Terminal output shared by the CLI and the demo: rich tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A plain rich table; ``None`` cells print empty."""
    t = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    return t
