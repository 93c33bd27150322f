"""The control node's own state: SQLite (WAL mode, one file per workspace) or PostgreSQL.

Holds what the control node decided (desired state per device and its
revision, events) and what the fleet reported (inventory). Every writer uses
short transactions so the daemon and CLI commands can share the database.
Which database is the workspace's choice (``[control] database``); :mod:`.sql` gives
both one connection API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from edgeloop_agent.wire.histogram import LatencyHistogram

from . import sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS desired (
    device TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    doc TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    groups TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '{}',
    online INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    status TEXT,
    telemetry TEXT,
    reported_revision INTEGER,
    drift TEXT,
    registered_at REAL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, ts);
CREATE TABLE IF NOT EXISTS variant_stats (
    report_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    device TEXT NOT NULL,
    ts REAL NOT NULL,
    experiment TEXT,
    revision INTEGER,
    role TEXT,
    version TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    predictions INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    cls_n INTEGER NOT NULL DEFAULT 0,
    cls_correct INTEGER NOT NULL DEFAULT 0,
    reg_n INTEGER NOT NULL DEFAULT 0,
    reg_sum_abs REAL NOT NULL DEFAULT 0,
    reg_sum_sq REAL NOT NULL DEFAULT 0,
    latency TEXT,
    PRIMARY KEY (report_id, variant)
);
CREATE INDEX IF NOT EXISTS variant_stats_ts ON variant_stats(variant, ts);
-- Per-device reads (the fleet view, the report): one scan per device without it
-- (1.5 s for 1,000 devices measured by bench/scale_ingest.py; 15 ms with it).
CREATE INDEX IF NOT EXISTS variant_stats_device ON variant_stats(device, ts);
-- Assignments per report and variant when the agent counts them: requests the router
-- assigned with and without a routing key, and the distinct keys as a HyperLogLog sketch
-- (edgeloop_agent.wire.keysketch, its JSON wire form). The sample-ratio check's unit.
CREATE TABLE IF NOT EXISTS variant_keys (
    report_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    keyed INTEGER NOT NULL,
    unkeyed INTEGER NOT NULL,
    sketch TEXT,
    PRIMARY KEY (report_id, variant)
);
CREATE TABLE IF NOT EXISTS drift_windows (
    report_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    device TEXT NOT NULL,
    variant TEXT NOT NULL,
    version TEXT,
    start REAL,
    end REAL NOT NULL,
    n INTEGER NOT NULL,
    enough_data INTEGER NOT NULL,
    dataset_drift INTEGER NOT NULL,
    output_drift INTEGER NOT NULL,
    drifted TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (report_id, idx)
);
CREATE INDEX IF NOT EXISTS drift_windows_end ON drift_windows(variant, end);
-- The retrain policy asks every tick for each device's newest windows: 0.41 s per
-- tick over 15,000 windows of 1,000 devices without it, 6 ms with it.
CREATE INDEX IF NOT EXISTS drift_windows_device ON drift_windows(device, variant, end);
CREATE TABLE IF NOT EXISTS concept_drift (
    report_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    device TEXT NOT NULL,
    ts REAL NOT NULL,
    n INTEGER NOT NULL,
    error_rate REAL,
    drift INTEGER NOT NULL,
    detections INTEGER NOT NULL,
    PRIMARY KEY (report_id, variant)
);
CREATE INDEX IF NOT EXISTS concept_drift_device ON concept_drift(device, variant, ts);
-- Retention (policies/retention/, docs/operations.md "Retention"): raw rows older than
-- [retention] raw_days are folded into these hourly rows per (device, variant, hour), then
-- deleted. The time indexes let each batch find the oldest rows without a table scan.
CREATE INDEX IF NOT EXISTS variant_stats_time ON variant_stats(ts);
CREATE INDEX IF NOT EXISTS drift_windows_time ON drift_windows(end);
CREATE INDEX IF NOT EXISTS concept_drift_time ON concept_drift(ts);
CREATE TABLE IF NOT EXISTS variant_stats_hourly (
    device TEXT NOT NULL,
    variant TEXT NOT NULL,
    hour REAL NOT NULL,
    version TEXT,
    reports INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    predictions INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cls_n INTEGER NOT NULL,
    cls_correct INTEGER NOT NULL,
    reg_n INTEGER NOT NULL,
    reg_sum_abs REAL NOT NULL,
    reg_sum_sq REAL NOT NULL,
    keyed INTEGER NOT NULL DEFAULT 0,
    unkeyed INTEGER NOT NULL DEFAULT 0,
    latency TEXT,
    first_ts REAL NOT NULL,
    last_ts REAL NOT NULL,
    PRIMARY KEY (device, variant, hour)
);
CREATE INDEX IF NOT EXISTS variant_stats_hourly_hour ON variant_stats_hourly(hour);
CREATE TABLE IF NOT EXISTS drift_hourly (
    device TEXT NOT NULL,
    variant TEXT NOT NULL,
    hour REAL NOT NULL,
    version TEXT,
    windows INTEGER NOT NULL,
    n INTEGER NOT NULL,
    enough_data INTEGER NOT NULL,
    dataset_drift INTEGER NOT NULL,
    output_drift INTEGER NOT NULL,
    start REAL,
    end REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (device, variant, hour)
);
CREATE INDEX IF NOT EXISTS drift_hourly_hour ON drift_hourly(hour);
CREATE INDEX IF NOT EXISTS drift_hourly_end ON drift_hourly(end);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_messages (
    msg_id TEXT PRIMARY KEY,
    ts REAL NOT NULL
);
"""


