"""Move a workspace's control state from its SQLite file to PostgreSQL (``edgeloop db copy``).

The day one SQLite file is outgrown, the operator stops the daemon, copies, points
``[control] database`` at the new URL and starts the workers. Every table the control node
made in the file is created on the target from the file's own DDL (translated as the live
code's is: infra/sql.py) and its rows copied, ``rowid`` included: readers keep their places
by rowid (experiment totals, /metrics, retention cursors), so a running experiment goes on
counting where it was. Each table's sequence then starts after the copied rows.

The target must not hold control state yet: copying over a live database would mix two
histories, so a non-empty target table stops the copy before anything is written.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra import sql

BATCH = 2000


class CopyError(EdgeloopError):
    """The control database cannot be copied (missing source, non-empty target, ...)."""


@dataclass
class Copied:
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def copy_control_db(
    source: Path,
    target_url: str,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> Copied:
    """Copy every table of the SQLite control database ``source`` to ``target_url``."""
    if not sql.is_postgres(target_url):
        raise CopyError(f"the target must be a postgresql:// URL, not {sql.redacted(target_url)}")
    if not source.is_file():
        raise CopyError(f"no control database at {source}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    src.row_factory = sqlite3.Row
    dst = sql.PgConnection(target_url)
    try:
        tables = _tables(src)
        dst.install_functions()
        for _name, ddl in tables:
            dst.executescript(_if_not_exists(ddl))
        busy = [n for n, _ in tables if dst.execute(f"SELECT 1 FROM {n} LIMIT 1").fetchone()]
        if busy:
            raise CopyError(
                f"{sql.redacted(target_url)} already holds control state (tables "
                f"{', '.join(busy)}): copy into an empty database"
            )
        for ddl in _indexes(src):
            dst.executescript(_if_not_exists(ddl))
        copied = Copied()
        for name, ddl in tables:
            copied.tables[name] = _copy_rows(src, dst, name, ddl, progress)
        return copied
    finally:
        src.close()
        dst.close()


def _tables(src: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = src.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    tables = [(str(r["name"]), str(r["sql"])) for r in rows]
    # Names go into statements: only the identifiers the control node itself creates.
    odd = [name for name, _ in tables if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
    if odd:
        raise CopyError(f"the control database holds tables edgeloop did not make: {odd!r}")
    return tables


def _indexes(src: sqlite3.Connection) -> list[str]:
    rows = src.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    ).fetchall()
    return [str(r["sql"]) for r in rows]


def _if_not_exists(ddl: str) -> str:
    # sqlite_master keeps the statement without IF NOT EXISTS; the live code's stores add it.
    return re.sub(
        r"^CREATE (UNIQUE )?(TABLE|INDEX) (IF NOT EXISTS )?",
        lambda m: f"CREATE {m.group(1) or ''}{m.group(2)} IF NOT EXISTS ",
        ddl.strip(),
        flags=re.I,
    )


def _copy_rows(
    src: sqlite3.Connection,
    dst: sql.PgConnection,
    table: str,
    ddl: str,
    progress: Callable[[str, int], None] | None,
) -> int:
    own_key = re.search(r"(\w+)\s+INTEGER PRIMARY KEY", ddl, re.I)
    columns = [str(r[1]) for r in src.execute(f"PRAGMA table_info({table})")]
    # The rowid goes along: on PostgreSQL it is a column of its own (infra/sql.py).
    select = columns if own_key else ["rowid", *columns]
    quoted = ", ".join('"end"' if c == "end" else c for c in select)
    insert = f"INSERT INTO {table}({quoted}) VALUES ({', '.join('?' * len(select))})"
    n = 0
    with sql.transaction(dst):
        cursor = src.execute(f"SELECT {', '.join(select)} FROM {table} ORDER BY rowid")
        while rows := cursor.fetchmany(BATCH):
            dst.executemany(insert, [tuple(r) for r in rows])
            n += len(rows)
            if progress is not None:
                progress(table, n)
        serial = own_key.group(1) if own_key else "rowid"
        dst.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{serial}'), "
            f"COALESCE((SELECT MAX({serial}) FROM {table}), 0) + 1, false)"
        )
    return n
