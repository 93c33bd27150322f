"""The feedback window's compact storage (issue 13): the ring of hashed ids behind
:class:`FeedbackJoiner` against a plain reference of the documented behaviour, forced hash
collisions, and its memory per prediction."""

from __future__ import annotations

import gc
import random
import tracemalloc
import uuid
import zlib
from collections import OrderedDict, deque
from typing import Any

import numpy as np
import pytest

from edgeloop_agent.feedback import FeedbackJoiner
from edgeloop_agent.idring import IdFifo, IdRing, keyed_hasher


class Reference:
    """The window as documented, in ordered dicts of the ids themselves (the storage the
    agent used before issue 13)."""

    def __init__(self, max_entries: int, max_age_s: float, remember: int) -> None:
        self.max_entries, self.max_age_s, self.remember = max_entries, max_age_s, remember
        self.entries: OrderedDict[str, tuple[str, Any, float, Any]] = OrderedDict()
        self.evicted: deque[str] = deque(maxlen=remember)
        self.joined: OrderedDict[str, None] = OrderedDict()
        self.counts: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + n

    def expire(self, now: float) -> int:
        n = 0
        while self.entries:
            rid, entry = next(iter(self.entries.items()))
            if entry[2] >= now - self.max_age_s:
                break
            self.entries.popitem(last=False)
            self.evicted.append(rid)
            n += 1
        self.count("evicted_age", n)
        return n

    def record(self, rid: str, variant: str, prediction: Any, ts: float, extra: Any) -> bool:
        self.expire(ts)
        if rid in self.entries:
            self.count("duplicate_records")
            return False
        self.entries[rid] = (variant, prediction, ts, extra)
        self.count("recorded")
        while len(self.entries) > self.max_entries:
            self.evicted.append(self.entries.popitem(last=False)[0])
            self.count("evicted_count")
        return True

    def join(self, rid: str, label: Any, now: float) -> tuple[Any, ...]:
        self.expire(now)
        entry = self.entries.get(rid)
        if entry is None:
            status = (
                "duplicate" if rid in self.joined else "late" if rid in self.evicted else "unknown"
            )
            self.count(status)
            return (status,)
        variant, prediction, ts, extra = entry
        if isinstance(label, str) != isinstance(prediction, str):
            self.count("invalid")
            return ("invalid", variant, prediction, extra)
        del self.entries[rid]
        self.joined[rid] = None
        if len(self.joined) > self.remember:
            self.joined.popitem(last=False)
        self.count("matched")
        return ("matched", variant, prediction, label == prediction, now - ts, extra)


def _seen(res: Any) -> tuple[Any, ...]:
    if res.status == "invalid":
        return (res.status, res.variant, res.prediction, res.extra)
    if res.status == "matched":
        return (res.status, res.variant, res.prediction, res.correct, res.delay_s, res.extra)
    return (res.status,)