class ControlDB:
    def __init__(self, location: str | Path) -> None:
        """Open (and create or migrate) the control database: a SQLite file path, or a
        ``postgresql://`` URL."""
        self.location = location
        self.postgres = sql.is_postgres(location)
        if not self.postgres:
            self.path = Path(location)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn: sql.Connection = sql.connect(location)
        # Checked at the start of every write transaction while set (``fenced``).
        self.fence: Callable[[sql.Connection], None] | None = None
        if isinstance(self.conn, sql.PgConnection):
            self.conn.install_functions()
        else:
            # Before WAL and the first table, or it does not take: a new database frees the
            # pages retention empties with PRAGMA incremental_vacuum (an existing one keeps
            # its mode until an offline VACUUM; docs/operations.md "Retention").
            self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        # Columns added after a table first shipped: CREATE TABLE IF NOT EXISTS leaves an
        # existing table as it was. A read-only connection (the dashboard) cannot add them
        # and does not need to: readers use dict rows and .get().
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(devices)")}
        if "registered_at" not in have:
            with suppress(sql.OperationalError):
                self.conn.execute("ALTER TABLE devices ADD COLUMN registered_at REAL")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def fenced(self, check: Callable[[sql.Connection], None]) -> Iterator[None]:
        """Run ``check`` inside every write transaction opened meanwhile (a worker's lease,
        infra/lease.py: it raises when the worker may no longer write)."""
        previous, self.fence = self.fence, check
        try:
            yield
        finally:
            self.fence = previous

    @contextmanager
    def transaction(self) -> Iterator[sql.Connection]:
        with sql.transaction(self.conn) as conn:
            if self.fence is not None:
                self.fence(conn)
            yield conn

    # -- desired state ------------------------------------------------------------

    def desired(self, device: str) -> tuple[int, dict[str, Any]] | None:
        row = self.conn.execute(
            "SELECT revision, doc FROM desired WHERE device = ?", (device,)
        ).fetchone()
        return (int(row["revision"]), json.loads(row["doc"])) if row else None

    def all_desired(self) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT device, doc FROM desired ORDER BY device")
        return {r["device"]: json.loads(r["doc"]) for r in rows}

    def set_desired(self, device: str, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO desired(device, revision, doc, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(device) DO UPDATE SET revision=excluded.revision, doc=excluded.doc, "
            "updated_at=excluded.updated_at",
            (device, doc["revision"], json.dumps(doc, sort_keys=True), time.time()),
        )

    # -- inventory ------------------------------------------------------------------

    def device(self, device: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM devices WHERE device = ?", (device,)).fetchone()
        return _device_row(row) if row else None

    def devices(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM devices ORDER BY device").fetchall()
        return [_device_row(r) for r in rows]

    def upsert_device(self, device: str, **fields: Any) -> None:
        encoded = {
            k: json.dumps(v, sort_keys=True) if k in _JSON_FIELDS and v is not None else v
            for k, v in fields.items()
        }
        self.conn.execute("INSERT OR IGNORE INTO devices(device) VALUES (?)", (device,))
        if encoded:
            sets = ", ".join(f"{k} = ?" for k in encoded)
            self.conn.execute(
                f"UPDATE devices SET {sets} WHERE device = ?", (*encoded.values(), device)
            )

    # -- events -----------------------------------------------------------------------

    def add_event(
        self, kind: str, message: str, *, subject: str | None = None, data: Any = None
    ) -> int:
        row = self.conn.execute(
            "INSERT INTO events(ts, kind, subject, message, data) VALUES (?, ?, ?, ?, ?) "
            "RETURNING id",
            (time.time(), kind, subject, message, json.dumps(data) if data is not None else None),
        ).fetchall()[0]  # all: SQLite finishes the statement (and its write) on the last row
        return int(row[0])

    def events(
        self, *, kind: str | None = None, since: float | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        query = "SELECT * FROM events WHERE 1=1"
        args: list[Any] = []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if since is not None:
            query += " AND ts >= ?"
            args.append(since)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = self.conn.execute(query, args).fetchall()
        return [
            {**dict(r), "data": json.loads(r["data"]) if r["data"] else None}
            for r in reversed(rows)
        ]

    # -- counters (e.g. poison messages the daemon dropped) ---------------------------

    def bump_counter(self, name: str, n: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value",
            (name, n),
        )

    def counters(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT name, value FROM counters ORDER BY name")
        return {r["name"]: int(r["value"]) for r in rows}

    # -- de-duplication of at-least-once messages ------------------------------------

    def first_sighting(self, msg_id: str) -> bool:
        """Record ``msg_id``; True only the first time it is seen."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO seen_messages(msg_id, ts) VALUES (?, ?)", (msg_id, time.time())
        )
        return cur.rowcount == 1

    def forget_seen(self, older_than_s: float) -> int:
        """Drop de-duplication ids older than ``older_than_s``; the table stays bounded.

        Safe once no redelivery can be that old: duplicates come from a lost PUBACK
        (resent at once) or the daemon's broker session (expires after 7 days).
        """
        cur = self.conn.execute(
            "DELETE FROM seen_messages WHERE ts < ?", (time.time() - older_than_s,)
        )
        return cur.rowcount


def merged_p99_ms(latencies: Iterable[str | None]) -> float | None:
    """p99 in ms of the latency histograms stored in ``variant_stats.latency`` (JSON).

    Histograms merge exactly (fixed buckets); a malformed one is skipped: it is
    not evidence either way.
    """
    merged: LatencyHistogram | None = None
    for raw in latencies:
        if not raw:
            continue
        try:
            hist = LatencyHistogram.from_dict(json.loads(raw))
        except ValueError:
            continue
        if merged is None:
            merged = hist
        else:
            merged.merge(hist)
    p99 = merged.quantile(0.99) if merged is not None and merged.count else None
    return None if p99 is None else p99 * 1000.0


_JSON_FIELDS = {"groups", "labels", "status", "telemetry", "drift"}


def _device_row(row: sql.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_FIELDS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
