"""``edgeloop init``: create a workspace (config, feature store, registry, signing key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import console, fail, print_json, state


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path | None, typer.Argument(help="workspace directory (default: .)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a workspace: config, feature store, registry and signing key."""
    from edgeloop_control.featurestore import FeatureStore
    from edgeloop_control.infra.signing import ensure_keypair
    from edgeloop_control.infra.workspace import Workspace
    from edgeloop_control.registry import Registry

    st = state(ctx)
    target = directory or Path(st.workspace_arg or ".")
    try:
        ws = Workspace.init(target, broker=st.broker_arg)
        FeatureStore(ws.feature_store_dir)
        ensure_keypair(ws.signing_key_path, ws.public_key_path)
        Registry.for_workspace(ws)
    except OSError as exc:  # not ours to name: an unwritable directory, a full disk
        fail(str(exc))
    info = {
        "workspace": str(ws.root),
        "config": str(ws.root / "edgeloop.toml"),
        "feature_store": str(ws.feature_store_dir),
        "registry": str(ws.registry_dir),
        "dvc_remote": ws.registry_remote,
        "public_key": str(ws.public_key_path),
    }
    if as_json:
        print_json(info)
        return
    console.print(f"[green]created workspace[/] {ws.root}")
    console.print(
        f"give agents the signing key's public half: [bold]{ws.public_key_path}[/] "
        "(edgeloop-agent --trusted-key)"
    )
