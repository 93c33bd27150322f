"""``edgeloop``: the control node's command line (typer)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_control.cli.common import CLIState, OneLineErrors

app = typer.Typer(
    name="edgeloop",
    cls=OneLineErrors,
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


def _register() -> None:
    # Imported here so `edgeloop --help` stays fast and each module stays small.
    from edgeloop_control.cli import (
        demo,
        features,
        fleet,
        groups,
        ingest,
        init,
        models,
        rollout,
        runs,
        serve,
        train,
    )

    init.register(app)
    ingest.register(app)
    train.register(app)
    demo.register(app)
    fleet.register(app)
    from edgeloop_control.cli import enrol

    enrol.register(app)  # fleet revoke / identities, on whatever `fleet` is by now
    serve.register(app)
    app.add_typer(models.app, name="models", help="Model registry (git + DVC, GTO tags).")
    app.add_typer(features.app, name="features", help="Versioned feature store.")
    app.add_typer(runs.app, name="runs", help="Experiment tracking runs (MLflow).")
    app.add_typer(rollout.app, name="rollout", help="Staged fleet rollout with automatic rollback.")
    app.add_typer(groups.app, name="group", help="Device groups (for `edgeloop rollout --group`).")
    from edgeloop_control.cli import ab, broker

    app.add_typer(ab.app, name="ab", help="A/B experiments: champion vs challenger, by statistics.")
    app.add_typer(
        broker.app,
        name="broker",
        help="Write Mosquitto configuration for a fleet's brokers (site bridges); "
        "it neither runs nor connects to a broker.",
    )
    from edgeloop_control.cli import drift, report

    report.register(app)
    drift.register(app)


_register()


def main() -> None:
    app()
