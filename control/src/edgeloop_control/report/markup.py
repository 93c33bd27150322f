"""HTML building blocks: escaping, number formats, tables, legends, badges.

Everything that reaches the page goes through :func:`esc` unless it is an :class:`Html`
fragment built here from escaped parts: device, model and feature names come from users.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Html(str):
    """A fragment that is already safe markup (built from escaped parts)."""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def cell(value: object) -> str:
    return value if isinstance(value, Html) else esc(value)


def slug(text: str) -> str:
    """A stable, safe id fragment: ``bearing_temp_c`` stays, anything else becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def unique_slugs(names: Sequence[str]) -> list[str]:
    """Slugs for ``names`` that stay unique even when two names slug alike (``a b``, ``a-b``)."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = candidate = slug(name)
        n = 2
        while candidate in seen:
            candidate, n = f"{base}-{n}", n + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def num(value: float | None, places: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{places}f}"


def sig(value: float | None, digits: int = 3) -> str:
    """Significant digits for values of unknown size (summary numbers, p99 latency)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"


def count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def p_value(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def interval(low: float | None, high: float | None, places: int = 3) -> str:
    if low is None and high is None:
        return "–"
    return f"[{num(low, places)}, {num(high, places)}]"


def free_value(value: object) -> str:
    """Summary values are free-form: numbers get thousands separators, the rest ``str``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return sig(value, 4)
    if value is None:
        return "–"
    return str(value)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    cls: str = "data",
    numeric: Iterable[int] = (),
    caption: str | None = None,
    row_classes: Sequence[str] | None = None,
) -> Html:
    """A table; ``numeric`` column indexes are right-aligned. Cells are escaped unless Html."""
    right = set(numeric)

    def td(i: int, value: object, tag: str = "td") -> str:
        klass = ' class="num"' if i in right else ""
        return f"<{tag}{klass}>{cell(value)}</{tag}>"

    parts = [f'<table class="{esc(cls)}">']
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(td(i, h, "th") for i, h in enumerate(headers)))
    parts.append("</tr></thead><tbody>")
    for n, row in enumerate(rows):
        klass = f' class="{esc(row_classes[n])}"' if row_classes and row_classes[n] else ""
        parts.append(f"<tr{klass}>" + "".join(td(i, v) for i, v in enumerate(row)) + "</tr>")
    parts.append("</tbody></table>")
    return Html("".join(parts))


def badge(text: str, tone: str) -> Html:
    """A coloured label; ``tone`` is one of our fixed CSS classes, never user text."""
    return Html(f'<span class="badge {esc(tone)}">{esc(text)}</span>')


@dataclass(frozen=True)
class LegendItem:
    label: str
    color: str
    kind: str = "line"  # line | dash | band | dot | ring | bar


def legend(items: Iterable[LegendItem]) -> Html:
    entries = "".join(
        f'<li><span class="key {esc(i.kind)}" style="--c:{esc(i.color)}"></span>{esc(i.label)}</li>'
        for i in items
    )
    return Html(f'<ul class="legend">{entries}</ul>')


def empty(message: str) -> Html:
    return Html(f'<p class="empty">{esc(message)}</p>')
