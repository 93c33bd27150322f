"""``edgeloop``: the control node's command line (typer)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_control.cli.common import CLIState
from edgeloop_control.cli.lazy import LazyRoot

app = typer.Typer(
    name="edgeloop",
    # Each command's module is imported when the command runs (cli/lazy.py).
    cls=LazyRoot,
    help="edgeloop control node: feature store, registry, training, fleet rollout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    workspace: Annotated[
        str | None,
        typer.Option(
            "--workspace",
            "-w",
            envvar="EDGELOOP_WORKSPACE",
            help="workspace directory (default: .)",
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            envvar="EDGELOOP_BROKER",
            help="MQTT broker the commands connect to, mqtt(s)://host:port "
            "(default: the workspace's \\[broker] url)",
        ),
    ] = None,
) -> None:
    ctx.obj = CLIState(workspace, broker)


def main() -> None:
    app()
