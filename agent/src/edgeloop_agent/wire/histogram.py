"""The latency histogram agents report in telemetry and the control node merges.

Fixed log-spaced buckets, so histograms from any number of intervals and devices
add up exactly (:meth:`LatencyHistogram.merge`); ``to_dict``/``from_dict`` is the
JSON form inside a telemetry report (docs/protocol.md, Telemetry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgeloop_agent.wire.jsontext import json_text

# Default histogram layout: 1 µs .. 10 s with 20 buckets per decade (bucket width x1.122).
LO = 1e-6
HI = 10.0
PER_DECADE = 20


class LatencyHistogram:
    """Fixed log-spaced histogram of durations in seconds. Not thread-safe on its own.

    Buckets: index 0 holds [0, lo), indexes 1..k hold [lo*g^(i-1), lo*g^i) with
    g = 10^(1/per_decade), the last holds [hi, inf). A quantile is the geometric middle of the
    bucket holding the nearest-rank sample, clamped to the observed min/max, so for samples in
    [lo, hi) its relative error is at most ``relative_error`` = sqrt(g) - 1 (5.9% by default).
    """

    __slots__ = (
        "_counts",
        "_inv_lo",
        "_scale",
        "count",
        "hi",
        "invalid",
        "lo",
        "max",
        "min",
        "n_log",
        "per_decade",
        "sum",
    )

    def __init__(self, lo: float = LO, hi: float = HI, per_decade: int = PER_DECADE) -> None:
        if not (isinstance(lo, (int, float)) and math.isfinite(lo) and lo > 0):
            raise ValueError(f"lo must be a positive finite number, got {json_text(lo)}")
        if not (isinstance(hi, (int, float)) and math.isfinite(hi) and hi > lo):
            raise ValueError(
                f"hi must be a finite number above lo={json_text(lo)}, got {json_text(hi)}"
            )
        if (
            isinstance(per_decade, bool)
            or not isinstance(per_decade, int)
            or not 1 <= per_decade <= 1000
        ):
            raise ValueError(f"per_decade must be an int in 1..1000, got {json_text(per_decade)}")
        self.lo = float(lo)
        self.hi = float(hi)
        self.per_decade = per_decade
        self.n_log = math.ceil(round(math.log10(hi / lo) * per_decade, 9))
        self._inv_lo = 1.0 / self.lo
        self._scale = per_decade / math.log(10.0)
        self._counts = [0] * (self.n_log + 2)
        self.count = 0
        self.invalid = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def relative_error(self) -> float:
        return math.sqrt(10.0 ** (1.0 / self.per_decade)) - 1.0

    def record(self, seconds: float) -> None:
        """Add one duration. NaN, infinite or negative values are counted as invalid, not added."""
        if seconds >= self.lo:  # False for NaN
            if seconds < self.hi:
                i = int(math.log(seconds * self._inv_lo) * self._scale) + 1
                # Rounding at a bucket's upper edge can land one past the last log bucket.
                if i > self.n_log:
                    i = self.n_log
            elif seconds == math.inf:
                self.invalid += 1
                return
            else:
                i = self.n_log + 1
        elif seconds >= 0.0:
            i = 0
        else:
            self.invalid += 1
            return
        self._counts[i] += 1
        self.count += 1
        self.sum += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def bucket_bounds(self, i: int) -> tuple[float, float]:
        """[low, high) of bucket ``i``."""
        if i == 0:
            return 0.0, self.lo
        if i == self.n_log + 1:
            return self.hi, math.inf
        g = 10.0 ** (1.0 / self.per_decade)
        return self.lo * g ** (i - 1), min(self.lo * g**i, self.hi)

    def quantile(self, q: float) -> float | None:
        """Estimate of the nearest-rank ``q`` quantile (0 < q <= 1); ``None`` when empty."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile q must be in (0, 1], got {json_text(q)}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count - 1e-9))
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                low, high = self.bucket_bounds(i)
                mid = (
                    high / 2
                    if i == 0
                    else (self.max if i == self.n_log + 1 else math.sqrt(low * high))
                )
                return min(max(mid, self.min), self.max)
        return self.max  # not reached: the counts add up to count

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this histogram (same layout required)."""
        if (other.lo, other.hi, other.per_decade) != (self.lo, self.hi, self.per_decade):
            raise ValueError(
                f"cannot merge histograms with different layouts: (lo, hi, per_decade) "
                f"{(self.lo, self.hi, self.per_decade)} vs {(other.lo, other.hi, other.per_decade)}"
            )
        for i, c in enumerate(other._counts):
            self._counts[i] += c
        self.count += other.count
        self.invalid += other.invalid
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def reset(self) -> None:
        self._counts = [0] * (self.n_log + 2)
        self.count = 0
        self.invalid = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``counts`` is sparse ``[[bucket index, count], ...]``."""
        empty = self.count == 0
        return {
            "unit": "s",
            "lo": self.lo,
            "hi": self.hi,
            "per_decade": self.per_decade,
            "count": self.count,
            "invalid": self.invalid,
            "sum": self.sum,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "relative_error": self.relative_error,
            "counts": [[i, c] for i, c in enumerate(self._counts) if c],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        where = "latency histogram"
        try:
            h = cls(data["lo"], data["hi"], data["per_decade"])
        except KeyError as exc:
            raise ValueError(f"{where}: missing field {json_text(exc.args[0])}") from exc
        for pair in data.get("counts", []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ValueError(
                    f"{where}: counts entries must be [index, count], got {json_text(pair)}"
                )
            i, c = pair
            if not (_is_int(i) and 0 <= i < len(h._counts) and _is_int(c) and c >= 0):
                raise ValueError(f"{where}: bad counts entry {json_text(pair)}")
            h._counts[i] += c
        h.count = sum(h._counts)
        if data.get("count", h.count) != h.count:
            raise ValueError(
                f"{where}: count {json_text(data.get('count'))} != sum of counts {h.count}"
            )
        h.invalid = int(data.get("invalid", 0))
        h.sum = float(data.get("sum", 0.0))
        if h.count:
            h.min = float(data["min"])
            h.max = float(data["max"])
        return h


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
