"""A read-only view of the control database for the dashboard's GET pages.

It is a :class:`ControlDB` (so :mod:`edgeloop_control.history` and the managers' read APIs
work unchanged) whose connection SQLite opened with ``mode=ro``: a page can never write to,
or take the write lock of, the daemon's database, whatever code path it goes through.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgeloop_control.controldb import ControlDB


def open_readonly(path: Path) -> ControlDB:
    db = ControlDB.__new__(ControlDB)
    db.path = Path(path)
    db.conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None, check_same_thread=False
    )
    db.conn.row_factory = sqlite3.Row
    return db
