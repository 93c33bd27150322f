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

from edgeloop_agent.wire import keysketch
from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_agent.wire.jsontext import json_text

OTHER = "__other__"


class VariantMetrics:
    """Counters of one variant for one interval."""

    __slots__ = (
        "assigned_keyed",
        "assigned_unkeyed",
        "cls_correct",
        "cls_n",
        "errors",
        "key_sketch",
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
        # Requests the router assigned here, with and without a key, and the distinct keys
        # (a HyperLogLog sketch, 16 KiB, allocated at the first key).
        self.assigned_keyed = 0
        self.assigned_unkeyed = 0
        self.key_sketch: keysketch.Registers | None = None

    def add_assigned(self, hashes: keysketch.Hashes, unkeyed: int) -> None:
        self.assigned_unkeyed += unkeyed
        if len(hashes):
            self.assigned_keyed += len(hashes)
            if self.key_sketch is None:
                self.key_sketch = keysketch.empty()
            keysketch.add_hashes(self.key_sketch, hashes)

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
        self.assigned_keyed += other.assigned_keyed
        self.assigned_unkeyed += other.assigned_unkeyed
        if other.key_sketch is not None:
            if self.key_sketch is None:
                self.key_sketch = keysketch.empty()
            keysketch.merge(self.key_sketch, other.key_sketch)

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
            "assigned": {
                "keyed": self.assigned_keyed,
                "unkeyed": self.assigned_unkeyed,
                "keys": None if self.key_sketch is None else keysketch.to_wire(self.key_sketch),
            },
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
            assigned = data.get("assigned") or {}
            m.assigned_keyed = int(assigned.get("keyed", 0))
            m.assigned_unkeyed = int(assigned.get("unkeyed", 0))
            if assigned.get("keys") is not None:
                m.key_sketch = keysketch.from_wire(assigned["keys"])
        except KeyError as exc:
            raise ValueError(f"variant metrics: missing field {json_text(exc.args[0])}") from exc
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
                raise ValueError(f"{name} must be a positive int, got {json_text(v)}")
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

    def record_assigned(self, variant: str, hashes: keysketch.Hashes, unkeyed: int) -> None:
        """The router assigned requests to ``variant``: the sketch hashes of their keys
        (:func:`~edgeloop_agent.wire.keysketch.key_hashes`) and how many had no key."""
        with self._lock:
            self._variant(variant).add_assigned(hashes, unkeyed)

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
                raise ValueError(f"snapshot {k}, variant {json_text(name)}: {exc}") from exc
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
