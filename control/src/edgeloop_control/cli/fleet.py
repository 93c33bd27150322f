"""``edgeloop deploy`` and ``edgeloop fleet``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from edgeloop_agent.wire.topics import Topics
from edgeloop_control.cli.common import (
    OneLineErrors,
    console,
    err_console,
    fail,
    from_database,
    print_json,
    state,
    table,
)
from edgeloop_control.cli.owners import end_owners
from edgeloop_control.fleet.desired import (
    DeployError,
    DesiredState,
    DeviceOwned,
    check_device_ids,
    parse_variant_specs,
)
from edgeloop_control.fleet.inventory import UnknownDevice, require_known
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, connected
from edgeloop_control.infra.signing import DesiredSigner, SigningError
from edgeloop_control.infra.workspace import Workspace


def register(app: typer.Typer) -> None:
    from edgeloop_control.cli import enrol, inventory

    app.command("deploy")(deploy)
    inventory.register_commands(fleet_app)
    enrol.register_commands(fleet_app)
    app.add_typer(fleet_app, name="fleet")
    app.command("events")(events)


def deploy(
    ctx: typer.Context,
    versions: Annotated[list[str], typer.Argument(help="MODEL@vN or MODEL@vN=WEIGHT ...")],
    device: Annotated[list[str], typer.Option("--device", "-d", help="device id; repeatable")],
    shadow: Annotated[
        list[str] | None, typer.Option("--shadow", help="MODEL@vN run in shadow; repeatable")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="experiment id for key hashing (default: derived)")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="end the A/B experiment or rollout that owns a device (stop/abort), then deploy",
        ),
    ] = False,
    new_device: Annotated[
        bool,
        typer.Option("--new-device", help="register devices the inventory does not know yet"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Publish desired state (and the artifacts) to devices.

    Every device must be known (it has connected, or `edgeloop fleet add` registered it);
    an unknown one (a typo) is refused naming known ones, unless --new-device.

    A device that belongs to a running A/B experiment or rollout is refused, naming
    it, unless --force: that ends the owner first as `edgeloop ab stop` / `edgeloop
    rollout abort` would, and records that the deploy did.
    """
    st = state(ctx)
    ws = st.workspace
    from edgeloop_control.registry import Registry, RegistryError

    try:
        specs = parse_variant_specs(versions)
        devices = check_device_ids(device)
        if not new_device:
            _check_known(ws, devices)  # the user's typo before the registry's
        # The workspace's key paths, so artifact_bytes() checks the signature too.
        registry = Registry.for_workspace(ws, create=False, sync_remote=False)
        serving = [(registry.get(s.ref), float(s.weight or 0)) for s in specs]
        shadows = [registry.get(ref) for ref in (shadow or [])]
        signer = DesiredSigner.for_workspace(ws)
    except (DeployError, RegistryError, SigningError, UnknownDevice) as exc:
        fail(str(exc))
    db = ControlDB(ws.control_db)
    results: list[dict[str, Any]] = []
    try:
        # Registered (--new-device) once the deploy is sure to be attempted.
        require_known(db, devices, new_device=new_device, source="edgeloop deploy --new-device")
        # Refused before connecting: an owned device is not a broker question.
        owned = DesiredState(db, None, ws.topic_prefix, signer).owners(devices)
        if owned and not force:
            refusal = DeviceOwned(owned)
            them = "it" if len(refusal.owners) == 1 else "them"
            fail(f"{refusal}; or deploy with --force to end {them} first")
        with connected(st.broker) as client:
            desired = DesiredState(db, client, ws.topic_prefix, signer)
            ended = end_owners(st, db, client, desired, owned) if owned else {}
            for mv in [mv for mv, _ in serving] + shadows:
                desired.publish_artifact(mv, registry.artifact_bytes(mv))
            for dev in devices:
                doc = desired.publish(
                    dev, desired.plan(dev, serving, shadows, experiment=experiment)
                )
                db.add_event(
                    "deploy",
                    f"{dev}: revision {doc['revision']} -> "
                    + ", ".join(f"{m['variant']}={m['weight']:g}" for m in doc["models"]),
                    subject=dev,
                    data={"revision": doc["revision"], "models": doc["models"]},
                )
                results.append(
                    {
                        "device": dev,
                        "revision": doc["revision"],
                        "desired": doc,
                        "ended": ended.get(dev),
                    }
                )
    except (BrokerError, DeployError, RegistryError) as exc:
        fail(str(exc))
    finally:
        db.close()
    if as_json:
        print_json(results)
        return
    _print_deployed(results)


