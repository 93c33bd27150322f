"""``edgeloop report``: one self-contained HTML page about the workspace's fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import console, fail, print_json, state


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="from this time: ISO date/time (UTC unless given) or 2h, 7d ago"),
    ] = None,
    until: Annotated[str | None, typer.Option(help="up to this time (same forms)")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", "-d", help="only this device; repeatable")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="only this model (NAME or NAME@vN); repeatable"),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path(
        "report.html"
    ),
    title: Annotated[str | None, typer.Option(help="page title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the path and summary")] = False,
) -> None:
    """Write one HTML page: fleet, drift per feature, every A/B test and rollout, events.

    Self-contained: it opens from disk with no network."""
    from edgeloop_control.cli.filters import selection
    from edgeloop_control.infra.db import ControlDB
    from edgeloop_control.report import ReportDataError, write_report
    from edgeloop_control.report.collect import collect_report

    ws = state(ctx).workspace
    sel = selection(since, until, device, model)
    db = ControlDB(ws.control_db)
    try:
        data = collect_report(ws, db, sel, title=title)
    finally:
        db.close()
    try:
        path = write_report(data, output)
    except ReportDataError as exc:  # a record the report cannot show: name it
        fail(f"cannot render the report: {exc}")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    if as_json:
        print_json({"path": str(path), "summary": data["summary"]})
        return
    s = data["summary"]
    console.print(
        f"report: {path} ({s['devices']} devices, {s['drift windows']} drift windows, "
        f"{s['experiments']} experiments, {s['rollouts']} rollouts, {s['events']} events)",
        highlight=False,
        soft_wrap=True,
    )