@pytest.mark.parametrize(
    ("seed", "max_entries", "remember", "hasher", "churn"),
    [
        (1, 7, 5, None, False),
        (2, 50, 20, None, False),
        (3, 300, 64, None, False),
        (6, 20, 10, None, True),
        (7, 150, 10, None, True),
        # Every id shares one 64-bit word: only the check word tells them apart.
        (4, 40, 16, lambda rid: (12345, zlib.crc32(rid.encode())), False),
        # A handful of 64-bit words: long probe chains through tombstones.
        (5, 60, 30, lambda rid: (zlib.adler32(rid.encode()) % 3, zlib.crc32(rid.encode())), False),
    ],
)
def test_the_window_behaves_as_the_reference(
    seed: int, max_entries: int, remember: int, hasher: Any, churn: bool
) -> None:
    """Random records, joins (making holes), repeats, expiry and clock steps back, long
    enough for the ring to wrap, squeeze its holes out and rebuild its index many times."""
    rng = random.Random(seed)
    j = FeedbackJoiner(
        task="classification",
        max_entries=max_entries,
        max_age_s=40.0,
        remember=remember,
        hasher=hasher,
    )
    ref = Reference(max_entries, 40.0, remember)
    ids = [f"req-{i}" for i in range(3 * max_entries)]
    now, unit = 0.0, 4.0 / max_entries  # the window fills in well under max_age_s...
    for step in range(6_000):
        jump = rng.random()
        if step % 2_500 == 2_499 or jump < 1 / (8 * max_entries):
            now += 45.0  # ... and sometimes ages out
        elif jump < 0.03:
            now -= 2.0  # the clock steps back
        else:
            now += unit * rng.choice((0.0, 0.5, 1.0, 2.0))
        op = rng.random()
        rid = rng.choice(ids)
        if op < 0.55:
            if churn:  # names come and go: the table of names is squeezed many times
                variant = f"v{rng.randrange(400)}"
                prediction = rng.choice((f"c{rng.randrange(2_000)}", 1, 2**64))
            else:
                variant = rng.choice(("v1", "v2", "shadow"))
                prediction = rng.choice((0, 1, 2, "cat", True))
            extra = f"s{step}" if rng.random() < 0.2 else None
            assert j.record(rid, variant, prediction, now, extra) == ref.record(
                rid, variant, prediction, now, extra
            )
        elif op < 0.95:
            label = rng.choice((0, 1, 2, "cat", "dog", "c7", 2**64))
            assert _seen(j.join(rid, label, now)) == ref.join(rid, label, now), step
        else:
            assert j.expire(now) == ref.expire(now)
        assert len(j) == len(ref.entries)
    stats = j.stats()
    assert stats.pop("size") == len(ref.entries)
    assert {k: v for k, v in stats.items() if v} == ref.counts
    assert stats["evicted_age"] and stats["evicted_count"] and stats["late"]
    assert stats["duplicate"] and stats["duplicate_records"] and stats["invalid"]
    if hasher is not None:
        assert j.collisions > 0  # the check word was needed, and it was used


def test_a_collision_on_the_64_bit_word_never_attaches_a_label_to_another_prediction() -> None:
    words = {"a": (7, 1), "b": (7, 2), "c": (7, 3)}
    j = FeedbackJoiner(task="classification", hasher=words.__getitem__)
    j.record("a", "v1", 1, ts=0.0, extra="sample-a")
    assert j.join("b", 1, now=1.0).status == "unknown"
    j.record("b", "v2", 0, ts=1.0)
    res = j.join("b", 0, now=2.0)
    assert (res.status, res.variant, res.extra) == ("matched", "v2", None)
    assert j.join("c", 1, now=2.0).status == "unknown"
    assert j.join("b", 0, now=2.0).status == "duplicate"
    res = j.join("a", 1, now=3.0)
    assert (res.status, res.variant, res.extra) == ("matched", "v1", "sample-a")
    assert j.collisions >= 3


@pytest.mark.parametrize(
    "prediction", [True, False, 0, -(2**63), 2**63 - 1, 2**63, -(2**70), 1.5, -0.0, "Ünïcode"]
)
def test_every_prediction_comes_back_as_recorded(prediction: Any) -> None:
    j = FeedbackJoiner(task="classification")
    j.record("r", "v", prediction, ts=0.0)
    res = j.join("r", prediction, now=0.0)
    assert res.status == "matched" and res.correct is True
    assert type(res.prediction) is type(prediction) and res.prediction == prediction


def test_a_nan_regression_prediction_comes_back_as_nan() -> None:
    j = FeedbackJoiner(task="regression")
    j.record("r", "v", np.float32("nan"), ts=0.0)
    res = j.join("r", 1.0, now=0.0)
    assert res.status == "invalid" and res.reason is not None and "NaN" in res.reason


def test_names_of_past_deployments_are_dropped() -> None:
    """Each variant and string class is held once; names no prediction in the window
    refers to any more go, so a device through many deployments holds a bounded table."""
    j = FeedbackJoiner(task="classification", max_entries=10)
    for i in range(5_000):
        j.record(f"r{i}", f"variant-{i // 3}", f"class-{i}", ts=float(i) / 1000)
    assert len(j._names.names) <= 512
    res = j.join("r4999", "class-4999", now=5.0)
    assert (res.status, res.variant, res.correct) == ("matched", "variant-1666", True)
    assert j.join("r4990", "class-4990", now=5.0).variant == "variant-1663"


