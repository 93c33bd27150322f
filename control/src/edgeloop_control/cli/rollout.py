"""``edgeloop rollout``: staged fleet rollout with automatic rollback.

``edgeloop rollout MODEL@vN ...`` is shorthand for ``edgeloop rollout start
MODEL@vN ...`` (a group can't take a positional argument next to its
sub-commands in click, so the group rewrites the shorthand instead).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressBar,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperGroup

if TYPE_CHECKING:
    # typer vendors its own click (typer._click): TyperGroup's signatures name those
    # classes, not the separately installed click package's.
    from typer import _click as click

from edgeloop_control.cli.common import (
    CLIState,
    console,
    err_console,
    fail,
    print_json,
    state,
    table,
)
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.fleet.inventory import UnknownDevice, require_known
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, Publisher, connected
from edgeloop_control.policies.rollout import (
    FINAL,
    ROLLED_BACK,
    RolloutManager,
    parse_gates,
)

_MODEL_REF = re.compile(r"[@#:=]")


class _RolloutGroup(TyperGroup):
    """Routes ``edgeloop rollout MODEL@vN ...`` to ``start``."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and _MODEL_REF.search(args[0]):
            args = ["start", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_RolloutGroup,
    no_args_is_help=True,
    help="Staged rollout with automatic rollback. `edgeloop rollout MODEL@vN ...` = `start`.",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

_STATE_STYLE = {
    "loaded": "green",
    "pending": "yellow",
    "offline": "magenta",
    "failed": "bold red",
    "rolling_back": "red",
    "rolled_back": "red",
    "waiting": "dim",
    "untouched": "dim",
    "passed": "green",
    "checking": "yellow",
    "publishing": "yellow",
    "skipped": "dim",
    "stopped": "red",
    "running": "yellow",
    "completed": "green",
}


@app.command("start")
def start(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Argument(
            help="version to roll out: MODEL@vN (any registry ref), or edgeloop-agent=VERSION "
            "(an agent package, `edgeloop agent publish`)"
        ),
    ],
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="the devices of this group")
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="device id, repeatable; in this order (canary first)"),
    ] = None,
    canary: Annotated[
        str | None, typer.Option(help="first batch: share of devices, 10% or 0.1 [config: 10%]")
    ] = None,
    step: Annotated[
        str | None, typer.Option(help="each later batch: share of devices [config: 25%]")
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            help="NAME=VALUE, repeatable: error_rate, p99_ms, restarts, min_requests, soak_s",
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds a batch may take to load and soak [120]")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="why; recorded in the events")] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="drive the rollout from here until it ends (no daemon needed)"),
    ] = False,
    arch: Annotated[
        str | None,
        typer.Option(help="edgeloop-agent=VERSION: the package's architecture, if several"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a staged rollout: canary batch, then steps, each gated; rollback on failure.

    Without --device or --group: every known device that has desired state. Devices
    must be known (`edgeloop fleet add`); those offline longer than [fleet] offline_after_s
    are skipped.
    """
    st = state(ctx)
    if device:
        try:
            _known(st.workspace.control_db, device)  # before the registry: the user's typo first
        except (DeployError, UnknownDevice) as exc:
            fail(str(exc))
    db = ControlDB(st.workspace.control_db)
    try:
        manager = _manager(st, db, None)
        try:
            info = manager.start(
                model,
                devices=device or None,
                group=group,
                canary=canary,
                step=step,
                gates=parse_gates(gate or []),
                batch_timeout_s=timeout,
                reason=reason,
                agent_arch=arch,
            )
        except EdgeloopError as exc:  # RolloutError, ConfigError (shares, gates)
            fail(str(exc))
        if wait:
            _drive(st, db, info["id"], as_json)
            return
        if as_json:
            print_json(info)
            return
        console.print(_detail(info))
        console.print(
            f"recorded rollout [bold]{info['id']}[/]; the control daemon (`edgeloop serve`) "
            f"carries it out. Follow it with `edgeloop rollout status {info['id']}`, or drive it "
            f"from here with `edgeloop rollout wait {info['id']}`.",
            highlight=False,
        )
    finally:
        db.close()


@app.command("wait")
def wait_cmd(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="rollout id (ro-...)")],
    as_json: JsonOpt = False,
) -> None:
    """Drive a rollout from here until it completes or rolls back (exit 1 if it rolls back).

    Safe next to a running `edgeloop serve`: both take each step once.
    """
    st = state(ctx)
    db = ControlDB(st.workspace.control_db)
    try:
        _drive(st, db, rollout_id, as_json)
    finally:
        db.close()


@app.command("status")
def status(
    ctx: typer.Context,
    rollout_id: Annotated[str | None, typer.Argument(help="rollout id; default: all")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rollout progress: batches, each device's state, gates' measurements, timings."""
    st = state(ctx)
    db = ControlDB(st.workspace.control_db)
    try:
        manager = _manager(st, db, None)
        try:
            rows = manager.status(rollout_id)
        except EdgeloopError as exc:
            fail(str(exc))
    finally:
        db.close()
    if as_json:
        print_json(rows[0] if rollout_id else rows)
        return
    if rollout_id:
        console.print(_detail(rows[0]))
        return
    if not rows:
        console.print("no rollouts yet: start one with `edgeloop rollout start MODEL@vN`")
        return
    console.print(
        table(
            "Rollouts",
            ["id", "model", "state", "batch", "loaded", "started", "reason / failure"],
            [
                [
                    r["id"],
                    r["model"],
                    _styled(r["state"]),
                    f"{r['current_batch']}/{r['batch_count']}",
                    f"{r['devices_loaded']}/{r['devices_total']}",
                    _clock(r["created_at"]),
                    r["failure"] or r["reason"] or "",
                ]
                for r in rows
            ],
            wrap=("reason / failure",),
            droppable=("started",),
        )
    )


@app.command("abort")
def abort(
    ctx: typer.Context,
    rollout_id: Annotated[str, typer.Argument(help="rollout id (ro-...)")],
    reason: Annotated[
        str, typer.Option(help="why; recorded in the events")
    ] = "aborted by the operator",
    as_json: JsonOpt = False,
) -> None:
    """Stop a rollout and roll back every device it switched (new, higher revisions)."""
    st = state(ctx)
    db = ControlDB(st.workspace.control_db)
    try:
        try:
            with connected(st.broker) as client:
                info = _manager(st, db, client).abort(rollout_id, reason)
        except BrokerError as exc:
            # The abort itself is durable; the daemon publishes the rollback.
            try:
                _manager(st, db, None).abort(rollout_id, reason)
            except EdgeloopError as inner:
                fail(str(inner))
            fail(
                f"{exc}; the abort of {rollout_id} is recorded and `edgeloop serve` "
                "publishes the rollback once it reaches the broker"
            )
        except EdgeloopError as exc:
            fail(str(exc))
    finally:
        db.close()
    if as_json:
        print_json(info)
        return
    console.print(_detail(info))


# -- helpers ------------------------------------------------------------------------------


def _manager(st: CLIState, db: ControlDB, client: Publisher | None) -> RolloutManager:
    try:
        return RolloutManager(st.workspace, db, client)
    except EdgeloopError as exc:  # a bad [rollout] section: ConfigError
        fail(str(exc))


def _drive(st: CLIState, db: ControlDB, rollout_id: str, as_json: bool) -> None:
    """Ingest the fleet's reports and tick the rollout until it ends, with a progress bar."""
    from edgeloop_control.policies.rollout.feed import BrokerFeed

    info: dict[str, Any] = {}
    try:
        with connected(st.broker) as client:
            manager = _manager(st, db, client)
            info = _status_or_fail(manager, rollout_id)
            feed = BrokerFeed(client, db, st.workspace.topic_prefix)
            time.sleep(1.0)  # take the retained statuses in before judging who is online
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("devices"),
                TimeElapsedColumn(),
                console=console,
                disable=as_json,
            ) as progress:
                task = progress.add_task(_progress_text(info), total=info["devices_total"])
                while info["state"] not in FINAL:
                    feed.pump()
                    manager.tick()
                    info = _status_or_fail(manager, rollout_id)
                    progress.update(
                        task, completed=info["devices_loaded"], description=_progress_text(info)
                    )
                    if info["state"] not in FINAL:
                        time.sleep(0.25)
    except BrokerError as exc:
        fail(f"{exc}; the rollout is recorded, `edgeloop serve` can carry it out")
    except KeyboardInterrupt:
        err_console.print(
            f"stopped watching; rollout {rollout_id} is still {info.get('state', 'running')} — "
            f"`edgeloop serve` or `edgeloop rollout wait {rollout_id}` carries it on"
        )
        raise typer.Exit(130) from None
    if as_json:
        print_json(info)
    else:
        console.print(_detail(info))
    if info["state"] == ROLLED_BACK:
        fail(f"rollout {rollout_id} rolled back: {info['failure']}")


def _status_or_fail(manager: RolloutManager, rollout_id: str) -> dict[str, Any]:
    try:
        return manager.status(rollout_id)[0]
    except EdgeloopError as exc:
        fail(str(exc))


def _known(path: str | Path, devices: list[str]) -> None:
    db = ControlDB(path)
    try:
        require_known(db, devices, new_device=None)
    finally:
        db.close()


def _progress_text(info: dict[str, Any]) -> str:
    return (
        f"{info['id']} {info['model']}: batch {info['current_batch']}/{info['batch_count']} "
        f"{info['state']}"
    )


def _detail(info: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    cfg = info["config"]
    head = Text.from_markup(
        f"[bold]{info['id']}[/] {info['model']} — {_styled(info['state'])}, "
        f"batch {info['current_batch']}/{info['batch_count']}, "
        f"{info['devices_loaded']}/{info['devices_total']} devices loaded\n"
        f"gates: error rate <= {cfg['max_error_rate']:.1%}, p99 <= {cfg['max_p99_ms']:g} ms, "
        f"restarts <= {cfg['max_restarts']}, soak {cfg['soak_s']:g} s, "
        f"batch timeout {cfg['batch_timeout_s']:g} s"
    )
    parts: list[Any] = [head]
    if info["devices_total"]:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=info["devices_total"], completed=info["devices_loaded"], width=50),
            f"{info['devices_loaded']}/{info['devices_total']} loaded",
        )
        parts.append(bar)
    skipped = (info.get("selector") or {}).get("skipped_offline")
    if skipped:
        parts.append(
            Text(
                "skipped (offline longer than [fleet] offline_after_s): " + ", ".join(skipped),
                style="magenta",
            )
        )
    if info.get("failure"):
        parts.append(Text(f"failure: {info['failure']}", style="red"))
    if info.get("last_error") and info["state"] not in FINAL:
        parts.append(Text(f"last error: {info['last_error']}", style="yellow"))
    rows = []
    for b in info["batches"]:
        timing = _timing(b)
        for i, d in enumerate(b["devices"]):
            rows.append(
                [
                    f"{b['number']} {b['kind']}" if i == 0 else "",
                    _styled(b["state"]) if i == 0 else "",
                    d["device"],
                    _styled(d["state"]),
                    f"r{d['target_revision']}" if d["target_revision"] else "",
                    _health(d.get("health")),
                    d["failure"] or "",
                    timing if i == 0 else "",
                ]
            )
    parts.append(
        table(
            None,
            ["batch", "batch state", "device", "state", "revision", "health", "failure", "timing"],
            rows,
            wrap=("batch", "health", "failure", "timing"),
            droppable=("batch state",),
        )
    )
    return Group(*parts)


def _timing(b: dict[str, Any]) -> str:
    start = b.get("published_at") or b.get("started_at")
    if start is None:
        return ""
    end = b.get("passed_at") or b.get("failed_at")
    took = f", {end - start:.1f} s" if end else f", {time.time() - start:.0f} s so far"
    return f"{_clock(start)}{took}"


def _health(h: dict[str, Any] | None) -> str:
    if not h:
        return ""
    p99 = f", p99 {h['p99_ms']:.1f} ms" if h.get("p99_ms") is not None else ""
    return f"{h['requests']} req, {h['error_rate']:.1%} err{p99}"


def _styled(value: str) -> str:
    style = _STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value


def _clock(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""
