"""``edgeloop fleet revoke ID`` and ``edgeloop fleet identities``: device identities.

Issuing one is ``edgeloop fleet add ID --identity certificate|password --bundle PATH``
(cli/inventory.py), which calls :func:`edgeloop_control.fleet.enrolment.enrol`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import console, print_json, state, table
from edgeloop_control.infra.db import ControlDB


def register_commands(fleet_app: typer.Typer) -> None:
    """Put ``revoke`` and ``identities`` on the ``fleet`` group (cli/fleet.py)."""
    fleet_app.command("revoke")(revoke)
    fleet_app.command("identities")(identities)


def revoke(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="device id")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Revoke a device's broker identity and reload the broker.

    Its certificate goes on the CRL (or its password entry is deleted) and its ACL
    section is removed; the device keeps its inventory row, shown as revoked.
    """
    from edgeloop_control.fleet.enrolment import revoke as revoke_identity

    ws = state(ctx).workspace
    db = ControlDB(ws.control_db)
    try:
        # EnrolmentError is an EdgeloopError: OneLineErrors prints it as one line.
        ident = revoke_identity(ws, db, device)
    finally:
        db.close()
    if as_json:
        print_json({"device": ident.device, "method": ident.method, "state": ident.state})
        return
    console.print(
        f"{device}: {ident.method} identity revoked; the broker was reloaded and refuses it"
    )


def identities(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Device identities issued by this control node: enrolled or revoked."""
    from edgeloop_control.fleet.enrolment import identities as all_identities

    ws = state(ctx).workspace
    db = ControlDB(ws.control_db)
    try:
        found = all_identities(db)
    finally:
        db.close()
    rows: list[dict[str, Any]] = [
        {
            "device": i.device,
            "method": i.method,
            "state": i.state,
            "serial": i.serial,
            "issued_at": i.issued_at,
            "not_after": i.not_after,
            "revoked_at": i.revoked_at,
        }
        for i in found.values()
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no identities issued: `edgeloop fleet add ID --identity certificate`")
        return

    def day(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(ts)) if ts else "-"

    console.print(
        table(
            "Identities",
            ["device", "method", "state", "issued", "expires", "revoked"],
            [
                [
                    r["device"],
                    r["method"],
                    "[red]revoked[/]" if r["state"] == "revoked" else "enrolled",
                    day(r["issued_at"]),
                    day(r["not_after"]),
                    day(r["revoked_at"]),
                ]
                for r in rows
            ],
        )
    )