def _fill(j: FeedbackJoiner, start: int, stop: int) -> None:
    for i in range(start, stop):
        rid = str(uuid.UUID(int=i, version=4))
        j.record(rid, "v1" if i % 2 else "v2", i % 3, i / 5000, f"s{i}" if i % 20 == 0 else None)


def test_memory_per_prediction_with_uuid_ids() -> None:
    """tracemalloc, everything the window keeps: 20,000 predictions with UUID ids (5 %
    with a sample id) and 10,000 evicted ids. Ordered dicts of the id strings took ~380
    bytes per prediction here (bench/bench_feedback.py)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        j = FeedbackJoiner(task="classification", max_entries=20_000, remember=10_000)
        _fill(j, 0, 30_000)
        gc.collect()
        full = tracemalloc.get_traced_memory()[0] - base
        _fill(j, 30_000, 90_000)  # the ring wraps three times
        gc.collect()
        later = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(j) == 20_000
    assert full / 20_000 < 100, full
    assert later <= full * 1.05
    assert j.nbytes() < full


def test_a_quiet_window_holds_what_it_needs() -> None:
    """Storage grows by doubling: the default 100,000-entry window costs little until
    it is used."""
    j = FeedbackJoiner(task="classification")
    empty = j.nbytes()
    assert empty < 100_000
    _fill(j, 0, 5_000)
    assert empty < j.nbytes() < 25 * empty


def test_ring_index_survives_many_removals_and_rebuilds() -> None:
    """Add and remove around the ring far more times than it has cells: tombstones are
    cleared (the index stays at most 70 % used) and every held id is still found."""
    hasher = keyed_hasher(b"k" * 16)
    ring = IdRing(64, hasher)
    held: dict[str, int] = {}
    moves: list[int] = []

    def moved(old_slots: list[int]) -> None:  # holes squeezed out: slots change
        new = {old: i for i, old in enumerate(old_slots)}
        for rid in held:
            held[rid] = new[held[rid]]
        moves.append(len(old_slots))

    ring.moved = moved
    rng = random.Random(7)
    for i in range(20_000):
        if len(held) < 40 and rng.random() < 0.6:
            rid = f"id{i}"
            held[rid] = ring.add(*hasher(rid))
        elif held:
            rid = rng.choice(list(held))
            ring.remove(held.pop(rid))
        assert ring._used * 10 <= (ring._mask + 1) * 7
    for rid, slot in held.items():
        assert ring.find(*hasher(rid)) == slot
    assert ring.find(*hasher("never")) == -1
    assert ring.live == len(held) and len(moves) > 100


def test_fifo_keeps_the_last_ids_pushed() -> None:
    fifo = IdFifo(5, initial=2)
    for i in range(12):
        fifo.push(i, i + 100)
    assert [fifo.contains(i, i + 100) for i in range(12)] == [False] * 7 + [True] * 5
    assert not fifo.contains(11, 5)  # same 64-bit word, another check word


def test_keyed_hasher_depends_on_the_key() -> None:
    a, b = keyed_hasher(b"a" * 16), keyed_hasher(b"b" * 16)
    assert a("req-1") == a("req-1") != b("req-1")
    h, v = a("\ud800 lone surrogate")
    assert 0 <= h < 2**64 and 0 <= v < 2**32


def test_dropping_names_never_reads_a_slot_not_yet_written() -> None:
    """Names are held before a slot is taken: squeezing the name table never reads a slot
    whose columns still hold an old occupant's name numbers (from a larger table), nor
    renumbers a name between the variant and the class of one record."""
    j = FeedbackJoiner(task="classification", max_entries=300)
    ts = 0.0
    for i in range(2_000):  # many live classes: the table's bound grows
        ts += 0.001
        j.record(f"a{i}", "v", f"class-{i}", ts)
    for i in range(400):  # one class, numbered high, in every slot
        ts += 0.001
        j.record(f"b{i}", "v", "same", ts)
    for i in range(1_000):  # new names only: the table is squeezed, then again
        ts += 0.001
        assert j.record(f"c{i}", f"variant-{i}", f"new-{i}", ts)
    res = j.join("c999", "new-999", now=ts)
    assert (res.status, res.variant, res.correct) == ("matched", "variant-999", True)
