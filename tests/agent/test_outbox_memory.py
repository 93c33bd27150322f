"""The outbox's SQLite memory stays small (issue 13: memory that stays put).

Two things filled at an agent's steady state and stayed resident: SQLite's default page
cache (2 MB a connection; the outbox asks for 256 KiB) and Python's cache of prepared
statements, one per length of the ``id IN (?, ...)`` lists that acks of every size made
(~2 MB; the lists are now padded to powers of two). Measured with SQLite's own count of
the memory it holds (``sqlite3_memory_used``, the library this interpreter's ``sqlite3``
module loaded).
"""

from __future__ import annotations

import ctypes
import random
import sqlite3
from pathlib import Path

import pytest

from edgeloop_agent.outbox import Outbox


def _sqlite_memory_used() -> int | None:
    assert sqlite3.sqlite_version  # loaded
    with open("/proc/self/maps") as fh:
        lib = next((line.split()[-1] for line in fh if "libsqlite3" in line), None)
    if lib is None:
        return None
    sq = ctypes.CDLL(lib)
    sq.sqlite3_memory_used.restype = ctypes.c_int64
    return int(sq.sqlite3_memory_used())


def test_the_outbox_sqlite_memory_stays_under_a_megabyte(tmp_path: Path) -> None:
    before = _sqlite_memory_used()
    if before is None:
        pytest.skip("sqlite3 is linked statically here: SQLite's memory count is not reachable")
    box = Outbox(tmp_path / "outbox.db", max_bytes=64 << 20, device_id="d1")
    rng = random.Random(1)
    try:
        payload = {"features": [0.125] * 32, "prediction": 1, "pad": "x" * 120}
        for i in range(8_000):  # ~4 MB of rows: far more pages than either cache holds
            assert box.put("edgeloop/d1/samples", {**payload, "seq": i}, "sample") is not None
            if i % 50 == 49:  # acks in every size, as PUBACKs come back
                box.ack([m.id for m in box.peek(rng.randint(1, 200))])
        for batch in iter(lambda: box.peek(500), []):
            box.ack([m.id for m in batch])
        assert box.depth() == 0
        held = (_sqlite_memory_used() or 0) - before
    finally:
        box.close()
    assert held < 1 << 20, held
