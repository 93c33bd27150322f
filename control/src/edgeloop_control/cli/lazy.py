"""The root command group imports a command's module only when that command runs.

Building every command at start-up imported paho, cryptography, the policies and rich's
progress bars for `edgeloop --help` (about 1.1 s of a 1.3 s run on the 2-core box;
bench/bench_cli_startup.py). The root group lists each command from :data:`COMMANDS`
(name, module, one-line help) and imports the module when the command is resolved.
tests/control/test_cli_lazy.py checks the table against the real commands.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

import typer
from typer._click import Command
from typer.core import TyperCommand

from edgeloop_control.cli.common import OneLineErrors

if TYPE_CHECKING:
    from typer._click import Context as ClickContext


class Lazy(NamedTuple):
    module: str
    help: str
    # A module with `register(app)` adds its commands itself; otherwise its `app` is a
    # sub-command group added under the name.
    group: bool = False


COMMANDS: dict[str, Lazy] = {
    "init": Lazy("init", "Create a workspace: config, feature store, registry and signing key."),
    "ingest": Lazy("ingest", "Load a CSV or Parquet file into the feature store."),
    "train": Lazy(
        "train", "Train, export to ONNX, verify parity, register MODEL@vN and track the run."
    ),
    "demo": Lazy(
        "demo", "Run the whole loop on this machine with a private broker and real agents."
    ),
    "deploy": Lazy("fleet", "Publish desired state (and the artifacts) to devices."),
    "fleet": Lazy(
        "fleet",
        "The fleet: devices with desired vs reported versions, traffic and state. "
        "`edgeloop fleet add|rm` registers and removes devices.",
    ),
    "events": Lazy(
        "fleet",
        "What the control node did and why: deployments, drift, retraining, A/B, rollouts.",
    ),
    "serve": Lazy(
        "serve",
        "Ingest fleet telemetry, keep the inventory, run retraining/A-B/rollout policies.",
    ),
    "models": Lazy("models", "Model registry (git + DVC, GTO tags).", group=True),
    "features": Lazy("features", "Versioned feature store.", group=True),
    "runs": Lazy("runs", "Experiment tracking runs (MLflow).", group=True),
    "rollout": Lazy("rollout", "Staged fleet rollout with automatic rollback.", group=True),
    "agent": Lazy(
        "agent", "Agent packages the devices update themselves to (publish, list).", group=True
    ),
    "group": Lazy("groups", "Device groups (for `edgeloop rollout --group`).", group=True),
    "ab": Lazy("ab", "A/B experiments: champion vs challenger, by statistics.", group=True),
    "broker": Lazy(
        "broker",
        "Write Mosquitto configuration for a fleet's brokers (site bridges); "
        "it neither runs nor connects to a broker.",
        group=True,
    ),
    "db": Lazy(
        "db",
        "The control database: where it is (`show`), moving it to PostgreSQL (`copy`).",
        group=True,
    ),
    "report": Lazy(
        "report",
        "Write one HTML page: fleet, drift per feature, every A/B test and rollout, events.",
    ),
    "drift": Lazy(
        "drift", "Per-feature drift of recent windows: PSI, KS p-value and the agent's verdict."
    ),
}


def load(name: str) -> Command:
    """The real click command ``name``, importing its module."""
    spec = COMMANDS[name]
    module: Any = importlib.import_module(f"edgeloop_control.cli.{spec.module}")
    holder = typer.Typer(cls=OneLineErrors)
    if spec.group:
        holder.add_typer(module.app, name=name, help=spec.help)
    else:
        module.register(holder)
    holder.callback()(lambda: None)  # always a group, even for one command
    built: Any = typer.main.get_command(holder)
    command: Command = built.commands[name]
    return command


class _Listed(TyperCommand):
    """What `edgeloop --help` lists for a command whose module is not imported."""


class LazyRoot(OneLineErrors):
    """The `edgeloop` group: commands from :data:`COMMANDS`, imported when resolved."""

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: ClickContext, cmd_name: str) -> Command | None:
        found: Command | None = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in COMMANDS:
            found = _Listed(cmd_name, help=COMMANDS[cmd_name].help)
        return found

    def resolve_command(
        self, ctx: ClickContext, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _Listed) and name is not None:
            command = self.commands[name] = load(name)
        return name, command, rest
