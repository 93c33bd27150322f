"""A ring of request ids, in arrival order, found by a keyed 96-bit hash.

The feedback window (:mod:`edgeloop_agent.feedback`) keeps tens of thousands of recent
request ids. As Python strings in ordered dicts they cost ~250 bytes each plus the string;
here an id is a 64-bit hash and a 32-bit check word in flat columns, and the index is an
open-addressing table of int32 slot numbers (linear probing, tombstones, rebuilt in numpy
when they pile up), so an id costs the same whatever its length: in the feedback window
~56 bytes (its columns for 25 % spare slots and the index included), 12 in an
:class:`IdFifo`, which has no index.

Collisions: the two words come from one keyed BLAKE2b digest (a random 16-byte key per
process), so ids an application chooses cannot be made to collide on purpose. Two ids that
share the 64-bit word but not the check word are told apart (and counted in
``collisions``); a wrong match needs all 96 bits equal, for n live ids about n * 2**-96 per
lookup (20,000 ids: ~3e-25).

Columns are ``bytearray`` storage read and written one item at a time through
``memoryview`` casts (~30 ns an item, against ~100 ns for a numpy scalar) and in bulk
through numpy views of the same bytes (compaction, index rebuilds). Not thread-safe: the
owner holds a lock.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from hashlib import blake2b
from typing import Any, cast

import numpy as np

Hasher = Callable[[str], tuple[int, int]]

_EMPTY = 0  # table cells hold slot + 1; 0 is an empty cell
_TOMB = -1  # a removed entry: probes go on past it
_NUMPY = {
    "Q": np.uint64,
    "I": np.uint32,
    "B": np.uint8,
    "i": np.int32,
    "q": np.int64,
    "d": np.float64,
}


def keyed_hasher(key: bytes | None = None) -> Hasher:
    """``id -> (64-bit word, 32-bit check word)`` from one keyed BLAKE2b digest."""
    # Keying costs a compression of the key block; done once, then each id copies the state
    # (~470 ns a UUID-sized id, against ~600 ns keying each time).
    keyed = blake2b(digest_size=12, key=key if key is not None else os.urandom(16))
    split = struct.Struct("<QI").unpack

    def hasher(request_id: str) -> tuple[int, int]:
        h = keyed.copy()
        # surrogatepass: a JSON id may hold a lone surrogate; the encoding stays one-to-one.
        h.update(request_id.encode("utf-8", "surrogatepass"))
        words: tuple[int, int] = split(h.digest())
        return words

    return hasher


class _Column:
    """Fixed-size storage with an item view (fast scalars) and a numpy view (bulk)."""

    __slots__ = ("array", "floats", "items")

    def __init__(self, code: str, n: int) -> None:
        data = bytearray(n * np.dtype(_NUMPY[code]).itemsize)
        # Typed Any: memoryview.cast's overloads want a literal format.
        self.items: Any = memoryview(data).cast(cast(Any, code))
        self.array = np.frombuffer(data, dtype=_NUMPY[code])
        # An 8-byte column can hold either an int64 or a float64 per item.
        self.floats: Any = memoryview(data).cast("d") if code == "q" else None


class IdRing:
    """Up to ``max_capacity`` ids in arrival order, found by hash, removable anywhere.

    Slots are handed out in order around the ring; :meth:`remove` leaves a hole that is
    skipped at the head and squeezed out when the ring's span reaches its capacity. Storage
    starts small and doubles up to ``max_capacity`` (a quiet device pays for what it holds).
    ``extra`` names further columns (name -> ``array`` type code) the owner fills per slot.
    """

    def __init__(
        self,
        max_capacity: int,
        hasher: Hasher,
        extra: dict[str, str] | None = None,
        initial: int = 1024,
    ) -> None:
        self.max_capacity = max_capacity
        self.hasher = hasher
        self._spec = {"h": "Q", "v": "I", "live": "B", **(extra or {})}
        self.live = 0  # ids held
        self.head = 0  # slot of the oldest position (maybe a hole)
        self.span = 0  # positions from head to tail, holes included
        self.collisions = 0  # lookups that met the same 64-bit word with another check word
        # Called after a resize with the old slots in their new order (slot i held old[i]).
        self.moved: Callable[[list[int]], None] | None = None
        self.cols: dict[str, _Column] = {}
        self._alloc(min(max_capacity, initial))

    # -- lookups -----------------------------------------------------------------

    def find(self, h: int, v: int) -> int:
        """The slot holding (h, v), or -1."""
        table, hs, mask = self._table, self.hs, self._mask
        b = h & mask
        while True:
            cell = table[b]
            if cell == _EMPTY:
                return -1
            if cell > 0 and hs[cell - 1] == h:
                if self.vs[cell - 1] == v:
                    return cell - 1
                self.collisions += 1
            b = (b + 1) & mask

    # -- changes -------------------------------------------------------------------

    def add(self, h: int, v: int) -> int:
        """Append (h, v) unless it is held (one probe for both); returns its new slot, or
        -1 if it was already held."""
        if self.span == self.capacity:
            # Grow if more than half is held, else squeeze out the holes. The owner keeps
            # ``live`` below ``max_capacity``, so either leaves room.
            grow = self.capacity < self.max_capacity and self.live * 2 > self.capacity
            self._resize(min(self.max_capacity, self.capacity * 2) if grow else self.capacity)
        table, hs, mask = self._table, self.hs, self._mask
        b = h & mask
        free = -1  # the first tombstone on the way, reused
        while True:
            cell = table[b]
            if cell == _EMPTY:
                break
            if cell < 0:
                if free < 0:
                    free = b
            elif hs[cell - 1] == h:
                if self.vs[cell - 1] == v:
                    return -1
                self.collisions += 1
            b = (b + 1) & mask
        if free < 0:
            free = b
            self._used += 1
        slot = self.head + self.span
        if slot >= self.capacity:
            slot -= self.capacity
        self.span += 1
        self.live += 1
        hs[slot] = h
        self.vs[slot] = v
        self.lv[slot] = 1
        table[free] = slot + 1
        if self._used * 10 > mask * 7:  # tombstones pile up: clear them
            self._rebuild()
        return slot

    def push(self, h: int, v: int, limit: int) -> None:
        """Remember (h, v) first in first out, forgetting the oldest beyond ``limit`` ids
        (for rings that :meth:`remove` nothing; ``max_capacity`` > ``limit``)."""
        if self.add(h, v) >= 0 and self.live > limit:
            self.pop_oldest()

    def remove(self, slot: int) -> None:
        """Forget the id in ``slot`` (a live one)."""
        table, mask, want = self._table, self._mask, slot + 1
        b = self.hs[slot] & mask
        while table[b] != want:
            b = (b + 1) & mask
        table[b] = _TOMB
        self.lv[slot] = 0
        self.live -= 1
        if self.live == 0:
            self.head = self.span = 0

    def oldest(self) -> int:
        """The slot of the oldest id held (skipping holes at the head), or -1."""
        lv = self.lv
        while self.span:
            if lv[self.head]:
                return self.head
            self.head += 1
            if self.head == self.capacity:
                self.head = 0
            self.span -= 1
        return -1

    def pop_oldest(self) -> int:
        """Remove the oldest id; returns its slot (its columns still readable) or -1."""
        slot = self.oldest()
        if slot >= 0:
            self.remove(slot)
            if self.span:  # the head was this slot: step past it
                self.head = slot + 1 if slot + 1 < self.capacity else 0
                self.span -= 1
        return slot

    # -- storage -----------------------------------------------------------------

    def nbytes(self) -> int:
        return sum(c.array.nbytes for c in self.cols.values()) + self._table_array.nbytes

    def live_slots(self) -> np.ndarray:
        """Slots held, oldest first."""
        order = (self.head + np.arange(self.span)) % self.capacity
        return order[self.cols["live"].array[order] != 0]

    def _alloc(self, capacity: int) -> None:
        self.cols = {name: _Column(code, capacity) for name, code in self._spec.items()}
        self.capacity = capacity
        # The hot paths' item views, one attribute lookup away.
        self.hs, self.vs, self.lv = (self.cols[c].items for c in ("h", "v", "live"))
        # Live ids fill at most half the table, so probes stay short.
        size = 1 << max(4, (2 * capacity - 1).bit_length())
        self._mask = size - 1
        self._table_col = _Column("i", size)
        self._table = self._table_col.items
        self._table_array = self._table_col.array
        self._used = 0  # cells not empty (ids and tombstones)

    def _resize(self, capacity: int) -> None:
        """Move the ids held, in order, to slots 0.. of fresh storage."""
        keep = self.live_slots()
        old = self.cols
        self._alloc(capacity)
        n = len(keep)
        for name, col in self.cols.items():
            col.array[:n] = old[name].array[keep]
        self.head, self.span, self.live = 0, n, n
        self._rebuild()
        if self.moved is not None:
            self.moved(keep.tolist())

    def _index(self, h: int, slot: int) -> None:
        table, mask = self._table, self._mask
        b = h & mask
        while table[b] > 0:  # a tombstone is reused
            b = (b + 1) & mask
        if table[b] == _EMPTY:
            self._used += 1
        table[b] = slot + 1
        if self._used * 10 > len(table) * 7:  # tombstones pile up: clear them
            self._rebuild()

    def _rebuild(self) -> None:
        """Index every id held afresh, all at once (linear probing, round by round)."""
        table = self._table_array
        table[:] = _EMPTY
        slots = self.live_slots()
        home = (self.cols["h"].array[slots] & np.uint64(self._mask)).astype(np.int64)
        while slots.size:
            free = table[home] == _EMPTY
            cand, cells = slots[free], home[free]
            # Of several ids wanting one free cell, the first takes it; the rest probe on.
            cells, first = np.unique(cells, return_index=True)
            table[cells] = cand[first] + 1
            placed = np.zeros(slots.size, dtype=bool)
            placed[np.flatnonzero(free)[first]] = True
            slots, home = slots[~placed], (home[~placed] + 1) & self._mask
        self._used = self.live


class IdFifo:
    """The last ``limit`` ids pushed, without an index: pushing (once per evicted
    prediction) costs two item writes, looking up (only for a label that missed the
    window) one numpy scan. An id pushed twice takes two places."""

    def __init__(self, limit: int, initial: int = 1024) -> None:
        self.limit = limit
        self.n = 0  # ids held
        self.pos = 0  # the next place written
        self._alloc(min(limit, initial))

    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self._h, self._v = _Column("Q", capacity), _Column("I", capacity)
        self.hs, self.vs = self._h.items, self._v.items

    def push(self, h: int, v: int) -> None:
        if self.n == self.capacity and self.capacity < self.limit:
            # Storage grows by doubling up to ``limit``; held ids are in order from 0.
            old_h, old_v, n = self._h.array, self._v.array, self.n
            self._alloc(min(self.limit, 2 * self.capacity))
            self._h.array[:n], self._v.array[:n] = old_h, old_v
            self.pos = n
        pos = self.pos
        self.hs[pos] = h
        self.vs[pos] = v
        self.pos = pos + 1 if pos + 1 < self.capacity else 0
        if self.n < self.capacity:
            self.n += 1

    def contains(self, h: int, v: int) -> bool:
        hits = np.flatnonzero(self._h.array[: self.n] == np.uint64(h))
        return any(self.vs[i] == v for i in hits.tolist())

    def nbytes(self) -> int:
        return self._h.array.nbytes + self._v.array.nbytes
