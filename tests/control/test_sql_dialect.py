"""infra/sql.py's translation of the control node's SQLite-flavoured SQL for PostgreSQL, rule
by rule (the both-engine test modules run it for real on a PostgreSQL server)."""

from __future__ import annotations

import pytest

from edgeloop_control.infra import sql
from edgeloop_control.infra.sql import PgRow, _row_class, _translate

CASES = [
    (
        "SELECT a FROM t WHERE b = ? AND c LIKE '50%?'",
        "SELECT a FROM t WHERE b = %s AND c LIKE '50%%?'",
    ),
    (
        "UPDATE r SET x = ? WHERE id IS ? AND y IS NOT ?",
        "UPDATE r SET x = %s WHERE id IS NOT DISTINCT FROM %s AND y IS DISTINCT FROM %s",
    ),
    (
        "SELECT start, end FROM w ORDER BY end DESC",
        'SELECT start, "end" FROM w ORDER BY "end" DESC',
    ),
    (
        "SELECT CASE WHEN a THEN 1 END AS v FROM t",
        "SELECT CASE WHEN a THEN 1 END AS v FROM t",
    ),
    (
        "INSERT OR IGNORE INTO seen(msg_id, ts) VALUES (?, ?)",
        "INSERT INTO seen(msg_id, ts) VALUES (%s, %s) ON CONFLICT DO NOTHING",
    ),
]


@pytest.mark.parametrize(("sqlite", "postgres"), CASES)
def test_statements(sqlite: str, postgres: str) -> None:
    assert _translate(sqlite).sql == postgres


def test_ddl_types_rowid_and_replace_on_the_primary_key() -> None:
    ddl = _translate(
        "CREATE TABLE IF NOT EXISTS hourly (device TEXT NOT NULL, hour REAL NOT NULL, "
        "n INTEGER NOT NULL, end REAL, PRIMARY KEY (device, hour))"
    ).sql
    assert ddl == (
        "CREATE TABLE IF NOT EXISTS hourly (rowid BIGSERIAL NOT NULL UNIQUE, device TEXT NOT "
        'NULL, hour DOUBLE PRECISION NOT NULL, n BIGINT NOT NULL, "end" DOUBLE PRECISION, '
        "PRIMARY KEY (device, hour))"
    )
    events = _translate(
        "CREATE TABLE IF NOT EXISTS ev (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL)"
    ).sql
    assert events == "CREATE TABLE IF NOT EXISTS ev (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION)"
    upsert = _translate("INSERT OR REPLACE INTO hourly(device, hour, n) VALUES (?, ?, ?)").sql
    assert upsert == (
        "INSERT INTO hourly(device, hour, n) VALUES (%s, %s, %s) "
        "ON CONFLICT (device, hour) DO UPDATE SET n = excluded.n"
    )
    with pytest.raises(sql.OperationalError, match="no primary key known"):
        _translate("INSERT OR REPLACE INTO nowhere(a) VALUES (?)")


def test_transactions_and_pragmas() -> None:
    assert _translate("BEGIN IMMEDIATE").kind == "begin"
    assert _translate("COMMIT").kind == "commit" and _translate("ROLLBACK").kind == "rollback"
    info = _translate("PRAGMA table_info(devices)").sql
    assert "information_schema.columns" in info and "'devices'" in info
    assert _translate("DELETE FROM t WHERE a = ?").write
    assert not _translate("SELECT 1").write


def test_rows_read_by_name_and_index_like_sqlite3_row() -> None:
    row: PgRow = _row_class(("device", "n"))(("pump-1", 3))
    assert row["device"] == "pump-1" and row[1] == 3 and row.keys() == ["device", "n"]
    assert dict(row) == {"device": "pump-1", "n": 3}  # type: ignore[call-overload]
    with pytest.raises(IndexError, match="no column named x"):
        row["x"]


def test_urls_are_logged_without_their_password() -> None:
    assert sql.redacted("postgresql://edgeloop:s3cret@db:5432/x") == (
        "postgresql://edgeloop:***@db:5432/x"
    )
    assert sql.is_postgres("postgres://db/x") and not sql.is_postgres("/var/x.sqlite")
