"""One connection API for the control database, on SQLite or on PostgreSQL.

The control node's SQL is written once, for SQLite (the embedded default: one file in
the workspace, nothing to run). When one file is outgrown, the workspace names a
PostgreSQL URL instead (``[control] database``, docs/scale.md) and :func:`connect` returns
a :class:`PgConnection`: the same ``execute``/``executemany``/``executescript`` surface as
``sqlite3.Connection``, rows readable by name and by index like ``sqlite3.Row``, and the
DB-API errors of :mod:`sqlite3` (subclassed), so callers have one code path.

What the PostgreSQL side translates, and why it can:

- ``?`` placeholders become ``%s``; a column named ``end`` (reserved there) is quoted;
  SQLite's NULL-safe ``IS ?`` becomes ``IS NOT DISTINCT FROM``.
- ``INSERT OR IGNORE`` / ``INSERT OR REPLACE`` become ``ON CONFLICT`` clauses on the
  table's primary key, read from the schema this module created.
- DDL types: ``INTEGER`` is ``BIGINT``, ``REAL`` is ``DOUBLE PRECISION`` (PostgreSQL's
  ``REAL`` is 4 bytes: timestamps would lose seconds), ``AUTOINCREMENT`` is ``BIGSERIAL``.
  Tables without an integer key get a ``rowid BIGSERIAL`` column, because readers follow
  the telemetry tables by ``rowid`` (experiment totals, /metrics, retention cursors).
- ``json_valid``/``json_extract`` exist as SQL functions (created with the schema); the
  values read come back as the JSON had them (int, float, str), as in SQLite.
- Writers are serialised as in SQLite: ``BEGIN IMMEDIATE`` and every write outside a
  transaction take one transaction-scoped advisory lock. That keeps SQLite's guarantees the
  code relies on: a claim's check-then-insert is atomic, and ``rowid`` order is commit
  order, so a reader that follows a table by ``rowid`` never skips a row committed late.
  Readers never wait for it. Several ``edgeloop serve`` workers then share the ingest
  (MQTT parsing, validation, statistics) and the database serialises only the commits.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

# The error classes callers catch, whichever database is underneath.
Error = sqlite3.Error
OperationalError = sqlite3.OperationalError
IntegrityError = sqlite3.IntegrityError

# pg_advisory_xact_lock key of the one writer lock ("edgeloop" in ASCII, fits a bigint).
WRITER_LOCK = 0x6564_6765_6C6F_6F70


class Row(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the control code uses of a connection (``sqlite3.Connection`` has it)."""

    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...
    def executescript(self, sql_script: str, /) -> Cursor: ...
    def close(self) -> None: ...


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def dialect(conn: Any) -> str:
    return "postgresql" if isinstance(conn, PgConnection) else "sqlite"


def connect(location: str | Path, *, readonly: bool = False) -> Connection:
    """A connection to the control database at ``location`` (a file path or a URL)."""
    if is_postgres(location):
        return PgConnection(str(location), readonly=readonly)
    path = Path(location)
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
    else:
        # One owner at a time, but not always the creating thread (the daemon is
        # built on one thread and run on another).
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """A write transaction on ``conn`` (SQLite's BEGIN IMMEDIATE; the writer lock on
    PostgreSQL), committed unless the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def table_names(conn: Any) -> list[str]:
    if isinstance(conn, PgConnection):
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
    else:
        query = (
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    return [str(r[0]) for r in conn.execute(query)]


def has_table(conn: Any, name: str) -> bool:
    if isinstance(conn, PgConnection):
        query = (
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = ?"
        )
    else:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(query, (name,)).fetchone() is not None


def redacted(location: str | Path) -> str:
    """``location`` fit for a log line: a URL's password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(location))


# -- PostgreSQL ----------------------------------------------------------------------------


class PgOperationalError(sqlite3.OperationalError):
    """PostgreSQL refused the statement (missing table or column, syntax, lock, link)."""


