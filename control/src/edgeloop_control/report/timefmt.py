"""Times in the report: elapsed since the run started (axes) and UTC wall clock (tables).

Charts label time as elapsed ``m:ss`` (``h:mm:ss`` past an hour) from one origin shared by
the whole page, so a drift marker at +2:40 and a rollback at +2:40 are the same moment.
Wall-clock times are UTC: the report may be opened on another machine in another zone.
"""

from __future__ import annotations

import time

# Tick spacings that read well on a clock: 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, ...
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def elapsed(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss`` for a duration in seconds (negative gets a minus sign)."""
    sign = "-" if seconds < 0 else ""
    total = round(abs(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes}:{secs:02d}"


def duration(seconds: float | None) -> str:
    """A step's duration: ``2.1 s`` under a minute, else ``m:ss``."""
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 60 else elapsed(seconds)


def utc_clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def utc_datetime(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def time_step(span: float, max_ticks: int = 6) -> float:
    """The smallest clock-friendly tick spacing giving at most ``max_ticks`` intervals."""
    for step in _TIME_STEPS:
        if span / step <= max_ticks:
            return float(step)
    hours = 6 * 3600
    while span / hours > max_ticks:
        hours *= 2
    return float(hours)


class Clock:
    """Formats unix times relative to the report's origin (its earliest timestamp)."""

    def __init__(self, origin: float) -> None:
        self.origin = origin

    def rel(self, t: float) -> str:
        return "+" + elapsed(t - self.origin)

    def both(self, t: float) -> str:
        """``+2:40 (14:03:20 UTC)``: elapsed for the story, clock time to find it in logs."""
        return f"{self.rel(t)} ({utc_clock(t)} UTC)"
