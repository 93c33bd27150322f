"""Join late ground-truth labels to the predictions they grade.

Labels arrive on the feedback topic as ``{"id": "<request id>", "label": <value>}``, seconds to
hours after the prediction. :class:`FeedbackJoiner` keeps a bounded window of recent predictions
(by count and by age) and turns each label into a :class:`JoinResult`: ``matched`` (with the
outcome), ``unknown``, ``late`` (the prediction was evicted from the window), ``duplicate`` (a
second label for a prediction already graded) or ``invalid`` (malformed, or a label whose type
does not fit the prediction). Nothing here raises on what arrives from outside; every outcome is
counted.

Comparison rules (what "correct" means):

* classification: numbers compare as numbers, so ``1 == 1.0 == True`` (JSON ``true`` is the
  class 1); strings compare exactly. A string against a number (label ``"1"`` vs class ``1``)
  is NOT coerced: it is ``invalid`` with reason ``type mismatch``, because guessing ("01", "1.0",
  " 1") would silently grade wrongly. The prediction stays in the window, so a corrected label
  can still join.
* regression: label and prediction must both be finite numbers (bools and numeric strings are
  ``invalid``); the outcome is ``error = prediction - label``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.numeric import is_number

Status = Literal["matched", "unknown", "late", "duplicate", "invalid"]
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class JoinResult:
    status: Status
    request_id: str | None
    variant: str | None = None
    prediction: Any = None
    label: Any = None
    correct: bool | None = None  # classification, when matched
    error: float | None = None  # regression, when matched: prediction - label
    delay_s: float | None = None  # label time - prediction time, when matched
    extra: Any = None  # the opaque value given to record(), when matched
    reason: str | None = None  # why, when invalid


class FeedbackJoiner:
    """Bounded window request id -> (variant, prediction, ts, extra), joined with labels.

    Memory: at most ``max_entries`` predictions plus ``remember`` ids each of recently evicted
    and recently joined requests (to tell ``late`` and ``duplicate`` from ``unknown``; older
    ones read as ``unknown``). Measured with tracemalloc: about 270 bytes per prediction with
    UUID request ids, so ~30 MB at the default 100,000. Age eviction follows insertion order:
    if the clock steps back, an entry with a young timestamp can shield older ones behind it
    until the count bound or its own age removes it. Thread-safe (one lock).
    """

    def __init__(
        self,
        *,
        task: str,
        max_entries: int = 100_000,
        max_age_s: float = 3600.0,
        remember: int = 10_000,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {json_text(task)}")
        for name, v in (("max_entries", max_entries), ("remember", remember)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {json_text(v)}")
        if not is_number(max_age_s) or not max_age_s > 0:
            raise ValueError(
                f"max_age_s must be a positive finite number, got {json_text(max_age_s)}"
            )
        self.task = task
        self.max_entries = max_entries
        self.max_age_s = float(max_age_s)
        self.remember = remember
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, Any, float, Any]] = OrderedDict()
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._joined: OrderedDict[str, None] = OrderedDict()
        self._counts = dict.fromkeys(
            (
                "recorded",
                "duplicate_records",
                "matched",
                "unknown",
                "late",
                "duplicate",
                "invalid",
                "evicted_age",
                "evicted_count",
            ),
            0,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def record(
        self, request_id: str, variant: str, prediction: Any, ts: float, extra: Any = None
    ) -> bool:
        """Remember a prediction. ``False`` (and counted) if the id is already in the window:
        the first prediction is kept. Arguments come from the agent's own serving path, so
        wrong types raise ``TypeError``/``ValueError``."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty str, got {json_text(request_id)}")
        if not isinstance(variant, str) or not variant:
            raise ValueError(f"variant must be a non-empty str, got {json_text(variant)}")
        prediction = _plain(prediction)
        if not isinstance(prediction, (str, int, float)):
            raise TypeError(
                f"prediction must be a str, int, float or bool, got {type(prediction).__name__}"
            )
        # A NaN prediction is recorded; grading it says what is wrong with it.
        if self.task == "regression" and not is_number(prediction, finite=False):
            raise TypeError(
                f"a regression prediction must be a number, got {json_text(prediction)}"
            )
        if not is_number(ts):
            raise ValueError(f"ts must be a finite number, got {json_text(ts)}")
        with self._lock:
            self._expire(ts)
            if request_id in self._entries:
                self._counts["duplicate_records"] += 1
                return False
            self._entries[request_id] = (variant, prediction, float(ts), extra)
            self._counts["recorded"] += 1
            while len(self._entries) > self.max_entries:
                old, _ = self._entries.popitem(last=False)
                self._remember(self._evicted, old)
                self._counts["evicted_count"] += 1
        return True

    def join(self, request_id: Any, label: Any, now: float) -> JoinResult:
        """Grade the prediction of ``request_id`` with ``label`` received at ``now``."""
        if not isinstance(request_id, str) or not request_id:
            return self._invalid(
                None, label, f"id must be a non-empty str, got {json_text(request_id)}"
            )
        if not is_number(now):
            raise ValueError(f"now must be a finite number, got {json_text(now)}")
        label = _plain(label)
        with self._lock:
            self._expire(now)
            entry = self._entries.get(request_id)
            if entry is None:
                if request_id in self._joined:
                    status: Status = "duplicate"
                elif request_id in self._evicted:
                    status = "late"
                else:
                    status = "unknown"
                self._counts[status] += 1
                return JoinResult(status, request_id, label=label)
            variant, prediction, ts, extra = entry
            # True/False when a class was graded, the error when a value was.
            outcome: bool | float | None
            if self.task == "classification":
                outcome, reason = _grade_class(prediction, label)
            else:
                outcome, reason = _grade_regression(prediction, label)
            if reason is not None:
                self._counts["invalid"] += 1
                return JoinResult(
                    "invalid", request_id, variant, prediction, label, reason=reason, extra=extra
                )
            del self._entries[request_id]
            self._remember(self._joined, request_id)
            self._counts["matched"] += 1
        return JoinResult(
            "matched",
            request_id,
            variant,
            prediction,
            label,
            correct=outcome if isinstance(outcome, bool) else None,
            error=None if isinstance(outcome, bool) else outcome,
            delay_s=now - ts,
            extra=extra,
        )

    def join_message(self, message: Any, now: float) -> JoinResult:
        """:meth:`join` for a decoded feedback message ``{"id": ..., "label": ...}``."""
        if not isinstance(message, Mapping):
            return self._invalid(
                None, None, f"feedback must be an object, got {type(message).__name__}"
            )
        for field in ("id", "label"):
            if field not in message:
                return self._invalid(None, None, f"feedback has no {json_text(field)} field")
        return self.join(message["id"], message["label"], now)

    def expire(self, now: float) -> int:
        """Evict predictions older than ``max_age_s`` at ``now``; returns how many."""
        with self._lock:
            return self._expire(now)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "size": len(self._entries)}

    def _expire(self, now: float) -> int:
        limit = now - self.max_age_s
        n = 0
        entries = self._entries
        while entries:
            rid, entry = next(iter(entries.items()))
            if entry[2] >= limit:
                break
            entries.popitem(last=False)
            self._remember(self._evicted, rid)
            n += 1
        self._counts["evicted_age"] += n
        return n

    def _remember(self, memory: OrderedDict[str, None], rid: str) -> None:
        memory[rid] = None
        if len(memory) > self.remember:
            memory.popitem(last=False)

    def _invalid(self, request_id: str | None, label: Any, reason: str) -> JoinResult:
        with self._lock:
            self._counts["invalid"] += 1
        return JoinResult("invalid", request_id, label=label, reason=reason)


