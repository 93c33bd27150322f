"""Linear and log-10 scales with readable ticks, mapping data values to SVG pixels."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .timefmt import date_step, date_tick, elapsed, time_step


def nice_step(span: float, max_ticks: int = 5) -> float:
    """1, 2 or 5 times a power of ten, so at most ``max_ticks`` intervals cover ``span``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max_ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power * (1 + 1e-9):
            return mult * power
    return 10 * power


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    # Round so 0.30000000000000004 prints as 0.3 and compares equal to the domain end.
    return [round(first + i * step, 12) for i in range(max(count, 0))]


def decimals_for(step: float) -> int:
    """Decimal places needed to tell ticks ``step`` apart (0.25 -> 2, 0.5 -> 1, 20 -> 0)."""
    places = 0
    while places < 8 and abs(step * 10**places - round(step * 10**places)) > 1e-6:
        places += 1
    return places


# A time axis over a single instant spans this many seconds either side of it.
TIME_POINT_HALF_WIDTH = 30.0


def time_domain(times: Iterable[float | None]) -> tuple[float, float]:
    """The x domain for a time axis: the times' range with 3% margins, at least a minute
    (looks a fraction of a second apart would otherwise get an axis without a tick)."""
    lo, hi = span_of(times)
    if hi - lo < 2 * TIME_POINT_HALF_WIDTH:
        mid = (lo + hi) / 2
        return (mid - TIME_POINT_HALF_WIDTH, mid + TIME_POINT_HALF_WIDTH)
    return pad(lo, hi, 0.03)


def span_of(
    values: Iterable[float | None], *, include: Iterable[float] = ()
) -> tuple[float, float]:
    """(min, max) of the finite values plus ``include``; (0, 1) when there is nothing."""
    pool = [v for v in values if v is not None and math.isfinite(v)]
    pool += [v for v in include if math.isfinite(v)]
    if not pool:
        return (0.0, 1.0)
    return (min(pool), max(pool))


def pad(
    lo: float, hi: float, fraction: float = 0.06, *, point_half_width: float | None = None
) -> tuple[float, float]:
    """Widen a domain a little so lines do not run along the frame.

    A single value becomes a range of ``point_half_width`` either side (default: 10% of the
    value, or 0.5 at zero). Time axes must pass one: 10% of a unix time is five years.
    """
    if hi <= lo:
        half = point_half_width if point_half_width is not None else (abs(lo) * 0.1 or 0.5)
        return (lo - half, hi + half)
    margin = (hi - lo) * fraction
    return (lo - margin, hi + margin)


@dataclass(frozen=True)
class LinearScale:
    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return (self.px_lo + self.px_hi) / 2
        return self.px_lo + (value - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)

    def ticks(self, max_ticks: int = 5) -> list[float]:
        return _ticks(self.lo, self.hi, nice_step(self.hi - self.lo, max_ticks))

    def tick_formatter(self, max_ticks: int = 5) -> Callable[[float], str]:
        places = decimals_for(nice_step(self.hi - self.lo, max_ticks))
        return lambda v: f"{v:.{places}f}"


@dataclass(frozen=True)
class TimeScale(LinearScale):
    """A linear scale over unix seconds whose ticks fall on round elapsed times (or dates)."""

    origin: float = 0.0
    # Long spans: ticks on whole UTC hours/days, labelled as dates (see timefmt.Clock).
    dates: bool = False

    def ticks(self, max_ticks: int = 6) -> list[float]:
        if self.dates:
            return _ticks(self.lo, self.hi, date_step(self.hi - self.lo, max_ticks))
        step = time_step(self.hi - self.lo, max_ticks)
        return [self.origin + v for v in _ticks(self.lo - self.origin, self.hi - self.origin, step)]

    def tick_formatter(self, max_ticks: int = 6) -> Callable[[float], str]:
        if self.dates:
            step = date_step(self.hi - self.lo, max_ticks)
            return lambda v: date_tick(v, step)
        return lambda v: elapsed(v - self.origin)


@dataclass(frozen=True)
class LogScale:
    """Base-10 log scale for p-values; values at or below ``lo`` are drawn at ``lo``."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        value = min(max(value, self.lo), self.hi)
        a, b = math.log10(self.lo), math.log10(self.hi)
        return self.px_lo + (math.log10(value) - a) / (b - a) * (self.px_hi - self.px_lo)

    def ticks(self, max_ticks: int = 6) -> list[float]:
        first, last = math.ceil(math.log10(self.lo) - 1e-9), math.floor(math.log10(self.hi) + 1e-9)
        stride = max(1, math.ceil((last - first + 1) / max_ticks))
        return [10.0**e for e in range(last, first - 1, -stride)][::-1]

    def tick_formatter(self, max_ticks: int = 6) -> Callable[[float], str]:
        def fmt(v: float) -> str:
            return f"{v:g}" if v >= 1e-3 else f"1e{round(math.log10(v))}"

        return fmt
