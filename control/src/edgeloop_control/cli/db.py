"""``edgeloop db``: the control database: where it is, and moving it to PostgreSQL."""

from __future__ import annotations

from typing import Annotated

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
    """Which control database this workspace uses, and its tables' row counts."""
    from edgeloop_control.infra.db import ControlDB

    location = state(ctx).workspace.control_db
    try:
        db = ControlDB(location)
    except sql.Error as exc:
        fail(f"cannot open the control database {sql.redacted(location)}: {exc}")
    try:
        counts = {t: _count(db.conn, t) for t in sql.table_names(db.conn)}
    finally:
        db.close()
    engine = "postgresql" if sql.is_postgres(location) else "sqlite"
    if as_json:
        print_json({"engine": engine, "location": sql.redacted(location), "tables": counts})
        return
    console.print(f"control database: {engine} at {sql.redacted(location)}")
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


def _count(conn: sql.Connection, name: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])
