"""Count- and time-based windows kept as a ring of panes of bin counts.

A window of ``size`` (rows or seconds) advancing by ``slide`` is cut into
``size / slide`` panes of ``slide`` each (one pane when tumbling). Each pane holds
one count per histogram slot; the window total is kept incrementally (add the pane
that closes, subtract the pane that falls out), so memory is
``(n_panes + 2) * n_slots * 8`` bytes however long the stream runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgeloop_agent.wire.jsontext import json_text

WindowKind = Literal["count", "time"]

MAX_PANES = 1024


@dataclass(frozen=True)
class WindowConfig:
    """``kind="count"``: ``size``/``slide`` in rows; ``kind="time"``: in seconds.

    ``slide=None`` gives tumbling (non-overlapping) windows; otherwise a window is
    reported every ``slide`` and ``size`` must be a whole multiple of ``slide``.
    Time windows are aligned on multiples of the pane length since the epoch.
    """

    kind: WindowKind = "count"
    size: float = 1000
    slide: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("count", "time"):
            raise ValueError(f"window.kind: expected 'count' or 'time', got {json_text(self.kind)}")
        _check_positive(self.size, "window.size")
        if self.slide is not None:
            _check_positive(self.slide, "window.slide")
            if self.slide > self.size:
                raise ValueError(
                    f"window.slide={self.slide} must not exceed window.size={self.size}"
                )
        if self.kind == "count":
            for field, v in (("size", self.size), ("slide", self.slide)):
                if v is not None and float(v) != int(v):
                    raise ValueError(f"window.{field}: a count window needs whole rows, got {v}")
        ratio = self.size / self.pane_size
        if abs(ratio - round(ratio)) > 1e-9 * ratio:
            raise ValueError(
                f"window.size={self.size} must be a whole multiple of window.slide={self.slide}"
            )
        if round(ratio) > MAX_PANES:
            raise ValueError(
                f"window: size/slide = {round(ratio)} panes exceeds the limit of {MAX_PANES}; "
                "use a larger slide"
            )

    @property
    def pane_size(self) -> float:
        return float(self.slide if self.slide is not None else self.size)

    @property
    def n_panes(self) -> int:
        return round(self.size / self.pane_size)

    @property
    def tumbling(self) -> bool:
        return self.n_panes == 1


class PaneRing:
    """Ring of ``n_panes`` closed panes plus the pane being filled; int64 slot counts."""

    def __init__(self, n_panes: int, n_slots: int) -> None:
        self.n_panes = n_panes
        self.n_slots = n_slots
        self._ring = np.zeros((n_panes, n_slots), dtype=np.int64)
        self._ring_rows = np.zeros(n_panes, dtype=np.int64)
        self._pos = 0
        self.current = np.zeros(n_slots, dtype=np.int64)
        self.current_rows = 0
        self.window = np.zeros(n_slots, dtype=np.int64)
        self.window_rows = 0
        self.closed = 0  # panes closed since creation

    @property
    def nbytes(self) -> int:
        return int(
            self._ring.nbytes + self._ring_rows.nbytes + self.current.nbytes + self.window.nbytes
        )

    def add(self, slots: np.ndarray, n_rows: int) -> None:
        """Count ``slots`` (flat slot ids of ``n_rows`` rows) into the open pane."""
        if n_rows == 0:
            return
        if n_rows == 1:
            # One row touches each column's slot range once: ids are unique, so plain
            # fancy-index increment is correct and cheaper than bincount's full pass.
            self.current[slots] += 1
        else:
            self.current += np.bincount(slots, minlength=self.n_slots)
        self.current_rows += n_rows

    def close(self) -> None:
        """Close the open pane: it enters the window and the oldest pane leaves."""
        oldest = self._ring[self._pos]
        self.window += self.current
        self.window -= oldest
        self.window_rows += self.current_rows - int(self._ring_rows[self._pos])
        oldest[:] = self.current
        self._ring_rows[self._pos] = self.current_rows
        self._pos = (self._pos + 1) % self.n_panes
        self.current[:] = 0
        self.current_rows = 0
        self.closed += 1

    def clear(self) -> None:
        self._ring[:] = 0
        self._ring_rows[:] = 0
        self.current[:] = 0
        self.window[:] = 0
        self.current_rows = self.window_rows = 0


def _check_positive(v: object, field: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{field}: expected a finite number > 0, got {json_text(v)}")


class RowRing:
    """The last ``size`` raw rows, for the exact KS mode: ``size x n_columns`` float64."""

    def __init__(self, size: int, n_columns: int) -> None:
        self.size = size
        self.values = np.full((size, n_columns), np.nan)
        self._next = 0

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def add(self, rows: np.ndarray) -> None:
        """Append ``rows`` (at most ``size`` of them), overwriting the oldest."""
        k = rows.shape[0]
        first = min(k, self.size - self._next)
        self.values[self._next : self._next + first] = rows[:first]
        if k > first:
            self.values[: k - first] = rows[first:]
        self._next = (self._next + k) % self.size

    def clear(self) -> None:
        self.values[:] = np.nan
        self._next = 0
