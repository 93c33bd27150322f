"""The SQLite catalogue: views, their versions, ingests and the Parquet files they made.

The catalogue is the source of truth for the offline store. A Parquet file is
visible to readers only once its row is committed here, and the rows of one
ingest (plus a new version, if the ingest created one) are committed in a
single transaction, which is what makes an append atomic.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeloop_control.featurestore.schema import ColumnType, ViewSchema

FORMAT_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    schema TEXT NOT NULL,
    ttl_us INTEGER,
    key_columns TEXT,
    synthetic_timestamp INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (view, version)
);
CREATE TABLE IF NOT EXISTS ingests (
    view TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    rows_in INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    first_row_id INTEGER,
    created_at TEXT NOT NULL,
    PRIMARY KEY (view, seq)
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    view TEXT NOT NULL,
    version INTEGER NOT NULL,
    day INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE,
    rows INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_version ON files (view, version, day);
CREATE INDEX IF NOT EXISTS files_by_day ON files (view, day);
"""


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ViewVersion:
    """One version of a feature view, with its storage statistics."""

    name: str
    version: int
    schema: ViewSchema
    fingerprint: str
    ttl: dt.timedelta | None
    # Columns whose values identify a row for de-duplication; None: every column.
    key_columns: tuple[str, ...] | None
    # True when the event timestamp was stamped at ingest (no timestamp column given).
    synthetic_timestamp: bool
    created_at: str
    rows: int = 0
    files: int = 0
    partitions: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def entity(self) -> tuple[str, ...]:
        return self.schema.entity

    @property
    def timestamp(self) -> str:
        return self.schema.timestamp

    @property
    def features(self) -> list[str]:
        return self.schema.features

    @property
    def types(self) -> dict[str, ColumnType]:
        return self.schema.types

    @property
    def has_row_id(self) -> bool:
        """Views without an entity give each row a synthetic ``__row_id``."""
        return not self.schema.entity

    def dedup_columns(self) -> list[str]:
        if self.key_columns is not None:
            return list(self.key_columns)
        # An ingest-time stamp differs on every re-ingest; keying on it would
        # defeat idempotency, so such views are keyed on their content alone.
        skip = {self.timestamp} if self.synthetic_timestamp else set()
        return [n for n in self.schema.names if n not in skip]


@dataclass(frozen=True)
class FileEntry:
    """One committed Parquet file (paths are relative to the store root)."""

    path: str
    view: str
    version: int
    day: int
    rows: int
    min_ts: int
    max_ts: int
    seq: int
    id: int = 0


@dataclass(frozen=True)
class IngestRecord:
    view: str
    seq: int
    version: int
    source: str
    rows_in: int
    accepted: int
    duplicates: int
    first_row_id: int | None = None
    created_at: str = field(default_factory=utc_now_iso)


