"""Times in the report: elapsed since the run started, or UTC dates when the span is long.

A run of a few minutes (the demo) reads best as elapsed ``m:ss`` (``h:mm:ss`` past an hour)
from one origin shared by the whole page, so a drift marker at +2:40 and a rollback at +2:40
are the same moment. A workspace report over days or weeks would read "+720:00:00", so past
:data:`DATE_SPAN_S` every axis and table switches to UTC dates and times instead. Wall-clock
times are UTC: the report may be opened on another machine in another zone.
"""

from __future__ import annotations

import time

# Tick spacings that read well on a clock: 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, ...
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
DAY = 86400
# Spacings for date axes, aligned on UTC midnight (the epoch is one): hours, then days.
_DATE_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600,
    12 * 3600, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY, 56 * DAY, 91 * DAY, 182 * DAY, 364 * DAY,
)  # fmt: skip
# Longer than this, elapsed times stop being readable: the page shows UTC dates.
DATE_SPAN_S = DAY


def elapsed(seconds: float) -> str:
    """``m:ss``, ``h:mm:ss`` or ``Nd hh:mm:ss`` for a duration (negative gets a minus sign)."""
    sign = "-" if seconds < 0 else ""
    total = round(abs(seconds))
    days, total = divmod(total, DAY)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes}:{secs:02d}"


def duration(seconds: float | None) -> str:
    """A step's duration: ``2.1 s`` under a minute, else ``m:ss`` (``Nd hh:mm:ss``)."""
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 60 else elapsed(seconds)


def utc_clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def utc_datetime(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def utc_minute(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def time_step(span: float, max_ticks: int = 6) -> float:
    """The smallest clock-friendly tick spacing giving at most ``max_ticks`` intervals."""
    for step in _TIME_STEPS:
        if span / step <= max_ticks:
            return float(step)
    hours = 6 * 3600
    while span / hours > max_ticks:
        hours *= 2
    return float(hours)


def date_step(span: float, max_ticks: int = 6) -> float:
    """Like :func:`time_step` for date axes: whole hours or days, so ticks land on midnight."""
    for step in _DATE_STEPS:
        if span / step <= max_ticks:
            return float(step)
    years = 364 * DAY
    while span / years > max_ticks:
        years *= 2
    return float(years)


def date_tick(t: float, step: float = 3600.0) -> str:
    """``Dec 02`` at midnight, ``06:00`` within a day, ``06:00:15`` for steps under a
    minute (a chart of one short experiment on a page spanning weeks)."""
    tm = time.gmtime(t)
    if step < 60:
        return time.strftime("%H:%M:%S", tm)
    if tm.tm_hour == tm.tm_min == tm.tm_sec == 0:
        return time.strftime("%b %d", tm)
    return time.strftime("%H:%M", tm)


class Clock:
    """Formats unix times for the page: relative to its origin, or as UTC dates when the
    page covers more than :data:`DATE_SPAN_S` (``end`` is its latest timestamp)."""

    def __init__(self, origin: float, end: float | None = None) -> None:
        self.origin = origin
        self.end = origin if end is None else max(origin, end)
        self.dates = self.end - self.origin > DATE_SPAN_S

    @property
    def axis_label(self) -> str:
        return "date and time (UTC)" if self.dates else "time since start (m:ss)"

    def rel(self, t: float) -> str:
        """Where ``t`` sits on the page's time line: ``+2:40`` or ``2026-12-02 14:03``."""
        return utc_minute(t) if self.dates else "+" + elapsed(t - self.origin)

    def utc(self, t: float) -> str:
        """The wall clock (UTC) for tables: the time, with the date on long pages."""
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if self.dates else utc_clock(t)

    def both(self, t: float) -> str:
        """``+2:40 (14:03:20 UTC)``: elapsed for the story, clock time to find it in logs."""
        if self.dates:
            return utc_datetime(t)
        return f"{self.rel(t)} ({utc_clock(t)} UTC)"
