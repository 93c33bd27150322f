"""Finding rows that are already stored, by their uint64 key.

A duplicate of a row has the same event timestamp, hence the same event date,
so it can only live in that date's partitions (of any version of the view).
Looking there alone keeps the work proportional to the days an ingest touches,
not to the size of the store. For views stamped at ingest time the date is
meaningless and every partition is searched.

The keys of a (view, day) are cached per process and refreshed with only the
files committed since, so a long-lived ingester (the MQTT bridge sending small
batches) does not re-read a day's keys for every batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeloop_control.featurestore.catalog import FileEntry
from edgeloop_control.featurestore.offline import read_keys
from edgeloop_control.featurestore.schema import KEY_COLUMN

ALL_DAYS = -(2**62)  # cache slot for views searched across every partition


@dataclass
class _DayKeys:
    file_ids: set[int] = field(default_factory=set)
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))


class KeyIndex:
    """Sorted arrays of stored keys per (view, day), loaded lazily from the files."""

    def __init__(self, root: Path, max_slots: int = 64) -> None:
        self._root = root
        self._max_slots = max_slots
        self._slots: OrderedDict[tuple[str, int], _DayKeys] = OrderedDict()
        self._lock = threading.Lock()

    def stored(self, view: str, day: int, entries: Sequence[FileEntry]) -> np.ndarray:
        """Sorted keys of the committed ``entries`` (all the files of that slot)."""
        with self._lock:
            slot = self._slots.pop((view, day), None) or _DayKeys()
            current = {entry.id for entry in entries}
            if not slot.file_ids <= current:
                slot = _DayKeys()  # files vanished (store reset): start over
            fresh = [entry for entry in entries if entry.id not in slot.file_ids]
            if fresh:
                loaded = [read_keys(self._root, entry, KEY_COLUMN) for entry in fresh]
                slot.keys = np.union1d(slot.keys, np.concatenate(loaded))
                slot.file_ids |= {entry.id for entry in fresh}
            self._remember((view, day), slot)
            return slot.keys

    def add(self, view: str, day: int, entry: FileEntry, keys: np.ndarray) -> None:
        """Record keys just committed, sparing the next ingest a re-read."""
        with self._lock:
            slot = self._slots.pop((view, day), None)
            if slot is None:
                return  # never loaded: the next lookup reads the files anyway
            slot.keys = np.union1d(slot.keys, keys)
            slot.file_ids.add(entry.id)
            self._remember((view, day), slot)

    def _remember(self, slot_key: tuple[str, int], slot: _DayKeys) -> None:
        self._slots[slot_key] = slot
        while len(self._slots) > self._max_slots:
            self._slots.popitem(last=False)


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Boolean mask keeping the first row of each key within one batch."""
    mask = np.zeros(len(keys), dtype=bool)
    if len(keys):
        _, first = np.unique(keys, return_index=True)
        mask[first] = True
    return mask


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Membership of ``keys`` in the sorted array ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == keys
