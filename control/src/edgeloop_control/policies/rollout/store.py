"""Rollout state in the control database (tables of our own, next to controldb's).

Everything a rollout needs to continue after a control-node restart lives
here: the batches, each device's previous and planned desired documents, what
was published and when. Writers that can race (the daemon and a CLI driving
the same rollout) change state with compare-and-set updates, so a step is
taken, and its event written, once.

Rows come back as frozen dataclasses (:class:`Rollout`, :class:`Batch`,
:class:`Member`); JSON columns go through ``infra/jsoncolumn.py`` both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edgeloop_control.infra import jsoncolumn, sql
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.policies.rollout.plan import Target

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

# The TEXT columns that hold JSON, per table (encoded on write, decoded on read).
_JSON_COLUMNS = {
    "rollouts": {"target", "config", "selector"},
    "rollout_batches": set(),
    "rollout_devices": {"previous_doc", "target_doc", "health", "rollback_doc"},
}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _json(row: sql.Row, column: str, table: str, key: str) -> Any:
    return jsoncolumn.decode(row[column], None, where=f"{table}.{column} of {key}")


@dataclass(frozen=True)
class Rollout:
    """One rollout: what it rolls out, to whom (``selector``), and how far it got."""

    id: str
    model: str
    version: str
    target: Target
    state: str
    config: dict[str, Any]  # the effective RolloutConfig it started with, as stored
    selector: dict[str, Any]
    reason: str | None
    n_batches: int
    current_batch: int
    artifact_published_at: float | None
    rollback_artifacts_at: float | None
    failure: str | None
    last_error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sql.Row) -> Rollout:
        key = str(row["id"])
        target = _json(row, "target", "rollouts", key)
        if not isinstance(target, dict):
            raise jsoncolumn.CorruptColumn(f"rollouts.target of {key} is not an object")
        return cls(
            id=key,
            model=str(row["model"]),
            version=str(row["version"]),
            target=Target.from_dict(target),
            state=str(row["state"]),
            config=_json(row, "config", "rollouts", key) or {},
            selector=_json(row, "selector", "rollouts", key) or {},
            reason=row["reason"],
            n_batches=int(row["n_batches"]),
            current_batch=int(row["current_batch"]),
            artifact_published_at=_opt_float(row["artifact_published_at"]),
            rollback_artifacts_at=_opt_float(row["rollback_artifacts_at"]),
            failure=row["failure"],
            last_error=row["last_error"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            finished_at=_opt_float(row["finished_at"]),
        )


@dataclass(frozen=True)
class Batch:
    """One batch (0 is the canary) and the times it reached each step."""

    rollout_id: str
    idx: int
    started_at: float | None
    published_at: float | None
    passed_at: float | None
    failed_at: float | None

    @classmethod
    def from_row(cls, row: sql.Row) -> Batch:
        return cls(
            rollout_id=str(row["rollout_id"]),
            idx=int(row["idx"]),
            started_at=_opt_float(row["started_at"]),
            published_at=_opt_float(row["published_at"]),
            passed_at=_opt_float(row["passed_at"]),
            failed_at=_opt_float(row["failed_at"]),
        )


@dataclass(frozen=True)
class Member:
    """A device of a rollout: its documents (previous, target, rollback) and observations."""

    rollout_id: str
    device: str
    batch: int
    position: int
    previous_doc: dict[str, Any] | None
    target_doc: dict[str, Any] | None
    target_revision: int | None
    published_at: float | None
    online_at_publish: bool | None
    seen_online: bool
    last_started_at: float | None
    restarts: int
    loaded_at: float | None
    health: dict[str, Any] | None
    failure: str | None
    rollback_doc: dict[str, Any] | None
    rolled_back_at: float | None

    @classmethod
    def from_row(cls, row: sql.Row) -> Member:
        key = f"{row['rollout_id']}/{row['device']}"
        table = "rollout_devices"
        online = row["online_at_publish"]
        return cls(
            rollout_id=str(row["rollout_id"]),
            device=str(row["device"]),
            batch=int(row["batch"]),
            position=int(row["position"]),
            previous_doc=_json(row, "previous_doc", table, key),
            target_doc=_json(row, "target_doc", table, key),
            target_revision=_opt_int(row["target_revision"]),
            published_at=_opt_float(row["published_at"]),
            online_at_publish=None if online is None else bool(online),
            seen_online=bool(row["seen_online"]),
            last_started_at=_opt_float(row["last_started_at"]),
            restarts=int(row["restarts"]),
            loaded_at=_opt_float(row["loaded_at"]),
            health=_json(row, "health", table, key),
            failure=row["failure"],
            rollback_doc=_json(row, "rollback_doc", table, key),
            rolled_back_at=_opt_float(row["rolled_back_at"]),
        )


class RolloutStore:
    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.conn.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sql.Connection]:
        """A write transaction, unless the caller (another policy) already holds one."""
        if self.db.conn.in_transaction:
            yield self.db.conn
        else:
            with self.db.transaction() as conn:
                yield conn

    # -- reads -----------------------------------------------------------------

    def rollout(self, rollout_id: str) -> Rollout | None:
        row = self.db.conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return Rollout.from_row(row) if row else None

    def rollouts(self, *, states: tuple[str, ...] | None = None) -> list[Rollout]:
        query, args = "SELECT * FROM rollouts", []
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = list(states)
        rows = self.db.conn.execute(query + " ORDER BY created_at, id", args).fetchall()
        return [Rollout.from_row(r) for r in rows]

    def rollout_ids(self, *, states: tuple[str, ...]) -> list[str]:
        """Ids only, nothing decoded: one corrupt row must not hide the others."""
        rows = self.db.conn.execute(
            f"SELECT id FROM rollouts WHERE state IN ({', '.join('?' * len(states))}) "
            "ORDER BY created_at, id",
            states,
        ).fetchall()
        return [str(r[0]) for r in rows]

    def last_error(self, rollout_id: str) -> str | None:
        row = self.db.conn.execute(
            "SELECT last_error FROM rollouts WHERE id = ?", (rollout_id,)
        ).fetchone()
        return None if row is None else row[0]

    def batches(self, rollout_id: str) -> list[Batch]:
        rows = self.db.conn.execute(
            "SELECT * FROM rollout_batches WHERE rollout_id = ? ORDER BY idx", (rollout_id,)
        ).fetchall()
        return [Batch.from_row(r) for r in rows]

    def batch(self, rollout_id: str, idx: int) -> Batch:
        row = self.db.conn.execute(
            "SELECT * FROM rollout_batches WHERE rollout_id = ? AND idx = ?", (rollout_id, idx)
        ).fetchone()
        if row is None:
            raise KeyError(f"rollout {rollout_id} has no batch {idx}")
        return Batch.from_row(row)

    def devices(self, rollout_id: str, *, batch: int | None = None) -> list[Member]:
        query = "SELECT * FROM rollout_devices WHERE rollout_id = ?"
        args: list[Any] = [rollout_id]
        if batch is not None:
            query += " AND batch = ?"
            args.append(batch)
        rows = self.db.conn.execute(query + " ORDER BY batch, position", args).fetchall()
        return [Member.from_row(r) for r in rows]

    def device(self, rollout_id: str, device: str) -> Member:
        row = self.db.conn.execute(
            "SELECT * FROM rollout_devices WHERE rollout_id = ? AND device = ?",
            (rollout_id, device),
        ).fetchone()
        if row is None:
            raise KeyError(f"device {device} is not part of rollout {rollout_id}")
        return Member.from_row(row)

    def device_ids(self, rollout_id: str) -> list[str]:
        rows = self.db.conn.execute(
            "SELECT device FROM rollout_devices WHERE rollout_id = ? ORDER BY batch, position",
            (rollout_id,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def active_devices(self) -> dict[str, str]:
        """{device: rollout id} for every device in a running or rolling-back rollout.

        Kept for the experiment policy until it reads ownership from
        ``fleet/desired.py`` (the ``device_owners`` table) like this policy does.
        """
        rows = self.db.conn.execute(
            "SELECT d.device, r.id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id "
            f"WHERE r.state IN ({', '.join('?' * len(ACTIVE))})",
            ACTIVE,
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    # -- writes ----------------------------------------------------------------

    def insert(
        self,
        conn: sql.Connection,
        rollout: dict[str, Any],
        batches: list[list[str]],
        previous: dict[str, dict[str, Any]],
    ) -> None:
        fields = _encode("rollouts", rollout)
        conn.execute(
            f"INSERT INTO rollouts({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
            list(fields.values()),
        )
        for idx, devices in enumerate(batches):
            conn.execute(
                "INSERT INTO rollout_batches(rollout_id, idx) VALUES (?, ?)", (rollout["id"], idx)
            )
            for position, device in enumerate(devices):
                conn.execute(
                    "INSERT INTO rollout_devices"
                    "(rollout_id, device, batch, position, previous_doc) VALUES (?, ?, ?, ?, ?)",
                    (rollout["id"], device, idx, position, jsoncolumn.encode(previous.get(device))),
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
        encoded = _encode(table, fields)
        conditions = {**key, **(where or {})}
        sets = ", ".join(f"{k} = ?" for k in encoded)
        clauses = " AND ".join(f"{k} IS ?" for k in conditions)
        cur = self.db.conn.execute(
            f"UPDATE {table} SET {sets} WHERE {clauses}",
            [*encoded.values(), *conditions.values()],
        )
        return cur.rowcount == 1


def _encode(table: str, fields: dict[str, Any]) -> dict[str, Any]:
    columns = _JSON_COLUMNS[table]
    return {
        k: jsoncolumn.encode(v) if k in columns and v is not None else v for k, v in fields.items()
    }
