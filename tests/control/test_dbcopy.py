"""``edgeloop db copy``: a workspace's SQLite control state moved to PostgreSQL, whole.

The shared history (five days of drift, two experiments, two rollouts) is copied through the
CLI into a fresh PostgreSQL database: every table holds the same rows, rowids included; the
commands an operator reads answer the same on both; new rows continue the sequences; and a
target that already holds control state is refused with one line, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB
from tests.control.fleet_history import History
from tests.control.web_client import copy_workspace
from tests.pgserver import PostgresServer

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def run(ws_root: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGELOOP_CONTROL_DB"}
    if url:
        env["EDGELOOP_CONTROL_DB"] = url
    return subprocess.run(
        [EDGELOOP, "-w", str(ws_root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "COLUMNS": "200"},
    )


def rows(db: ControlDB, table: str) -> list[tuple[Any, ...]]:
    """(rowid, the columns) of every row; PostgreSQL's rowid column is not one of them."""
    key = "rowid" if table != "events" else "id"
    out = []
    for r in db.conn.execute(f"SELECT {key} AS rid, * FROM {table} ORDER BY {key}"):
        names = [k for k in r.keys() if k not in ("rid", "rowid")]  # noqa: SIM118 (a row)
        out.append((r["rid"], *(r[k] for k in names)))
    return out


@pytest.fixture
def copied(
    fleet_history: History, postgres: PostgresServer, tmp_path: Path, monkeypatch: Any
) -> tuple[Path, str, dict[str, Any]]:
    monkeypatch.delenv("EDGELOOP_CONTROL_DB", raising=False)
    ws = copy_workspace(fleet_history.ws, tmp_path / "ws")
    url = postgres.new_database()
    out = run(ws.root, "db", "copy", "--to", url, "--json")
    assert out.returncode == 0, out.stderr
    return ws.root, url, json.loads(out.stdout)


def test_every_row_is_copied_with_its_rowid(copied: tuple[Path, str, dict[str, Any]]) -> None:
    root, url, summary = copied
    src, dst = ControlDB(root / "control.sqlite"), ControlDB(url)
    try:
        tables = sql.table_names(src.conn)
        assert set(tables) <= set(sql.table_names(dst.conn))
        assert {"devices", "events", "drift_windows", "variant_stats", "experiments"} <= set(
            summary["tables"]
        )
        assert summary["rows"] > 100
        for table in tables:
            assert rows(src, table) == rows(dst, table), table
            assert summary["tables"][table] == len(rows(src, table))
        # New rows follow the copied ones.
        last = max(e["id"] for e in src.events(limit=10_000))
        assert dst.add_event("note", "after the copy") == last + 1
        n = dst.conn.execute("SELECT MAX(rowid) FROM seen_messages").fetchone()[0]
        assert dst.first_sighting("new-report")
        assert dst.conn.execute("SELECT MAX(rowid) FROM seen_messages").fetchone()[0] == n + 1
    finally:
        src.close()
        dst.close()


def test_the_fleet_commands_answer_the_same_on_both(
    copied: tuple[Path, str, dict[str, Any]],
) -> None:
    root, url, _ = copied
    for command in (["drift", "--json"], ["ab", "status", "--json"], ["events", "--json"]):
        on_sqlite, on_pg = run(root, *command), run(root, *command, url=url)
        assert on_sqlite.returncode == 0 and on_pg.returncode == 0, (on_sqlite, on_pg)
        assert json.loads(on_pg.stdout) == json.loads(on_sqlite.stdout), command
    shown = run(root, "db", "show", "--json", url=url)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["engine"] == "postgresql" and info["tables"]["experiments"] == 2


def test_a_target_with_control_state_is_refused(copied: tuple[Path, str, dict[str, Any]]) -> None:
    root, url, _ = copied
    before = ControlDB(url)
    try:
        n = before.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        before.close()
    again = run(root, "db", "copy", "--to", url)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already holds control state" in again.stderr
    after = ControlDB(url)
    try:
        assert after.conn.execute("SELECT count(*) FROM events").fetchone()[0] == n
    finally:
        after.close()
    bad = run(root, "db", "copy", "--to", "mysql://x/y")
    assert bad.returncode == 1 and "must be a postgresql:// URL" in bad.stderr


def test_a_table_name_edgeloop_did_not_make_is_refused(
    fleet_history: History, postgres: PostgresServer, tmp_path: Path, monkeypatch: Any
) -> None:
    import sqlite3

    monkeypatch.delenv("EDGELOOP_CONTROL_DB", raising=False)
    ws = copy_workspace(fleet_history.ws, tmp_path / "ws")
    with sqlite3.connect(ws.root / "control.sqlite") as conn:
        conn.execute('CREATE TABLE "x; DROP TABLE devices; --" (a INTEGER)')
    out = run(ws.root, "db", "copy", "--to", postgres.new_database())
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "tables edgeloop did not make" in out.stderr