class PgIntegrityError(sqlite3.IntegrityError):
    """PostgreSQL refused the statement on a constraint."""


class PgRow(tuple):  # type: ignore[type-arg]
    """A result row readable by index and by column name, like ``sqlite3.Row``."""

    _names: tuple[str, ...]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column named {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    return type("PgRow", (PgRow,), {"_names": names, "__slots__": ()})


class PgCursor:
    def __init__(self, rows: list[PgRow], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> PgRow | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[PgRow]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[PgRow]:
        while (row := self.fetchone()) is not None:
            yield row


class PgConnection:
    """``sqlite3.Connection``'s surface on a psycopg connection (autocommit, explicit BEGIN)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        import psycopg  # only the PostgreSQL path pays for the import

        self._psycopg = psycopg
        self.url = url
        self.readonly = readonly
        self._in_tx = False
        self._closed = False
        # One statement at a time per connection, like sqlite3's: the daemon's threads share it.
        self._lock = threading.RLock()
        self._raw = self._connect()

    def _connect(self) -> Any:
        try:
            raw = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            if self.readonly:
                raw.execute("SET default_transaction_read_only = on")
        except self._psycopg.Error as exc:
            raise PgOperationalError(
                f"cannot connect to the control database {redacted(self.url)}: {exc}"
            ) from exc
        return raw

    def _usable(self, rolling_back: bool = False) -> bool:
        """Reconnect a connection the server dropped (a restart, a fail-over). Not in the
        middle of a transaction: the server rolled it back, so that one fails (the caller
        retries, as for SQLite's "database is locked") and the next statement reconnects.
        False when a ROLLBACK has nothing left to roll back."""
        if self._closed or not (self._raw.broken or self._raw.closed):
            return True
        if self._in_tx:
            self._in_tx = False
            if rolling_back:
                return False
            raise PgOperationalError(
                "the connection to the control database broke in a transaction; it was rolled back"
            )
        self._raw = self._connect()
        return True

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def close(self) -> None:
        self._closed = True
        self._raw.close()

    def execute(self, sql: str, parameters: Any = ()) -> PgCursor:
        statement = _translate(sql)
        if statement.kind == "begin":
            with self._lock:
                self._usable()
                self._run("BEGIN", None)
                self._in_tx = True
                if not self.readonly:
                    self._run("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            return PgCursor([], -1)
        if statement.kind in ("commit", "rollback"):
            with self._lock:
                if not self._usable(rolling_back=statement.kind == "rollback"):
                    return PgCursor([], -1)
                try:
                    self._run(statement.sql, None)
                finally:
                    self._in_tx = False
            return PgCursor([], -1)
        if self.readonly and _CREATE_IF.match(sql):
            return PgCursor([], -1)  # as in executescript
        params = _params(parameters)
        with self._lock:
            self._usable()
            if statement.write and not self._in_tx:
                cursor: PgCursor = self._serialised(
                    lambda: self._run(statement.sql, params, statement)
                )
                return cursor
            return self._run(statement.sql, params, statement)

    def executemany(self, sql: str, parameters: Iterable[Any]) -> PgCursor:
        statement = _translate(sql)
        rows = [_params(p) for p in parameters]
        if not rows:
            return PgCursor([], 0)

        def run() -> PgCursor:
            with self._raw.cursor() as cur:
                try:
                    cur.executemany(statement.sql, rows)
                except self._psycopg.Error as exc:
                    raise _error(exc) from exc
                return PgCursor([], cur.rowcount)

        with self._lock:
            self._usable()
            return run() if self._in_tx else self._serialised(run)

    def executescript(self, sql_script: str) -> PgCursor:
        """DDL, translated; statements run one by one in one serialised transaction."""
        statements = [s for s in _split_script(sql_script)]
        if self.readonly:
            # A reader opens stores that create their tables "IF NOT EXISTS": a no-op on an
            # existing table in SQLite's mode=ro, an error in a read-only PostgreSQL
            # transaction. Skipped; a missing table fails the read instead, as in SQLite.
            statements = [s for s in statements if not _CREATE_IF.match(s)]
        with self._lock:
            self._usable()

            def run() -> PgCursor:
                for s in statements:
                    self._run(_translate(s).sql, None)
                return PgCursor([], -1)

            return run() if self._in_tx else self._serialised(run)

    def install_functions(self) -> None:
        """The SQL functions the control schema's readers call (:data:`PG_FUNCTIONS`)."""
        with self._lock:
            self._usable()
            have = self._run(
                "SELECT count(*) FROM pg_proc WHERE proname IN ('json_valid', 'json_extract') "
                "AND pronamespace = current_schema()::regnamespace",
                None,
            ).fetchone()
            if have is not None and have[0] == len(PG_FUNCTIONS):
                return
            self._serialised(lambda: [self._run(f, None) for f in PG_FUNCTIONS])

    # -- internals -----------------------------------------------------------------

    def _serialised(self, work: Any) -> Any:
        """``work`` in its own transaction under the writer lock."""
        self._run("BEGIN", None)
        self._in_tx = True
        try:
            self._run("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            result = work()
        except BaseException:
            self._in_tx = False
            if not (self._raw.broken or self._raw.closed):  # else the server rolled it back
                self._raw.execute("ROLLBACK")
            raise
        self._in_tx = False
        self._run("COMMIT", None)
        return result

    def _run(
        self, sql: str, params: Sequence[Any] | None, statement: Statement | None = None
    ) -> PgCursor:
        with self._raw.cursor() as cur:
            try:
                cur.execute(sql, params)
            except self._psycopg.Error as exc:
                raise _error(exc) from exc
            if cur.description is None:
                return PgCursor([], cur.rowcount)
            names = tuple(d.name for d in cur.description)
            hide = statement is not None and statement.hide_rowid and "rowid" in names
            if hide:
                keep = [i for i, n in enumerate(names) if n != "rowid"]
                cls = _row_class(tuple(names[i] for i in keep))
                rows = [cls(tuple(r[i] for i in keep)) for r in cur.fetchall()]
            else:
                cls = _row_class(names)
                rows = [cls(r) for r in cur.fetchall()]
            return PgCursor(rows, cur.rowcount)


def _params(parameters: Any) -> Sequence[Any]:
    # PostgreSQL will not put a bool in an INTEGER column; SQLite stores it as 0/1.
    if not parameters:
        return ()
    return [int(p) if isinstance(p, bool) else p for p in parameters]


def _error(exc: Exception) -> sqlite3.Error:
    import psycopg

    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.IntegrityError):
        return PgIntegrityError(message)
    return PgOperationalError(message)


# -- translation ---------------------------------------------------------------------------


class Statement:
    __slots__ = ("hide_rowid", "kind", "sql", "write")

    def __init__(self, sql: str, kind: str, write: bool, hide_rowid: bool) -> None:
        self.sql, self.kind, self.write, self.hide_rowid = sql, kind, write, hide_rowid


# Primary keys of the tables whose DDL went through this module: INSERT OR REPLACE needs one.
_PRIMARY_KEYS: dict[str, tuple[str, ...]] = {}
_STRING = re.compile(r"'(?:[^']|'')*'")
_PLAIN_END = re.compile(r'(?<![\w".])end(?![\w"])')
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\(", re.IGNORECASE)
_INSERT_OR = re.compile(r"^\s*INSERT OR (IGNORE|REPLACE) INTO\s+(\w+)\s*\(([^)]*)\)", re.I)
_IS_PARAM = re.compile(r"\bIS \?")
_IS_NOT_PARAM = re.compile(r"\bIS NOT \?")
_CREATE_IF = re.compile(r"^\s*CREATE (UNIQUE )?(TABLE|INDEX) IF NOT EXISTS", re.I)
_TABLE_INFO = re.compile(r"^\s*PRAGMA table_info\((\w+)\)\s*;?\s*$", re.I)


@lru_cache(maxsize=1024)
def _translate(sql: str) -> Statement:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    if head == "BEGIN":
        return Statement("BEGIN", "begin", False, False)
    if head in ("COMMIT", "ROLLBACK", "END"):
        return Statement("ROLLBACK" if head == "ROLLBACK" else "COMMIT", head.lower(), False, False)
    if m := _TABLE_INFO.match(sql):
        return Statement(
            "SELECT ordinal_position - 1 AS cid, column_name AS name, data_type AS type "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            f"AND table_name = '{m.group(1).lower()}' ORDER BY ordinal_position",
            "query",
            False,
            False,
        )
    out = _outside_strings(sql, _code)
    if head in ("CREATE", "ALTER"):
        out = _ddl(out)
    if m := _INSERT_OR.match(out):
        action, table, columns = m.group(1).upper(), m.group(2), m.group(3)
        out = "INSERT INTO" + out[m.start(2) - 1 :]
        out = out.rstrip().rstrip(";")
        if action == "IGNORE":
            out += " ON CONFLICT DO NOTHING"
        else:
            keys = _PRIMARY_KEYS.get(table.lower())
            if not keys:
                raise PgOperationalError(f"INSERT OR REPLACE into {table}: no primary key known")
            cols = [c.strip() for c in columns.split(",")]
            sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
            out += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
    write = head in ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP")
    return Statement(out, "query", write, "rowid" not in sql.lower())


def _outside_strings(sql: str, change: Any) -> str:
    """``change`` applied to the SQL between string literals (literals kept as written)."""
    parts, last = [], 0
    for m in _STRING.finditer(sql):
        parts.append(change(sql[last : m.start()]))
        parts.append(m.group(0).replace("%", "%%"))
        last = m.end()
    parts.append(change(sql[last:]))
    return "".join(parts)


def _code(text: str) -> str:
    # SQLite's "IS ?" compares NULL-safely; PostgreSQL spells that out.
    text = _IS_NOT_PARAM.sub("IS DISTINCT FROM ?", _IS_PARAM.sub("IS NOT DISTINCT FROM ?", text))
    return _PLAIN_END.sub('"end"', text.replace("%", "%%").replace("?", "%s"))


def _ddl(sql: str) -> str:
    if m := _CREATE.search(sql):
        table = m.group(1).lower()
        body = sql[m.end() :]
        if pk := re.search(r"PRIMARY KEY\s*\(([^)]*)\)", body, re.I):
            _PRIMARY_KEYS[table] = tuple(c.strip() for c in pk.group(1).split(","))
        elif pk := re.search(r"(\w+)\s+\w+\s+PRIMARY KEY", body, re.I):
            _PRIMARY_KEYS[table] = (pk.group(1),)
        if not re.search(r"INTEGER PRIMARY KEY", body, re.I):
            sql = sql[: m.end()] + "rowid BIGSERIAL NOT NULL UNIQUE, " + body
    sql = re.sub(r"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY", sql, flags=re.I)
    sql = re.sub(r"INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY", sql, flags=re.I)
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    return sql.replace("ADD COLUMN ", "ADD COLUMN IF NOT EXISTS ")


def _split_script(script: str) -> Iterator[str]:
    """The statements of a DDL script (no semicolons inside literals in ours)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            yield statement.strip()


# Created with the control schema on PostgreSQL: the JSON reads the policies run in the
# database (SQLite's JSON1 functions, for the scalar fields they select).
PG_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION json_valid(doc text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN PERFORM doc::jsonb; RETURN true;
    EXCEPTION WHEN others THEN RETURN false; END $$""",
    # jsonb, which psycopg decodes as json.loads does: an integer stays an int, a number with
    # a fraction a float, a string a str, as SQLite's json_extract returns them.
    """CREATE OR REPLACE FUNCTION json_extract(doc text, path text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN RETURN doc::jsonb #> string_to_array(substr(path, 3), '.');
    EXCEPTION WHEN others THEN RETURN NULL; END $$""",
)
