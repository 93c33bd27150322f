"""Rollout state in the control database (tables of our own, next to controldb's).

Everything a rollout needs to continue after a control-node restart lives
here: the batches, each device's previous and planned desired documents, what
was published and when. Writers that can race (the daemon and a CLI driving
the same rollout) change state with compare-and-set updates, so a step is
taken, and its event written, once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edgeloop_control.infra.db import ControlDB

RUNNING = "running"
ROLLING_BACK = "rolling_back"
COMPLETED = "completed"
ROLLED_BACK = "rolled_back"
ACTIVE = (RUNNING, ROLLING_BACK)
FINAL = (COMPLETED, ROLLED_BACK)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    selector TEXT NOT NULL,
    reason TEXT,
    n_batches INTEGER NOT NULL,
    current_batch INTEGER NOT NULL DEFAULT 0,
    artifact_published_at REAL,
    rollback_artifacts_at REAL,
    failure TEXT,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS rollouts_state ON rollouts(state);
CREATE TABLE IF NOT EXISTS rollout_batches (
    rollout_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    started_at REAL,
    published_at REAL,
    passed_at REAL,
    failed_at REAL,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL,
    device TEXT NOT NULL,
    batch INTEGER NOT NULL,
    position INTEGER NOT NULL,
    previous_doc TEXT,
    target_doc TEXT,
    target_revision INTEGER,
    published_at REAL,
    online_at_publish INTEGER,
    seen_online INTEGER NOT NULL DEFAULT 0,
    last_started_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    loaded_at REAL,
    health TEXT,
    failure TEXT,
    rollback_doc TEXT,
    rolled_back_at REAL,
    PRIMARY KEY (rollout_id, device)
);
"""

_JSON = {"target", "config", "selector", "previous_doc", "target_doc", "health", "rollback_doc"}


@dataclass
class Row:
    """A row as a dict with attribute access; JSON columns decoded."""

    data: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None


def _decode(row: sqlite3.Row) -> Row:
    out = dict(row)
    for key in _JSON & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return Row(out)


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v, sort_keys=True) if k in _JSON and v is not None else v
        for k, v in fields.items()
    }


class RolloutStore:
    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.conn.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, unless the caller (another policy) already holds one."""
        if self.db.conn.in_transaction:
            yield self.db.conn
        else:
            with self.db.transaction() as conn:
                yield conn

    # -- reads -----------------------------------------------------------------

    def rollout(self, rollout_id: str) -> Row | None:
        row = self.db.conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return _decode(row) if row else None

    def rollouts(self, *, states: tuple[str, ...] | None = None) -> list[Row]:
        query, args = "SELECT * FROM rollouts", []
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = list(states)
        rows = self.db.conn.execute(query + " ORDER BY created_at, id", args).fetchall()
        return [_decode(r) for r in rows]

    def batches(self, rollout_id: str) -> list[Row]:
        rows = self.db.conn.execute(
            "SELECT * FROM rollout_batches WHERE rollout_id = ? ORDER BY idx", (rollout_id,)
        ).fetchall()
        return [_decode(r) for r in rows]

    def batch(self, rollout_id: str, idx: int) -> Row:
        row = self.db.conn.execute(
            "SELECT * FROM rollout_batches WHERE rollout_id = ? AND idx = ?", (rollout_id, idx)
        ).fetchone()
        if row is None:
            raise KeyError(f"rollout {rollout_id} has no batch {idx}")
        return _decode(row)

    def devices(self, rollout_id: str, *, batch: int | None = None) -> list[Row]:
        query = "SELECT * FROM rollout_devices WHERE rollout_id = ?"
        args: list[Any] = [rollout_id]
        if batch is not None:
            query += " AND batch = ?"
            args.append(batch)
        rows = self.db.conn.execute(query + " ORDER BY batch, position", args).fetchall()
        return [_decode(r) for r in rows]

    def device(self, rollout_id: str, device: str) -> Row:
        row = self.db.conn.execute(
            "SELECT * FROM rollout_devices WHERE rollout_id = ? AND device = ?",
            (rollout_id, device),
        ).fetchone()
        if row is None:
            raise KeyError(f"device {device} is not part of rollout {rollout_id}")
        return _decode(row)

    def active_devices(self) -> dict[str, str]:
        """{device: rollout id} for every device in a running or rolling-back rollout."""
        rows = self.db.conn.execute(
            "SELECT d.device, r.id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id "
            f"WHERE r.state IN ({', '.join('?' * len(ACTIVE))})",
            ACTIVE,
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    # -- writes ----------------------------------------------------------------

    def insert(
        self,
        conn: sqlite3.Connection,
        rollout: dict[str, Any],
        batches: list[list[str]],
        previous: dict[str, dict[str, Any] | None],
    ) -> None:
        fields = _encode(rollout)
        conn.execute(
            f"INSERT INTO rollouts({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
            list(fields.values()),
        )
        for idx, devices in enumerate(batches):
            conn.execute(
                "INSERT INTO rollout_batches(rollout_id, idx) VALUES (?, ?)", (rollout["id"], idx)
            )
            for position, device in enumerate(devices):
                doc = previous.get(device)
                conn.execute(
                    "INSERT INTO rollout_devices"
                    "(rollout_id, device, batch, position, previous_doc) VALUES (?, ?, ?, ?, ?)",
                    (rollout["id"], device, idx, position, json.dumps(doc, sort_keys=True)),
                )

    def update_rollout(
        self, rollout_id: str, fields: dict[str, Any], *, where: dict[str, Any] | None = None
    ) -> bool:
        """Set ``fields`` if the row still matches ``where``; True if it did."""
        return self._update("rollouts", {"id": rollout_id}, fields, where)

    def update_batch(
        self,
        rollout_id: str,
        idx: int,
        fields: dict[str, Any],
        *,
        where: dict[str, Any] | None = None,
    ) -> bool:
        return self._update(
            "rollout_batches", {"rollout_id": rollout_id, "idx": idx}, fields, where
        )

    def update_device(
        self,
        rollout_id: str,
        device: str,
        fields: dict[str, Any],
        *,
        where: dict[str, Any] | None = None,
    ) -> bool:
        return self._update(
            "rollout_devices", {"rollout_id": rollout_id, "device": device}, fields, where
        )

    def _update(
        self,
        table: str,
        key: dict[str, Any],
        fields: dict[str, Any],
        where: dict[str, Any] | None,
    ) -> bool:
        encoded = _encode(fields)
        conditions = {**key, **(where or {})}
        sets = ", ".join(f"{k} = ?" for k in encoded)
        clauses = " AND ".join(f"{k} IS ?" for k in conditions)
        cur = self.db.conn.execute(
            f"UPDATE {table} SET {sets} WHERE {clauses}",
            [*encoded.values(), *conditions.values()],
        )
        return cur.rowcount == 1
