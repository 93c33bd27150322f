"""``edgeloop fleet add`` and ``edgeloop fleet rm``: which devices the fleet has.

A device is known once it has connected or has been registered here; every command
that targets devices refuses an unknown one (``fleet/inventory.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import console, fail, print_json, state
from edgeloop_control.fleet.desired import DeployError, DesiredState, DeviceOwned
from edgeloop_control.fleet.inventory import UnknownDevice, known_devices, remove
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, connected

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
IDENTITIES = ("none", "certificate", "password")


def register_commands(app: typer.Typer) -> None:
    app.command("add")(add)
    app.command("rm")(rm)


def add(
    ctx: typer.Context,
    devices: Annotated[list[str], typer.Argument(help="device ids to register")],
    identity: Annotated[
        str,
        typer.Option(help="how the device proves who it is: certificate, password or none"),
    ] = "none",
    bundle: Annotated[
        Path | None,
        typer.Option(help="where to write the device's enrolment bundle (default: ID.bundle)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register devices before they first connect, so commands may target them; with
    --identity, also issue each one's broker identity and write its enrolment bundle
    (0600) for `edgeloop-agent enroll` on the device."""
    from edgeloop_control.fleet import inventory

    if identity not in IDENTITIES:
        fail(f"--identity {identity!r}: choose one of {', '.join(IDENTITIES)}", 2)
    if bundle is not None and identity == "none":
        fail("--bundle holds an enrolled identity: give --identity certificate or password", 2)
    unique = list(dict.fromkeys(devices))
    if bundle is not None and len(unique) > 1:
        fail("--bundle names one file: enrol one device per command, or leave it out", 2)
    st = state(ctx)
    ws = st.workspace
    db = ControlDB(ws.control_db)
    enrolled: list[dict[str, Any]] = []
    try:
        added = inventory.register(db, unique, source="edgeloop fleet add")
        if identity != "none":
            from edgeloop_control.fleet.enrolment import enrol

            for device in unique:
                # EnrolmentError is an EdgeloopError: printed as one line, exit 1. The
                # device stays registered; `fleet add` again retries the identity.
                done = enrol(
                    ws, db, device, method=identity, bundle=bundle or Path(f"{device}.bundle")
                )
                enrolled.append(
                    {
                        "device": done.device,
                        "method": done.method,
                        "bundle": str(done.bundle),
                        "broker": done.broker,
                        "serial": done.serial,
                        "not_after": done.not_after,
                    }
                )
    except (DeployError, UnknownDevice) as exc:
        fail(str(exc))
    finally:
        db.close()
    already = [d for d in unique if d not in added]
    if as_json:
        print_json({"added": added, "already_known": already, "enrolled": enrolled})
        return
    if added:
        console.print(f"registered {', '.join(added)}", highlight=False)
    if already:
        console.print(f"already known: {', '.join(already)}", highlight=False)
    for e in enrolled:
        console.print(
            f"{e['device']}: {e['method']} identity issued, bundle written to {e['bundle']} "
            f"(0600); on the device: edgeloop-agent enroll {Path(e['bundle']).name}",
            highlight=False,
            soft_wrap=True,
        )


def rm(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="device id to remove")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="end the A/B experiment or rollout that owns it (stop/abort), then remove it",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a device: its retained desired state and status are cleared, its desired
    state, inventory row and group memberships deleted; its history stays.

    Refused while an A/B experiment or rollout owns it, unless --force (which ends that
    owner first, as `edgeloop deploy --force` does). A device that connects again is
    known again: revoke its credentials to keep it out.
    """
    from edgeloop_control.cli.owners import end_owners
    from edgeloop_control.infra.signing import DesiredSigner

    st = state(ctx)
    ws = st.workspace
    db = ControlDB(ws.control_db)
    ended: dict[str, dict[str, Any]] = {}
    try:
        owned = DesiredState(db, None, ws.topic_prefix, lambda: DesiredSigner.for_workspace(ws))
        if db.device(device) is None and db.desired(device) is None:
            raise UnknownDevice([device], known_devices(db))  # before the broker
        holders = owned.owners([device])
        if holders and not force:
            fail(f"{DeviceOwned(holders)}; or remove it with --force to end that first")
        with connected(st.broker) as client:
            if holders:
                desired = DesiredState.for_workspace(ws, db, client)
                ended = end_owners(st, db, client, desired, holders)
            removed = remove(db, client, ws.topic_prefix, device)
    except (BrokerError, DeployError, UnknownDevice) as exc:
        fail(str(exc))
    finally:
        db.close()
    result = {
        "device": removed.device,
        "desired_cleared": removed.had_desired,
        "groups": removed.groups,
        "ended": ended.get(device),
    }
    if as_json:
        print_json(result)
        return
    e = ended.get(device)
    if e:
        console.print(f"ended {e['kind']} {e['id']} ({e['state']}) to remove {device}")
    console.print(
        f"removed {device}"
        + ("; its retained desired state is cleared" if removed.had_desired else "")
        + (f"; it left group(s) {', '.join(removed.groups)}" if removed.groups else ""),
        highlight=False,
    )
