"""``edgeloop deploy`` and ``edgeloop fleet``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from edgeloop_agent.wire.topics import Topics
from edgeloop_control.cli.common import (
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
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, connected
from edgeloop_control.infra.signing import DesiredSigner, SigningError


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("fleet")(fleet)
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
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Publish desired state (and the artifacts) to devices.

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
        # The workspace's key paths, so artifact_bytes() checks the signature too.
        registry = Registry.for_workspace(ws, create=False, sync_remote=False)
        serving = [(registry.get(s.ref), float(s.weight or 0)) for s in specs]
        shadows = [registry.get(ref) for ref in (shadow or [])]
        signer = DesiredSigner.for_workspace(ws)
    except (DeployError, RegistryError, SigningError) as exc:
        fail(str(exc))
    db = ControlDB(ws.state_db)
    results: list[dict[str, Any]] = []
    try:
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


def fleet(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to collect device status")] = 2.0,
) -> None:
    """Devices with desired vs reported model versions and online state."""
    st = state(ctx)
    ws = st.workspace
    db = ControlDB(ws.state_db)
    try:
        desired = db.all_desired()
        inventory = {d["device"]: d for d in db.devices()}
    finally:
        db.close()
    reported: dict[str, dict[str, Any]] = {}
    broker_down: str | None = None
    try:
        with connected(st.broker) as client:
            for msg in client.retained(
                Topics.every_device("status", ws.topic_prefix), timeout=timeout
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
    devices = sorted(set(desired) | set(reported) | set(inventory))
    out: list[dict[str, Any]] = []
    for dev in devices:
        want = desired.get(dev)
        have = reported.get(dev) or (inventory.get(dev) or {}).get("status") or {}
        out.append(
            {
                "device": dev,
                "online": None if broker_down else bool(have.get("online")),
                "desired_revision": want["revision"] if want else None,
                "desired": _summary(want["models"]) if want else "",
                "reported_revision": have.get("revision"),
                "reported": _summary(have.get("models") or []),
                "in_sync": want is not None and have.get("revision") == want["revision"],
                "drifting": sorted(
                    v
                    for v, d in ((inventory.get(dev) or {}).get("drift") or {}).items()
                    if d.get("data_drift")
                ),
                "rss_mb": _mb(((inventory.get(dev) or {}).get("telemetry") or {}).get("rss_bytes")),
                "cpu_percent": ((inventory.get(dev) or {}).get("telemetry") or {}).get(
                    "cpu_percent"
                ),
                "outbox_depth": ((inventory.get(dev) or {}).get("telemetry") or {}).get(
                    "outbox_depth"
                ),
                "error": (have.get("error") or {}).get("code"),
                # An agent applying unsigned documents is a security hole; say so.
                "allow_unsigned": bool(have.get("allow_unsigned")),
                "desired_expired": bool(have.get("desired_expired")),
                "last_seen": have.get("ts"),
            }
        )
    if as_json:
        print_json(out)
        return
    if not out:
        console.print("no devices yet: deploy to one with `edgeloop deploy MODEL@vN --device ID`")
        return
    now = time.time()
    rows = [
        [
            r["device"],
            _state(r["online"]),
            f"r{r['desired_revision']} {r['desired']}" if r["desired_revision"] else "-",
            f"r{r['reported_revision']} {r['reported']}" if r["reported_revision"] else "-",
            "yes" if r["in_sync"] else "[yellow]no[/]",
            ", ".join(r["drifting"]) or "-",
            "" if r["rss_mb"] is None else f"{r['rss_mb']:.0f} MB",
            "" if r["outbox_depth"] is None else str(r["outbox_depth"]),
            _flags(r),
            f"{now - r['last_seen']:.0f}s ago" if r["last_seen"] else "",
        ]
        for r in out
    ]
    console.print(
        table(
            "Fleet",
            [
                "device",
                "state",
                "desired",
                "reported",
                "in sync",
                "drift",
                "memory",
                "outbox",
                "error / flags",
                "seen",
            ],
            rows,
        )
    )


def _state(online: bool | None) -> str:
    if online is None:
        return "[yellow]unknown[/]"
    return "[green]online[/]" if online else "[red]offline[/]"


def _flags(r: dict[str, Any]) -> str:
    parts = [r["error"]] if r["error"] else []
    if r["allow_unsigned"]:
        parts.append("[red]UNSIGNED ALLOWED[/]")
    if r["desired_expired"]:
        parts.append("[yellow]desired expired[/]")
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
    db = ControlDB(ws.state_db)
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
