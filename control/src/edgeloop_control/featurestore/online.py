"""The online store: the latest row per entity of each view version, in SQLite.

One table per view version, keyed by the entity columns, with typed columns so
floats round-trip exactly. An upsert only replaces a stored row with a newer one
(later event time, then later ingest), so materialising overlapping or
out-of-order time ranges converges to the same state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop_control.featurestore.catalog import ViewVersion
from edgeloop_control.featurestore.schema import SEQ_COLUMN

TS_COLUMN = "__ts"  # event time in microseconds
_SQL_TYPES = {"int64": "INTEGER", "float64": "REAL", "bool": "INTEGER", "string": "TEXT"}
_SQL_TYPES["timestamp"] = "INTEGER"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def table_name(view: ViewVersion) -> str:
    return _quote(view.ref)


class OnlineStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    def _ensure_table(self, conn: sqlite3.Connection, view: ViewVersion) -> None:
        types = view.types
        columns = [f"{_quote(n)} {_SQL_TYPES[types[n]]} NOT NULL" for n in view.entity]
        columns += [f"{TS_COLUMN} INTEGER NOT NULL", f"{SEQ_COLUMN} INTEGER NOT NULL"]
        columns += [f"{_quote(n)} {_SQL_TYPES[types[n]]}" for n in view.features]
        key = ", ".join(_quote(n) for n in view.entity)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table_name(view)} "
            f"({', '.join(columns)}, PRIMARY KEY ({key})) WITHOUT ROWID"
        )

    def ensure(self, view: ViewVersion) -> None:
        """Create ``view``'s online table, empty: materialising a range that holds no rows
        still counts as materialised (``features get`` then says the key is unknown,
        not "run materialize")."""
        with self._connect() as conn:
            self._ensure_table(conn, view)

    def upsert(self, view: ViewVersion, frame: pd.DataFrame) -> int:
        """Write the rows of ``frame`` (one per entity) that are newer; return how many."""
        if frame.empty:
            return 0
        names = [*view.entity, TS_COLUMN, SEQ_COLUMN, *view.features]
        source = {**{n: n for n in names}, TS_COLUMN: view.timestamp}
        values = [_to_sql(frame[source[n]]) for n in names]
        quoted = [_quote(n) for n in names]
        table = table_name(view)
        updates = ", ".join(f"{q} = excluded.{q}" for q in quoted[len(view.entity) :])
        sql = (
            f"INSERT INTO {table} ({', '.join(quoted)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT ({', '.join(quoted[: len(view.entity)])}) DO UPDATE SET {updates} "
            f"WHERE excluded.{TS_COLUMN} > {table}.{TS_COLUMN} OR "
            f"(excluded.{TS_COLUMN} = {table}.{TS_COLUMN} AND "
            f"excluded.{SEQ_COLUMN} > {table}.{SEQ_COLUMN})"
        )
        with self._connect() as conn:
            self._ensure_table(conn, view)
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, zip(*values, strict=True))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

    def has_table(self, view: ViewVersion) -> bool:
        """Whether ``view`` was ever materialised."""
        with self._connect() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (view.ref,)
                ).fetchone()
                is not None
            )

    def get(
        self, view: ViewVersion, keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any] | None]:
        """Stored rows for each entity key (``None`` where absent), in key order."""
        names = [TS_COLUMN, *view.features]
        where = " AND ".join(f"{_quote(n)} = ?" for n in view.entity)
        sql = f"SELECT {', '.join(_quote(n) for n in names)} FROM {table_name(view)} WHERE {where}"
        out: list[dict[str, Any] | None] = []
        with self._connect() as conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (view.ref,)
            ).fetchone()
            if not exists:
                return [None] * len(keys)
            for key in keys:
                row = conn.execute(sql, key).fetchone()
                out.append(None if row is None else _from_sql(view, names, row))
        return out


def _to_sql(series: pd.Series) -> list[Any]:
    """Python values SQLite accepts: NaN -> NULL, timestamps -> microseconds, bool -> int."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        micros = series.astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]")
        values = np.array(micros.astype("int64"), dtype=object)
        values[series.isna().to_numpy()] = None
        return values.tolist()
    if pd.api.types.is_bool_dtype(series.dtype):
        return [None if v is None else int(v) for v in series.astype(object).tolist()]
    values = np.array(series.astype(object), dtype=object)
    values[pd.isna(values)] = None
    return [int(v) if isinstance(v, (bool, np.bool_)) else v for v in values.tolist()]


def _from_sql(view: ViewVersion, names: list[str], row: Sequence[Any]) -> dict[str, Any]:
    types = view.types
    out: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        if name == TS_COLUMN:
            out[view.timestamp] = pd.Timestamp(value, unit="us", tz="UTC")
        elif value is None:
            out[name] = None
        elif types[name] == "timestamp":
            out[name] = pd.Timestamp(value, unit="us", tz="UTC")
        elif types[name] == "bool":
            out[name] = bool(value)
        else:
            out[name] = value
    return out