def _plain(x: Any) -> Any:
    """numpy scalars (what ONNX outputs hold) to the Python value they stand for."""
    return x.item() if isinstance(x, np.generic) else x


def _describe(x: Any) -> str:
    # JSON shows the type too: "1" is a string, 1 a number.
    return json_text(x)


def _grade_class(prediction: Any, label: Any) -> tuple[bool | None, str | None]:
    if isinstance(label, str) and isinstance(prediction, str):
        return label == prediction, None
    numeric = (int, float)  # bool is an int: True is the class 1
    if isinstance(label, numeric) and isinstance(prediction, numeric):
        if isinstance(label, float) and not math.isfinite(label):
            return None, f"label must be finite, got {json_text(label)}"
        return label == prediction, None
    if not isinstance(label, (str, int, float)):
        return None, f"label must be a str or a number, got {_describe(label)}"
    return None, f"type mismatch: label {_describe(label)} vs prediction {_describe(prediction)}"


def _grade_regression(prediction: Any, label: Any) -> tuple[float | None, str | None]:
    if not is_number(label):
        return None, f"label must be a finite number, got {_describe(label)}"
    if not is_number(prediction):
        return None, f"type mismatch: prediction {_describe(prediction)} is not a finite number"
    return float(prediction) - float(label), None
