"""``edgeloop db``: the control database: where it is, and moving it to PostgreSQL."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail, print_json, state, table
from edgeloop_control.infra import sql

app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    help="The control database: where it is (`show`), moving it to PostgreSQL (`copy`).",
)
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.command("show")
def show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Which control database this workspace uses, its tables' row counts and, with
    several workers, who holds the policies lease and when each worker was last heard of."""
    from edgeloop_control.infra.db import ControlDB

    location = state(ctx).workspace.control_db
    try:
        db = ControlDB(location)
    except sql.Error as exc:
        fail(f"cannot open the control database {sql.redacted(location)}: {exc}")
    try:
        tables = sql.table_names(db.conn)
        counts = {t: _count(db.conn, t) for t in tables}
        now = time.time()
        lease = _lease(db.conn, now) if "leases" in tables else None
        workers = _workers(db.conn, now) if "workers" in tables else []
    finally:
        db.close()
    engine = "postgresql" if sql.is_postgres(location) else "sqlite"
    if as_json:
        print_json(
            {
                "engine": engine,
                "location": sql.redacted(location),
                "tables": counts,
                "lease": lease,
                "workers": workers,
            }
        )
        return
    console.print(f"control database: {engine} at {sql.redacted(location)}")
    if lease is not None:
        state_text = "expired" if lease["expires_in_s"] <= 0 else "held"
        console.print(
            f"policies lease: {lease['holder']} (term {lease['term']}, {state_text}, "
            f"{lease['expires_in_s']:+.1f} s)"
        )
    if workers:
        rows = [[w["name"], f"{w['heartbeat_age_s']:.1f} s ago"] for w in workers]
        console.print(table("Workers", ["worker", "last heartbeat"], rows))
    console.print(table("Tables", ["table", "rows"], [[t, str(n)] for t, n in counts.items()]))


@app.command("copy")
def copy(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="URL",
            help="an empty PostgreSQL database, postgresql://USER@HOST/DB (password from "
            "~/.pgpass or $PGPASSWORD)",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Copy the workspace's SQLite control database into an empty PostgreSQL database.

    Stop `edgeloop serve` first; afterwards set `[control] database` to the URL.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeloop_control.infra.dbcopy import CopyError, copy_control_db

    ws = state(ctx).workspace
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} rows"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
        transient=True,
    ) as progress:
        task = progress.add_task("copying", total=None)

        def report(table_name: str, rows: int) -> None:
            progress.update(task, description=f"copying {table_name}", completed=rows)

        try:
            copied = copy_control_db(ws.state_db, to, progress=report)
        except (CopyError, sql.Error) as exc:
            fail(f"cannot copy the control database: {exc}")
    if as_json:
        print_json({"target": sql.redacted(to), "tables": copied.tables, "rows": copied.rows})
        return
    console.print(
        table("Copied", ["table", "rows"], [[t, str(n)] for t, n in copied.tables.items()])
    )
    console.print(
        f"copied {copied.rows} rows in {len(copied.tables)} tables to {sql.redacted(to)}; "
        f'now set [control] database = "{sql.redacted(to)}" in edgeloop.toml'
    )


def _lease(conn: sql.Connection, now: float) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT holder, term, expires_at FROM leases WHERE name = 'policies'"
    ).fetchone()
    if row is None:
        return None
    return {
        "holder": row["holder"],
        "term": int(row["term"]),
        "expires_in_s": round(float(row["expires_at"]) - now, 1),
    }


def _workers(conn: sql.Connection, now: float) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT name, heartbeat_at FROM workers ORDER BY name").fetchall()
    return [
        {"name": r["name"], "heartbeat_age_s": round(now - float(r["heartbeat_at"]), 1)}
        for r in rows
    ]


def _count(conn: sql.Connection, name: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])