def _check_known(ws: Workspace, devices: list[str]) -> None:
    db = ControlDB(ws.control_db)
    try:
        require_known(db, devices)
    finally:
        db.close()


def _print_deployed(results: list[dict[str, Any]]) -> None:
    for r in {id(e): e for e in (r["ended"] for r in results) if e}.values():
        console.print(f"ended {r['kind']} {r['id']} ({r['state']}) to deploy over it")
    rows = [
        [
            r["device"],
            r["revision"],
            ", ".join(
                f"{m['variant']} {m['weight']:g}%"
                if m["role"] == "serve"
                else f"{m['variant']} (shadow)"
                for m in r["desired"]["models"]
            ),
        ]
        for r in results
    ]
    console.print(table("Deployed", ["device", "revision", "models"], rows))


fleet_app = typer.Typer(
    cls=OneLineErrors,
    help="The fleet: devices with desired vs reported versions, traffic and state. "
    "`edgeloop fleet add|rm` registers and removes devices.",
)


@fleet_app.callback(invoke_without_command=True)
def fleet(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to collect device status")] = 2.0,
) -> None:
    """Devices: desired vs reported versions, state, traffic (requests, errors, p99 of the
    last report), drift, memory, when last heard from."""
    if ctx.invoked_subcommand is not None:
        return
    st = state(ctx)
    ws = st.workspace
    db = ControlDB(ws.control_db)
    try:
        desired = db.all_desired()
        inventory = {d["device"]: d for d in db.devices()}
        from edgeloop_control.fleet.enrolment import identities

        issued = {device: ident.state for device, ident in identities(db).items()}
        from edgeloop_control.cli.retraining import failing_lines

        warnings = failing_lines(db)
    finally:
        db.close()
    reported: dict[str, dict[str, Any]] = {}
    broker_down: str | None = None
    try:
        with connected(st.broker) as client:
            # Retained messages follow the SUBACK at once: a short settle when the inventory
            # (kept by the daemon) has the devices anyway, the usual one when it is empty.
            for msg in client.retained(
                Topics.every_device("status", ws.topic_prefix),
                settle=0.2 if inventory else 0.5,
                timeout=timeout,
            ):
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    reported[msg.topic.split("/")[-2]] = doc
    except BrokerError as exc:
        if not inventory and not desired:
            fail(str(exc))
        # The database's "online" is as old as its newest message: not a live state.
        broker_down = from_database(
            str(exc), max((d["last_seen"] or 0 for d in inventory.values()), default=None) or None
        )
        err_console.print(broker_down, highlight=False, markup=False, soft_wrap=True)
    out = fleet_rows(desired, inventory, reported, live=broker_down is None, identities=issued)
    if as_json:
        print_json(out)
        return
    if not out:
        console.print(
            "no devices yet: register one with `edgeloop fleet add ID`, or start its agent"
        )
        return
    _print_fleet(out, time.time())
    for line in warnings:
        err_console.print(f"warning: {line}", style="yellow", highlight=False, markup=False)


