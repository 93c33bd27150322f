"""Per-variant serving metrics for one reporting interval: counters, latency histogram, outcomes.

Everything is bounded: the histogram has a fixed set of log-spaced buckets, the number of
variants and of distinct error codes is capped (extra ones are folded into ``OTHER``). A
snapshot is a JSON-able dict; snapshots from several intervals or devices merge with
:func:`merge_snapshots`, histograms with :meth:`LatencyHistogram.merge`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

OTHER = "__other__"

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
            raise ValueError(f"lo must be a positive finite number, got {lo!r}")
        if not (isinstance(hi, (int, float)) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"hi must be a finite number above lo={lo!r}, got {hi!r}")
        if (
            isinstance(per_decade, bool)
            or not isinstance(per_decade, int)
            or not 1 <= per_decade <= 1000
        ):
            raise ValueError(f"per_decade must be an int in 1..1000, got {per_decade!r}")
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
            raise ValueError(f"quantile q must be in (0, 1], got {q!r}")
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
            raise ValueError(f"{where}: missing field {exc.args[0]!r}") from exc
        for pair in data.get("counts", []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ValueError(f"{where}: counts entries must be [index, count], got {pair!r}")
            i, c = pair
            if not (_is_int(i) and 0 <= i < len(h._counts) and _is_int(c) and c >= 0):
                raise ValueError(f"{where}: bad counts entry {pair!r}")
            h._counts[i] += c
        h.count = sum(h._counts)
        if data.get("count", h.count) != h.count:
            raise ValueError(f"{where}: count {data.get('count')!r} != sum of counts {h.count}")
        h.invalid = int(data.get("invalid", 0))
        h.sum = float(data.get("sum", 0.0))
        if h.count:
            h.min = float(data["min"])
            h.max = float(data["max"])
        return h


class VariantMetrics:
    """Counters of one variant for one interval."""

    __slots__ = (
        "cls_correct",
        "cls_n",
        "errors",
        "latency",
        "outcome_invalid",
        "predictions",
        "reg_n",
        "reg_sum_abs",
        "reg_sum_sq",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.predictions = 0
        self.errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.cls_n = 0
        self.cls_correct = 0
        self.reg_n = 0
        self.reg_sum_abs = 0.0
        self.reg_sum_sq = 0.0
        self.outcome_invalid = 0

    def merge(self, other: VariantMetrics) -> None:
        self.requests += other.requests
        self.predictions += other.predictions
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.latency.merge(other.latency)
        self.cls_n += other.cls_n
        self.cls_correct += other.cls_correct
        self.reg_n += other.reg_n
        self.reg_sum_abs += other.reg_sum_abs
        self.reg_sum_sq += other.reg_sum_sq
        self.outcome_invalid += other.outcome_invalid

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "predictions": self.predictions,
            "errors": dict(self.errors),
            "latency": self.latency.to_dict(),
            "classification": {
                "n": self.cls_n,
                "correct": self.cls_correct,
                "accuracy": self.cls_correct / self.cls_n if self.cls_n else None,
            },
            "regression": {
                "n": self.reg_n,
                "sum_abs_error": self.reg_sum_abs,
                "sum_sq_error": self.reg_sum_sq,
                "mae": self.reg_sum_abs / self.reg_n if self.reg_n else None,
                "rmse": math.sqrt(self.reg_sum_sq / self.reg_n) if self.reg_n else None,
            },
            "outcome_invalid": self.outcome_invalid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantMetrics:
        m = cls()
        try:
            m.requests = int(data["requests"])
            m.predictions = int(data["predictions"])
            m.errors = {str(k): int(v) for k, v in data["errors"].items()}
            m.latency = LatencyHistogram.from_dict(data["latency"])
            m.cls_n = int(data["classification"]["n"])
            m.cls_correct = int(data["classification"]["correct"])
            m.reg_n = int(data["regression"]["n"])
            m.reg_sum_abs = float(data["regression"]["sum_abs_error"])
            m.reg_sum_sq = float(data["regression"]["sum_sq_error"])
            m.outcome_invalid = int(data.get("outcome_invalid", 0))
        except KeyError as exc:
            raise ValueError(f"variant metrics: missing field {exc.args[0]!r}") from exc
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"variant metrics: malformed ({exc})") from exc
        return m


class Metrics:
    """Thread-safe per-variant metrics for the current reporting interval.

    One lock around each record: uncontended it costs well under a microsecond and it keeps a
    snapshot-and-reset from the reporter thread from losing counts of the serving thread.
    """

    def __init__(
        self,
        *,
        max_variants: int = 32,
        max_error_codes: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, v in (("max_variants", max_variants), ("max_error_codes", max_error_codes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.max_variants = max_variants
        self.max_error_codes = max_error_codes
        self._clock = clock
        self._lock = threading.Lock()
        self._variants: dict[str, VariantMetrics] = {}
        self._start = clock()

    def _variant(self, variant: str) -> VariantMetrics:
        m = self._variants.get(variant)
        if m is None:
            # A bug or a hostile config must not grow memory without end: past max_variants
            # named variants, unseen ones share one extra OTHER slot.
            if len(self._variants) >= self.max_variants and variant != OTHER:
                return self._variant(OTHER)
            m = self._variants[variant] = VariantMetrics()
        return m

    def record_request(
        self,
        variant: str,
        latency_s: float | None,
        *,
        error: str | None = None,
        predictions: int = 1,
    ) -> None:
        """One served request: its latency (seconds, ``None`` if not timed), its error code if
        it failed, and how many predictions it produced (batch size)."""
        with self._lock:
            m = self._variant(variant)
            m.requests += 1
            m.predictions += predictions
            if latency_s is not None:
                m.latency.record(latency_s)
            if error is not None:
                code = (
                    error if (error in m.errors or len(m.errors) < self.max_error_codes) else OTHER
                )
                m.errors[code] = m.errors.get(code, 0) + 1

    def record_classification(self, variant: str, correct: bool) -> None:
        """A classifier's prediction met its label."""
        with self._lock:
            m = self._variant(variant)
            m.cls_n += 1
            m.cls_correct += 1 if correct else 0

    def record_regression(self, variant: str, error: float) -> None:
        """A regressor's prediction met its label; ``error`` = prediction - label.

        Non-finite errors are counted in ``outcome_invalid`` and left out of the sums."""
        with self._lock:
            m = self._variant(variant)
            if not (isinstance(error, (int, float)) and math.isfinite(error)):
                m.outcome_invalid += 1
                return
            m.reg_n += 1
            m.reg_sum_abs += abs(error)
            m.reg_sum_sq += error * error

    def snapshot(self, *, reset: bool = False) -> dict[str, Any]:
        """JSON-able ``{"start", "end", "variants": {name: {...}}}`` of the interval so far;
        with ``reset`` the next interval starts now (atomically with the read)."""
        with self._lock:
            now = self._clock()
            out = {
                "start": self._start,
                "end": now,
                "variants": {v: m.to_dict() for v, m in self._variants.items()},
            }
            if reset:
                self._variants = {}
                self._start = now
        return out

    def reset(self) -> None:
        self.snapshot(reset=True)


def merge_snapshots(*snapshots: Mapping[str, Any]) -> dict[str, Any]:
    """Merge :meth:`Metrics.snapshot` dicts (intervals or devices) into one."""
    if not snapshots:
        raise ValueError("merge_snapshots needs at least one snapshot")
    merged: dict[str, VariantMetrics] = {}
    for k, snap in enumerate(snapshots):
        if not isinstance(snap, Mapping) or "variants" not in snap:
            raise ValueError(f"snapshot {k}: not a metrics snapshot (no 'variants')")
        for name, data in snap["variants"].items():
            try:
                vm = VariantMetrics.from_dict(data)
            except ValueError as exc:
                raise ValueError(f"snapshot {k}, variant {name!r}: {exc}") from exc
            if name in merged:
                merged[name].merge(vm)
            else:
                merged[name] = vm
    return {
        "start": min(s["start"] for s in snapshots),
        "end": max(s["end"] for s in snapshots),
        "variants": {v: m.to_dict() for v, m in merged.items()},
    }


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
