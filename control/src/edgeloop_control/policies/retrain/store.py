"""The retraining policy's memory: one row per model in ``retrain_state``.

Everything the policy needs to continue after a daemon restart lives here: the
open drift episode (when it began, the event that opened it, the devices in
its scope), when the model was last retrained (the cooldown) and the failure
back-off (how many in a row, when to try again, the last reason, so a repeat is
not reported twice). The table and its columns are the ones the first release
wrote; an older database is brought along with ``ALTER TABLE``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edgeloop_control.infra import jsoncolumn
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.jsoncolumn import CorruptColumn

Phase = Literal["idle", "collecting", "experimenting"]
IDLE: Final = "idle"  # no episode: watching for drift
COLLECTING: Final = "collecting"  # drift seen: waiting for labelled samples, then retraining
EXPERIMENTING: Final = "experimenting"  # a challenger is in an A/B test started by this policy
PHASES: tuple[Phase, ...] = (IDLE, COLLECTING, EXPERIMENTING)

SCHEMA = """
CREATE TABLE IF NOT EXISTS retrain_state (
    model TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    episode_start REAL,
    drift_event INTEGER,
    devices TEXT,
    note TEXT,
    last_retrain REAL,
    updated_at REAL NOT NULL
);
"""

# Added after the first release.
_LATER_COLUMNS = {
    "failures": "INTEGER NOT NULL DEFAULT 0",
    "retry_at": "REAL",
    "last_error": "TEXT",
}


@dataclass
class RetrainState:
    """Where the policy stands for one model (column ``state`` is :attr:`phase`)."""

    model: str
    phase: Phase = IDLE
    episode_start: float | None = None
    drift_event: int | None = None
    devices: list[str] = field(default_factory=list)
    note: str | None = None
    last_retrain: float | None = None
    failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None

    def backing_off(self, now: float) -> bool:
        return self.retry_at is not None and now < self.retry_at

    def cooling_down(self, now: float, cooldown_s: float) -> bool:
        return self.last_retrain is not None and now - self.last_retrain < cooldown_s

    def open_episode(self, start: float, event: int, devices: list[str]) -> None:
        self.phase = COLLECTING
        self.episode_start = start
        self.drift_event = event
        self.devices = list(devices)
        self.note = None

    def close_episode(self) -> None:
        self.phase = IDLE
        self.episode_start = None
        self.drift_event = None
        self.devices = []
        self.note = None

    def failed(self, reason: str, retry_at: float) -> None:
        self.failures += 1
        self.retry_at = retry_at
        self.last_error = reason
        self.note = reason

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = None
        self.last_error = None


class RetrainStore:
    """Loads and saves :class:`RetrainState` rows in the control database."""

    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.conn.executescript(SCHEMA)
        have = {r[1] for r in db.conn.execute("PRAGMA table_info(retrain_state)")}
        for column, decl in _LATER_COLUMNS.items():
            if column not in have:
                db.conn.execute(f"ALTER TABLE retrain_state ADD COLUMN {column} {decl}")

    def load(self, model: str) -> RetrainState:
        """The model's state; a fresh idle one if the policy never acted on it.

        Raises :class:`CorruptColumn` when the row cannot be read back.
        """
        row = self.db.conn.execute(
            "SELECT * FROM retrain_state WHERE model = ?", (model,)
        ).fetchone()
        return RetrainState(model) if row is None else _from_row(dict(row))

    def failing(self) -> list[RetrainState]:
        """Models whose last retraining attempt failed (backing off), readable rows only."""
        rows = self.db.conn.execute(
            "SELECT * FROM retrain_state WHERE failures > 0 ORDER BY model"
        ).fetchall()
        out = []
        for row in rows:
            try:
                out.append(_from_row(dict(row)))
            except CorruptColumn:
                continue  # the policy itself reports a corrupt row, once, as an event
        return out

    def models(self) -> list[str]:
        rows = self.db.conn.execute("SELECT model FROM retrain_state ORDER BY model")
        return [r[0] for r in rows]

    def save(self, st: RetrainState) -> None:
        self.db.conn.execute(
            "INSERT INTO retrain_state(model, state, episode_start, drift_event, devices, note, "
            "last_retrain, failures, retry_at, last_error, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(model) DO UPDATE SET "
            "state=excluded.state, episode_start=excluded.episode_start, "
            "drift_event=excluded.drift_event, devices=excluded.devices, note=excluded.note, "
            "last_retrain=excluded.last_retrain, failures=excluded.failures, "
            "retry_at=excluded.retry_at, last_error=excluded.last_error, "
            "updated_at=excluded.updated_at",
            (
                st.model,
                st.phase,
                st.episode_start,
                st.drift_event,
                jsoncolumn.encode(st.devices),
                st.note,
                st.last_retrain,
                st.failures,
                st.retry_at,
                st.last_error,
                time.time(),
            ),
        )


def _from_row(row: dict[str, Any]) -> RetrainState:
    model = row["model"]
    where = f"retrain_state.devices of {model}"
    devices: Any = jsoncolumn.decode(row["devices"], [], where=where)
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise CorruptColumn(f"{where} must be a list of device names, got {devices!r}")
    if row["state"] not in PHASES:
        raise CorruptColumn(
            f"retrain_state.state of {model} must be one of {', '.join(PHASES)}, "
            f"got {row['state']!r}"
        )
    return RetrainState(
        model=model,
        phase=row["state"],
        episode_start=row["episode_start"],
        drift_event=row["drift_event"],
        devices=devices,
        note=row["note"],
        last_retrain=row["last_retrain"],
        failures=int(row["failures"] or 0),
        retry_at=row["retry_at"],
        last_error=row["last_error"],
    )