def fleet_rows(
    desired: dict[str, dict[str, Any]],
    inventory: dict[str, dict[str, Any]],
    reported: dict[str, dict[str, Any]],
    *,
    live: bool = True,
    identities: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One dict per device (the ``--json`` output), from what the database and the
    broker's retained status say; no query per device. Without ``live`` status (the
    broker is unreachable) ``online`` is None: unknown, not offline. ``identities`` maps
    a device to the state of the broker identity enrolment issued it (enrolled, revoked)."""
    out: list[dict[str, Any]] = []
    for dev in sorted(set(desired) | set(reported) | set(inventory)):
        want = desired.get(dev)
        row = inventory.get(dev) or {}
        have = reported.get(dev) or row.get("status") or {}
        telemetry = row.get("telemetry") or {}
        requests, errors = telemetry.get("requests"), telemetry.get("errors")
        status_ts = have.get("ts") if have.get("online") else None
        seen = [t for t in (row.get("last_seen"), status_ts) if isinstance(t, (int, float))]
        out.append(
            {
                "device": dev,
                "online": bool(have.get("online")) if live else None,
                "known": dev in inventory,
                "identity": (identities or {}).get(dev),
                "desired_revision": want["revision"] if want else None,
                "desired": _summary(want["models"]) if want else "",
                "reported_revision": have.get("revision"),
                "reported": _summary(have.get("models") or []),
                "in_sync": want is not None and have.get("revision") == want["revision"],
                "drifting": sorted(
                    v for v, d in (row.get("drift") or {}).items() if d.get("data_drift")
                ),
                # Of the device's last telemetry report (its interval_s): what it serves now.
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests if requests else None,
                "p99_ms": telemetry.get("p99_ms"),
                "interval_s": telemetry.get("interval_s"),
                "rss_mb": _mb(telemetry.get("rss_bytes")),
                "cpu_percent": telemetry.get("cpu_percent"),
                "outbox_depth": telemetry.get("outbox_depth"),
                "error": (have.get("error") or {}).get("code"),
                # An agent applying unsigned documents is a security hole; say so.
                "allow_unsigned": bool(have.get("allow_unsigned")),
                "desired_expired": bool(have.get("desired_expired")),
                "last_seen": max(seen) if seen else None,
                "registered_at": row.get("registered_at"),
            }
        )
    return out


_FLEET_COLUMNS = [
    "device", "state", "desired", "reported", "in sync", "req", "err", "p99",
    "drift", "memory", "outbox", "error / flags", "seen",
]  # fmt: skip
# Dropped first to last when the terminal is too narrow; identifiers are never cut.
_DROPPABLE = ["outbox", "memory", "in sync", "p99", "drift", "err", "req", "seen"]


def _print_fleet(out: list[dict[str, Any]], now: float) -> None:
    from rich.text import Text

    def state_cell(r: dict[str, Any]) -> Text:
        if r["online"] is None:
            return Text("unknown", style="yellow")
        if r["online"]:
            return Text("online", style="green")
        if r["last_seen"] is None and r["reported_revision"] is None:
            return Text("never seen", style="dim")
        return Text("offline", style="red")

    rows = [
        [
            r["device"],
            state_cell(r),
            f"r{r['desired_revision']} {r['desired']}" if r["desired_revision"] else "-",
            f"r{r['reported_revision']} {r['reported']}" if r["reported_revision"] else "-",
            "yes" if r["in_sync"] else Text("no", style="yellow"),
            "" if r["requests"] is None else str(r["requests"]),
            "" if r["error_rate"] is None else f"{r['error_rate']:.1%}",
            "" if r["p99_ms"] is None else f"{r['p99_ms']:.3g} ms",
            ", ".join(r["drifting"]) or "-",
            "" if r["rss_mb"] is None else f"{r['rss_mb']:.0f} MB",
            "" if r["outbox_depth"] is None else str(r["outbox_depth"]),
            Text(
                _flags(r),
                style="red" if r["allow_unsigned"] else ("yellow" if r["desired_expired"] else ""),
            ),
            _ago(now - r["last_seen"]) if r["last_seen"] else "",
        ]
        for r in out
    ]
    _print_table(rows)


def _print_table(rows: list[list[Any]]) -> None:
    """The fleet table, drawn as one Text: rich's Table measures and renders every cell
    as its own renderable (2.2 s for 1,000 devices, bench/bench_fleet_view.py); this is
    the same layout (rich's default box, no cell ever cut) in a few ms. Column dropping and
    the vertical fallback are cli/layout.py's rules."""
    from rich.cells import cell_len
    from rich.text import Span, Text

    from edgeloop_control.cli.layout import print_rows, table_width, terminal_safe

    keep = list(range(len(_FLEET_COLUMNS)))
    for dropped in range(len(_DROPPABLE) + 1):
        cols = [_FLEET_COLUMNS[i] for i in keep]
        cut = [[row[i] for i in keep] for row in rows]
        if table_width(cols, cut) <= console.width:
            break
        if dropped == len(_DROPPABLE):  # nothing left to drop: layout.py goes vertical
            print_rows(console, "Fleet", _FLEET_COLUMNS, rows, droppable=_DROPPABLE)
            return
        keep.remove(_FLEET_COLUMNS.index(_DROPPABLE[dropped]))
    # Plain text and style spans, put together once: a Text per cell costs more than the
    # whole table.
    plain = [
        [terminal_safe(c.plain if isinstance(c, Text) else str(c)) for c in row] for row in cut
    ]
    widths = [max([cell_len(c)] + [cell_len(r[i]) for r in plain]) for i, c in enumerate(cols)]
    parts: list[str] = ["Fleet\n", "┏" + "┳".join("━" * (w + 2) for w in widths) + "┓\n┃"]
    spans: list[Span] = [Span(0, 5, "italic")]
    pos = sum(len(p) for p in parts)
    for name, w in zip(cols, widths, strict=True):
        spans.append(Span(pos + 1, pos + 1 + len(name), "bold"))
        parts.append(f" {name.ljust(w)} ┃")
        pos += w + 3
    parts.append("\n┡" + "╇".join("━" * (w + 2) for w in widths) + "┩\n")
    pos += len(parts[-1])
    for row, texts in zip(plain, cut, strict=True):
        parts.append("│")
        pos += 1
        for text, source, w in zip(row, texts, widths, strict=True):
            if isinstance(source, Text) and source.style:
                spans.append(Span(pos + 1, pos + 1 + len(text), source.style))
            cell = f" {text}{' ' * (w - cell_len(text))} │"
            parts.append(cell)
            pos += len(cell)
        parts.append("\n")
        pos += 1
    parts.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
    console.print(Text("".join(parts), spans=spans), soft_wrap=True, highlight=False)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _flags(r: dict[str, Any]) -> str:
    parts = [r["error"]] if r["error"] else []
    if r["allow_unsigned"]:
        parts.append("UNSIGNED ALLOWED")
    if r["desired_expired"]:
        parts.append("desired expired")
    if not r["known"]:
        parts.append("not in inventory")
    if r["identity"] == "revoked":
        parts.append("REVOKED")
    return ", ".join(parts)


def _mb(value: Any) -> float | None:
    return value / 2**20 if isinstance(value, (int, float)) else None


def _summary(models: list[dict[str, Any]]) -> str:
    parts = []
    for m in models:
        ref = m.get("variant") or f"{m.get('name')}@{m.get('version')}"
        if m.get("role") == "shadow":
            parts.append(f"{ref} (shadow)")
        else:
            parts.append(f"{ref} {float(m.get('weight') or 0):g}%")
    return ", ".join(parts)


def events(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="only this kind, e.g. drift_detected")] = None,
    since: Annotated[float | None, typer.Option(help="only the last N seconds")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """What the control node did and why: deployments, drift, retraining, A/B, rollouts."""
    ws = state(ctx).workspace
    db = ControlDB(ws.control_db)
    try:
        rows = db.events(
            kind=kind, since=(time.time() - since) if since is not None else None, limit=limit
        )
    finally:
        db.close()
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no events yet")
        return
    console.print(
        table(
            "Events",
            ["time", "kind", "subject", "message"],
            [
                [
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])),
                    r["kind"],
                    r["subject"] or "",
                    r["message"],
                ]
                for r in rows
            ],
        )
    )
