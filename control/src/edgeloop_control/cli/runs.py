"""``edgeloop runs``: list tracked training runs and replay workspace runs to MLflow."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail, print_json, state, table

app = typer.Typer(
    cls=OneLineErrors,
    help="Experiment tracking runs (MLflow).",
    invoke_without_command=True,
    no_args_is_help=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.callback()
def _default(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    if ctx.invoked_subcommand is None:
        _list(ctx, None, False, 50, as_json)


@app.command("ls")
def ls(
    ctx: typer.Context,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="list the workspace's runs even if a URI is set")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Runs, most recent first: from the tracking server, or the workspace's own."""
    _list(ctx, experiment, local, limit, as_json)


def _list(
    ctx: typer.Context, experiment: str | None, local: bool, limit: int, as_json: bool
) -> None:
    from edgeloop_control.tracking import Tracker, TrackingError

    ws = state(ctx).workspace
    tracker = Tracker(None if local else ws.tracking_uri, ws.local_runs_dir)
    try:
        runs = tracker.list_runs(experiment, max_results=limit)
    except TrackingError as exc:
        fail(str(exc))
    if as_json:
        print_json([r.to_dict() for r in runs])
        return
    where = "workspace (tracking/)" if tracker.is_local else tracker.uri
    if not runs:
        console.print(f"no runs in {where}", highlight=False)
        return
    columns = ["run id", "experiment", "name", "status", "started"]
    rows: list[list[object]] = [
        [r.run_id, r.mlflow_experiment, r.run_name or "", r.status, _when(r.start_time)]
        for r in runs
    ]
    if tracker.is_local:
        columns.append("pushed to")
        for row, r in zip(rows, runs, strict=True):
            row.append(", ".join(sorted(r.pushed)) or "-")
    # Run ids get copied into other commands: the table never wraps or cuts them.
    console.print(
        table(f"runs in {where}", columns, rows, wrap=("pushed to",), droppable=("started", "name"))
    )


@app.command("push")
def push(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="MLflow tracking URI, e.g. http://host:5000")],
    experiment: Annotated[str | None, typer.Option("--experiment", "-e")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay the workspace's runs to an MLflow server; runs already there are skipped."""
    from edgeloop_control.tracking import TrackingError, push_local_runs

    ws = state(ctx).workspace
    try:
        results = push_local_runs(ws, to, mlflow_experiment=experiment)
    except TrackingError as exc:
        fail(without_credentials(str(exc)))
    linked = link_pushed_versions(ws, results, to)
    if as_json:
        print_json(
            [{**r.to_dict(), "model_versions": linked.get(r.local_run_id, [])} for r in results]
        )
        return
    for lid, refs in sorted(linked.items()):
        remote = next(r.remote_run_id for r in results if r.local_run_id == lid)
        console.print(f"{', '.join(refs)}: lineage now names MLflow run {remote}", highlight=False)
    if not results:
        console.print("no workspace runs to push")
        return
    rows = [
        [r.local_run_id, r.mlflow_experiment, r.status, r.remote_run_id or "", r.reason or ""]
        for r in results
    ]
    console.print(
        table(
            f"push to {without_credentials(to)}",
            ["local run", "experiment", "result", "remote run", "note"],
            rows,
            wrap=("note",),
        )
    )


def without_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it removed: `--to` may carry
    them (http://user:pass@host), and errors and titles are printed and logged."""
    return _URL_CREDENTIALS.sub("://", text)


_URL_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def link_pushed_versions(ws: Any, results: list[Any], to: str) -> dict[str, list[str]]:
    """Link each registered version trained by a pushed workspace run to the run's new
    MLflow id (Registry.link_run), so `models show` leads to the run on the server.
    Returns local run id -> the versions linked now."""
    pushed = {
        r.local_run_id: r.remote_run_id
        for r in results
        if r.remote_run_id and r.status in ("pushed", "already-pushed")
    }
    if not pushed or not (ws.registry_dir / ".dvc").is_dir():
        return {}
    from edgeloop_control.registry import Registry

    registry = Registry.for_workspace(ws, create=False, sync_remote=False)
    linked: dict[str, list[str]] = {}
    for mv in registry.list():
        local = str(mv.lineage.get("tracking_run_id") or "")
        if mv.lineage.get("tracking_uri") != "workspace" or local not in pushed:
            continue
        if registry.link_run(mv.ref, pushed[local], to, local_run_id=local):
            linked.setdefault(local, []).append(mv.ref)
    return linked


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