@dataclass(frozen=True)
class PartitionStats:
    day: int
    files: int
    rows: int
    min_ts: int
    max_ts: int


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_DDL)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)",
                (str(FORMAT_VERSION),),
            )

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: safe across threads (the
        # MQTT client calls back on its own thread) and cheap next to Parquet I/O.
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    # -- views and versions ----------------------------------------------------

    def view_names(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT DISTINCT view FROM versions ORDER BY view").fetchall()
        return [r[0] for r in rows]

    def versions(self, view: str) -> list[ViewVersion]:
        return self._select_versions("WHERE v.view = ?", (view,))

    def get(self, view: str, version: int | None = None) -> ViewVersion | None:
        if version is None:
            found = self._select_versions(
                "WHERE v.view = ? AND v.version = (SELECT MAX(version) FROM versions "
                "WHERE view = ?)",
                (view, view),
            )
        else:
            found = self._select_versions("WHERE v.view = ? AND v.version = ?", (view, version))
        return found[0] if found else None

    def _select_versions(self, where: str, params: Sequence[object]) -> list[ViewVersion]:
        query = f"""
            SELECT v.view, v.version, v.fingerprint, v.schema, v.ttl_us, v.key_columns,
                   v.synthetic_timestamp, v.created_at,
                   COALESCE(SUM(f.rows), 0), COUNT(f.id), COUNT(DISTINCT f.day)
            FROM versions v
            LEFT JOIN files f ON f.view = v.view AND f.version = v.version
            {where}
            GROUP BY v.view, v.version
            ORDER BY v.view, v.version
        """
        with self.connect() as conn:
            rows = conn.execute(query, params).fetchall()
        return [
            ViewVersion(
                name=r[0],
                version=r[1],
                fingerprint=r[2],
                schema=ViewSchema.from_json(json.loads(r[3])),
                ttl=None if r[4] is None else dt.timedelta(microseconds=r[4]),
                key_columns=None if r[5] is None else tuple(json.loads(r[5])),
                synthetic_timestamp=bool(r[6]),
                created_at=r[7],
                rows=r[8],
                files=r[9],
                partitions=r[10],
            )
            for r in rows
        ]

    # -- files -------------------------------------------------------------------

    def files(
        self,
        view: str,
        version: int | None = None,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        days: Iterable[int] | None = None,
    ) -> list[FileEntry]:
        """Committed files of a view (one version, or all), overlapping [start, end)."""
        where = ["view = ?"]
        params: list[object] = [view]
        if version is not None:
            where.append("version = ?")
            params.append(version)
        if start_us is not None:
            where.append("max_ts >= ?")
            params.append(start_us)
        if end_us is not None:
            where.append("min_ts < ?")
            params.append(end_us)
        if days is not None:
            wanted = sorted(set(days))
            where.append(f"day IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        query = (
            "SELECT path, view, version, day, rows, min_ts, max_ts, seq, id FROM files "
            f"WHERE {' AND '.join(where)} ORDER BY seq, id"
        )
        with self.connect() as conn:
            return [FileEntry(*r) for r in conn.execute(query, params).fetchall()]

    def paths(self, view: str) -> set[str]:
        with self.connect() as conn:
            return {r[0] for r in conn.execute("SELECT path FROM files WHERE view = ?", (view,))}

    def partitions(self, view: str, version: int) -> list[PartitionStats]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT day, COUNT(*), SUM(rows), MIN(min_ts), MAX(max_ts) FROM files "
                "WHERE view = ? AND version = ? GROUP BY day ORDER BY day",
                (view, version),
            ).fetchall()
        return [PartitionStats(*r) for r in rows]

    # -- ingests -------------------------------------------------------------------

    def next_seq(self, view: str) -> int:
        with self.connect() as conn:
            (value,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM ingests WHERE view = ?", (view,)
            ).fetchone()
        return int(value)

    def next_row_id(self, view: str) -> int:
        with self.connect() as conn:
            (value,) = conn.execute(
                "SELECT COALESCE(MAX(first_row_id + accepted), 0) FROM ingests "
                "WHERE view = ? AND first_row_id IS NOT NULL",
                (view,),
            ).fetchone()
        return int(value)

    def commit(
        self,
        ingest: IngestRecord,
        files: Sequence[FileEntry],
        new_version: ViewVersion | None = None,
    ) -> list[FileEntry]:
        """Record an ingest, its files and maybe a new version, all or nothing."""
        committed = []
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if new_version is not None:
                    conn.execute(
                        "INSERT INTO versions (view, version, fingerprint, schema, ttl_us, "
                        "key_columns, synthetic_timestamp, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            new_version.name,
                            new_version.version,
                            new_version.fingerprint,
                            json.dumps(new_version.schema.to_json()),
                            None
                            if new_version.ttl is None
                            else new_version.ttl // dt.timedelta(microseconds=1),
                            None
                            if new_version.key_columns is None
                            else json.dumps(list(new_version.key_columns)),
                            int(new_version.synthetic_timestamp),
                            new_version.created_at,
                        ),
                    )
                conn.execute(
                    "INSERT INTO ingests (view, seq, version, source, rows_in, accepted, "
                    "duplicates, first_row_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ingest.view,
                        ingest.seq,
                        ingest.version,
                        ingest.source,
                        ingest.rows_in,
                        ingest.accepted,
                        ingest.duplicates,
                        ingest.first_row_id,
                        ingest.created_at,
                    ),
                )
                for entry in files:
                    cursor = conn.execute(
                        "INSERT INTO files (view, version, day, path, rows, min_ts, max_ts, seq) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            entry.view,
                            entry.version,
                            entry.day,
                            entry.path,
                            entry.rows,
                            entry.min_ts,
                            entry.max_ts,
                            entry.seq,
                        ),
                    )
                    committed.append(replace(entry, id=int(cursor.lastrowid or 0)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return committed

    def replace(self, old: Sequence[FileEntry], new: FileEntry) -> FileEntry:
        """Swap ``old`` files for ``new`` (a compaction), atomically."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [entry.id for entry in old]
                conn.execute(f"DELETE FROM files WHERE id IN ({','.join('?' * len(ids))})", ids)
                cursor = conn.execute(
                    "INSERT INTO files (view, version, day, path, rows, min_ts, max_ts, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.view,
                        new.version,
                        new.day,
                        new.path,
                        new.rows,
                        new.min_ts,
                        new.max_ts,
                        new.seq,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return replace(new, id=int(cursor.lastrowid or 0))
