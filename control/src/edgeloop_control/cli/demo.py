"""``edgeloop demo``: the whole loop on this machine (private broker, real agents)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import console, fail, state


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    workdir: Annotated[
        Path | None, typer.Option(help="keep the demo's workspace and logs here")
    ] = None,
    devices: Annotated[int, typer.Option(min=2, max=10)] = 3,
    rate: Annotated[float, typer.Option(help="requests/s per device")] = 40.0,
    report: Annotated[Path | None, typer.Option(help="where to write the HTML report")] = None,
) -> None:
    """Run the whole loop on this machine with a private broker and real agents."""
    from edgeloop_control.demo.run import run_demo

    try:
        run_demo(
            broker_url=state(ctx).broker_arg,
            workdir=workdir,
            devices=devices,
            rate=rate,
            report_path=report,
            console=console,
        )
    # DemoError is a RuntimeError; agents and brokers that fail to start raise
    # RuntimeError/OSError too: all name the step that failed after this prefix.
    except (RuntimeError, OSError) as exc:
        fail(f"demo failed: {exc}")
