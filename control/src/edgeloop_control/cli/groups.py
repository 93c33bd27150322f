"""``edgeloop group``: named device groups, the unit of ``edgeloop rollout --group``.

Groups live in the inventory (the ``groups`` JSON list of each device in
control.sqlite); a device may belong to several. Every device named must be known
(it has connected, or `edgeloop fleet add` registered it); ``--new-device``
registers the unknown ones, so a group can be set up before its devices come online.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail, print_json, state, table
from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.fleet.inventory import UnknownDevice, require_known
from edgeloop_control.infra.db import ControlDB

app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    help="Device groups (for `edgeloop rollout --group`).",
)

_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _check_group(name: str) -> str:
    if not _GROUP.match(name):
        fail(f"group name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)")
    return name


def groups_of(db: ControlDB) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in db.devices():
        for g in d.get("groups") or []:
            out.setdefault(g, []).append(d["device"])
    return {g: sorted(members) for g, members in sorted(out.items())}


@app.command("set")
def set_group(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="group name")],
    devices: Annotated[list[str], typer.Argument(help="its devices (exactly these)")],
    new_device: Annotated[
        bool,
        typer.Option("--new-device", help="register devices the inventory does not know yet"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make GROUP exactly these devices: listed ones join it, the others leave it."""
    _check_group(group)
    db = ControlDB(state(ctx).workspace.control_db)
    try:
        try:
            members = require_known(
                db, devices, new_device=new_device, source="edgeloop group set --new-device"
            )
        except (DeployError, UnknownDevice) as exc:
            fail(str(exc))
        with db.transaction():
            for d in db.devices():
                current = list(d.get("groups") or [])
                if group in current and d["device"] not in members:
                    db.upsert_device(d["device"], groups=[g for g in current if g != group])
            for device in members:
                current = list((db.device(device) or {}).get("groups") or [])
                if group not in current:
                    db.upsert_device(device, groups=sorted([*current, group]))
            db.add_event(
                "group",
                f"group {group}: {', '.join(members)}",
                subject=group,
                data={"group": group, "devices": members},
            )
        result = groups_of(db).get(group, [])
    finally:
        db.close()
    if as_json:
        print_json({"group": group, "devices": result})
        return
    console.print(f"group [bold]{group}[/]: {', '.join(result)}", highlight=False)


@app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Groups and their devices."""
    db = ControlDB(state(ctx).workspace.control_db)
    try:
        groups = groups_of(db)
        online = {d["device"]: bool(d.get("online")) for d in db.devices()}
    finally:
        db.close()
    if as_json:
        print_json(groups)
        return
    if not groups:
        console.print("no groups yet: create one with `edgeloop group set GROUP DEVICE...`")
        return
    rows = [
        [
            g,
            len(members),
            ", ".join(f"{m}" + ("" if online.get(m) else " (offline)") for m in members),
        ]
        for g, members in groups.items()
    ]
    console.print(table("Groups", ["group", "devices", "members"], rows))


@app.command("rm")
def rm(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="group name")],
) -> None:
    """Delete GROUP (its devices stay in the inventory)."""
    _check_group(group)
    db = ControlDB(state(ctx).workspace.control_db)
    try:
        with db.transaction():
            touched = 0
            for d in db.devices():
                current = list(d.get("groups") or [])
                if group in current:
                    db.upsert_device(d["device"], groups=[g for g in current if g != group])
                    touched += 1
            if not touched:
                fail(f"no group {group!r}; see `edgeloop group ls`")
            db.add_event("group", f"group {group} deleted", subject=group)
    finally:
        db.close()
    console.print(f"deleted group [bold]{group}[/] ({touched} device(s))", highlight=False)
