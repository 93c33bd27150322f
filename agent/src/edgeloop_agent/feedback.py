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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeloop_agent.idring import Hasher, IdFifo, IdRing, keyed_hasher
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
    ones read as ``unknown``). Ids are kept as keyed 96-bit hashes in flat columns
    (:mod:`edgeloop_agent.idring`), variants and string classes as indices into one small
    table of names, so the cost does not depend on the id's length: ~56 bytes a prediction
    (columns for ``max_entries`` + 25 % and the index), 12 per evicted id; with tracemalloc
    1.43 MB at 20,000 + 10,000 with UUID ids, where the ordered dicts of the id strings took
    7.65 MB (``bench/bench_feedback.py``, docs/performance.md).
    ``hasher`` replaces the keyed hash (tests force collisions with it). Age eviction
    follows insertion order: if the clock steps back, an entry with a young timestamp can
    shield older ones behind it until the count bound or its own age removes it.
    Thread-safe (one lock).
    """

    def __init__(
        self,
        *,
        task: str,
        max_entries: int = 100_000,
        max_age_s: float = 3600.0,
        remember: int = 10_000,
        hasher: Hasher | None = None,
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
        self._hash = hasher if hasher is not None else keyed_hasher()
        self._lock = threading.Lock()
        # A quarter more slots than entries: holes left by joins are squeezed out at most
        # once per max_entries / 4 predictions.
        self._window = IdRing(
            max_entries + max(16, max_entries // 4),
            self._hash,
            {"ts": "d", "value": "q", "kind": "B", "variant": "i"},
        )
        self._window.moved = self._moved
        self._views()
        self._extras: dict[int, Any] = {}  # slot -> extra, for the few predictions with one
        self._names = _Names()
        # Every eviction pushes an id, so that memory is a plain FIFO, scanned only for
        # labels that missed the window; joined ids are indexed (one more slot than
        # remembered: a new id goes in before the oldest goes out).
        self._evicted = IdFifo(remember)
        self._joined = IdRing(remember + 1, self._hash)
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
        return self._window.live

    @property
    def collisions(self) -> int:
        """Lookups that met another id's 64-bit hash word (told apart by the check word)."""
        return self._window.collisions + self._joined.collisions

    def nbytes(self) -> int:
        """Bytes of the window's and the remembered ids' columns and indexes."""
        return self._window.nbytes() + self._evicted.nbytes() + self._joined.nbytes()

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
        h, v = self._hash(request_id)
        with self._lock:
            self._expire(ts)
            # Names first: dropping unused names reads every held slot (so none may be held
            # before its columns are written) and renumbers them (so not between the two).
            if len(self._names.names) + 2 > self._names.limit:
                self._compact_names()
            variant_index = self._intern(variant)
            kind, value = self._encode(prediction)
            window = self._window
            slot = window.add(h, v)  # may move the columns: views read after it
            if slot < 0:
                self._counts["duplicate_records"] += 1
                return False
            self._ts[slot] = float(ts)
            self._variant[slot] = variant_index
            self._kind[slot] = kind
            if kind == _FLOAT:
                self._floats[slot] = value
            else:
                self._value[slot] = value
            if extra is not None:
                self._extras[slot] = extra
            self._counts["recorded"] += 1
            while window.live > self.max_entries:
                self._evict()
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
        h, v = self._hash(request_id)
        with self._lock:
            self._expire(now)
            window = self._window
            slot = window.find(h, v)
            if slot < 0:
                if self._joined.find(h, v) >= 0:
                    status: Status = "duplicate"
                elif self._evicted.contains(h, v):
                    status = "late"
                else:
                    status = "unknown"
                self._counts[status] += 1
                return JoinResult(status, request_id, label=label)
            variant = self._names.names[self._variant[slot]]
            prediction = self._get_prediction(slot)
            ts = self._ts[slot]
            extra = self._extras.get(slot)
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
            window.remove(slot)
            self._extras.pop(slot, None)
            self._joined.push(h, v, self.remember)
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
            return {**self._counts, "size": self._window.live}

    def _expire(self, now: float) -> int:
        limit = now - self.max_age_s
        n = 0
        window, stamps = self._window, self._ts
        while True:
            slot = window.oldest()
            if slot < 0 or stamps[slot] >= limit:
                break
            self._evict()
            n += 1
        self._counts["evicted_age"] += n
        return n

    def _evict(self) -> None:
        window = self._window
        slot = window.pop_oldest()
        self._extras.pop(slot, None)
        self._evicted.push(window.hs[slot], window.vs[slot])

    def _encode(self, prediction: Any) -> tuple[int, Any]:
        """How a prediction is held: a kind and an 8-byte value (int or float)."""
        # bool before int: True is an int too, and must come back as True.
        if isinstance(prediction, bool):
            return _BOOL, int(prediction)
        if isinstance(prediction, int) and _INT64_MIN <= prediction <= _INT64_MAX:
            return _INT, prediction
        if isinstance(prediction, float):
            return _FLOAT, prediction
        return _NAMED, self._intern(prediction)  # a string class, or an int beyond 64 bits

    def _get_prediction(self, slot: int) -> Any:
        kind = self._kind[slot]
        if kind == _FLOAT:
            return self._floats[slot]
        value = self._value[slot]
        if kind == _INT:
            return value
        if kind == _BOOL:
            return bool(value)
        return self._names.names[value]

    def _intern(self, name: Any) -> int:
        names = self._names
        i = names.index.get(name)
        if i is None:
            i = names.index[name] = len(names.names)
            names.names.append(name)
        return i

    def _compact_names(self) -> None:
        """Drop names no prediction in the window refers to any more (variants of past
        deployments, classes of past models); keeps the table bounded by the window."""
        window, names = self._window, self._names
        slots = window.live_slots()
        cols = window.cols
        kinds = cols["kind"].array[slots]
        named = slots[kinds == _NAMED]
        used = np.union1d(cols["variant"].array[slots], cols["value"].array[named])
        remap = np.zeros(len(names.names), dtype=np.int64)
        remap[used] = np.arange(len(used))
        cols["variant"].array[slots] = remap[cols["variant"].array[slots]]
        cols["value"].array[named] = remap[cols["value"].array[named]]
        names.names = [names.names[i] for i in used.tolist()]
        names.index = {name: i for i, name in enumerate(names.names)}
        names.limit = max(_MIN_NAMES, 2 * len(names.names))

    def _moved(self, old_slots: list[int]) -> None:
        if self._extras:
            new = {old: i for i, old in enumerate(old_slots)}
            self._extras = {new[old]: e for old, e in self._extras.items()}
        self._views()

    def _views(self) -> None:
        """The window's column views, one attribute lookup away on the hot paths; taken
        again whenever the window moves to fresh storage."""
        cols = self._window.cols
        self._ts = cols["ts"].items
        self._value, self._floats = cols["value"].items, cols["value"].floats
        self._kind = cols["kind"].items
        self._variant = cols["variant"].items

    def _invalid(self, request_id: str | None, label: Any, reason: str) -> JoinResult:
        with self._lock:
            self._counts["invalid"] += 1
        return JoinResult("invalid", request_id, label=label, reason=reason)


# How a prediction is held in the window's 8-byte value column.
_FLOAT, _INT, _BOOL, _NAMED = 1, 2, 3, 4
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MIN_NAMES = 256


class _Names:
    """Variants and string classes (and ints beyond 64 bits), each held once."""

    def __init__(self) -> None:
        self.names: list[Any] = []
        self.index: dict[Any, int] = {}
        self.limit = _MIN_NAMES


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
