"""``edgeloop fleet revoke ID`` and ``edgeloop fleet identities``: device identities.

Issuing one is ``edgeloop fleet add ID --identity certificate|password --bundle PATH``
(cli/fleet.py), which calls :func:`edgeloop_control.fleet.enrolment.enrol`.
"""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import console, print_json, state, table
from edgeloop_control.infra.db import ControlDB


def register(app: typer.Typer) -> None:
    """Put ``revoke`` and ``identities`` on the ``fleet`` group.

    When ``fleet`` is still a single command, it becomes a group whose bare
    invocation (``edgeloop fleet [--json]``) runs that command as before.
    """
    for group in app.registered_groups:
        if group.name == "fleet" and group.typer_instance is not None:
            _add(group.typer_instance)
            return
    for i, info in enumerate(app.registered_commands):
        if info.name == "fleet" and info.callback is not None:
            del app.registered_commands[i]
            app.add_typer(_as_group(info.callback), name="fleet")
            return
    raise RuntimeError("cli/enrol.py: no `fleet` command or group to extend")


def _as_group(view: Any) -> typer.Typer:
    """A group running ``view`` when invoked without a subcommand."""
    fleet_app = typer.Typer(invoke_without_command=True, help=(view.__doc__ or "").split("\n")[0])

    @functools.wraps(view)
    def fleet_view(**kwargs: Any) -> None:
        # The context, whatever the view names it (typer passes click's own).
        ctx = next(v for v in kwargs.values() if hasattr(v, "invoked_subcommand"))
        if ctx.invoked_subcommand is None:
            view(**kwargs)

    fleet_app.callback()(fleet_view)
    _add(fleet_app)
    return fleet_app


def _add(fleet_app: typer.Typer) -> None:
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
    db = ControlDB(ws.state_db)
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
    db = ControlDB(ws.state_db)
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
