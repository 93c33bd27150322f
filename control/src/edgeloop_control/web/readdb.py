"""A read-only view of the control database for the dashboard's GET pages.

It is a :class:`ControlDB` (so :mod:`edgeloop_control.report.history` and the managers' read APIs
work unchanged) whose connection is read-only (SQLite's ``mode=ro``, PostgreSQL's read-only
transactions): a page can never write to, or take the write lock of, the daemon's database,
whatever code path it goes through.

A page about some devices scopes the view to them (:meth:`ReadOnlyDB.scoped`): the
inventory reads (``devices``, ``all_desired``) then fetch only those rows, so a page of 200
devices costs the same in a fleet of 10,000 as in a fleet of 200.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB, _device_row


class ReadOnlyDB(ControlDB):
    def __init__(self, location: str | Path) -> None:  # no super(): it would create the schema
        self.location = location
        self.postgres = sql.is_postgres(location)
        if not self.postgres:
            self.path = Path(location)
        self.conn = sql.connect(location, readonly=True)
        self._scope: tuple[str, ...] | None = None

    @contextmanager
    def scoped(self, devices: Sequence[str]) -> Iterator[ReadOnlyDB]:
        previous, self._scope = self._scope, tuple(devices)
        try:
            yield self
        finally:
            self._scope = previous

    def _where(self) -> tuple[str, list[Any]]:
        if self._scope is None:
            return "", []
        return f" WHERE device IN ({', '.join('?' * len(self._scope))})", list(self._scope)

    def devices(self) -> list[dict[str, Any]]:
        where, args = self._where()
        rows = self.conn.execute(f"SELECT * FROM devices{where} ORDER BY device", args)
        return [_device_row(r) for r in rows]

    def all_desired(self) -> dict[str, dict[str, Any]]:
        where, args = self._where()
        rows = self.conn.execute(f"SELECT device, doc FROM desired{where} ORDER BY device", args)
        return {r["device"]: json.loads(r["doc"]) for r in rows}


def open_readonly(location: str | Path) -> ReadOnlyDB:
    return ReadOnlyDB(location)
