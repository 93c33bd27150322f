"""``edgeloop agent``: agent packages the devices update themselves to.

``edgeloop agent publish PATH.deb`` stores an ``edgeloop-agent`` package built by
``make deb`` in the workspace and publishes it (retained, in 4 MiB chunks);
``edgeloop agent list`` shows what is stored. Devices get it from a rollout,
``edgeloop rollout start edgeloop-agent=VERSION --device ID...``, gated like a
model rollout (docs/operations.md, "Updating the agent").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail, print_json, state, table
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.fleet.agentpackages import AgentPackages
from edgeloop_control.infra.mqtt import connected

app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    help="Agent packages the devices update themselves to (publish, list).",
)
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@app.command()
def publish(
    ctx: typer.Context,
    deb: Annotated[Path, typer.Argument(help="an edgeloop-agent .deb (make deb)")],
    no_broker: Annotated[
        bool,
        typer.Option("--no-broker", help="only store it; a rollout publishes it when it starts"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store an agent package in the workspace and publish it (retained chunks)."""
    st = state(ctx)
    store = AgentPackages.for_workspace(st.workspace)
    try:
        stored = store.add(deb)
        chunks = 0
        if not no_broker:
            with connected(st.broker) as client:
                chunks = store.publish(client, st.workspace.topic_prefix, stored)
    except EdgeloopError as exc:
        fail(str(exc))
    pkg = stored.package
    if as_json:
        print_json({**pkg.to_dict(), "path": str(stored.path), "chunks_published": chunks})
        return
    console.print(
        f"stored edgeloop-agent {pkg.version} ({pkg.architecture}, {pkg.size} bytes, "
        f"sha256 {pkg.sha256[:12]}) in {stored.path.parent}"
        + (f"; published in {chunks} chunks" if chunks else "")
        + f". Roll it out with `edgeloop rollout start edgeloop-agent={pkg.version} ...`",
        highlight=False,
    )


@app.command("list")
def list_packages(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The agent packages stored in the workspace."""
    st = state(ctx)
    packages = AgentPackages.for_workspace(st.workspace).list()
    if as_json:
        print_json([p.to_dict() for p in packages])
        return
    rows = [(p.version, p.architecture, p.size, p.sha256[:16]) for p in packages]
    console.print(table("agent packages", ["version", "architecture", "size", "sha256"], rows))
