"""Shared plumbing for the typer CLI: workspace lookup, output, failure."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgeloop_agent.wire.names import InvalidName
from edgeloop_agent.wire.network import BrokerAddressError
from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.terminal import table

if TYPE_CHECKING:
    # typer vendors its own click: the supertype's invoke() takes this Context.
    from typer._click import Context as ClickContext

__all__ = [
    "CLIState",
    "OneLineErrors",
    "console",
    "err_console",
    "fail",
    "from_database",
    "print_json",
    "state",
    "table",
]

console = Console()
err_console = Console(stderr=True)


class CLIState:
    """Global options, stored on the typer context by the root callback."""

    def __init__(self, workspace: str | None, broker: str | None) -> None:
        self.workspace_arg = workspace
        self.broker_arg = broker
        self._workspace: Workspace | None = None

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            # A WorkspaceError is a ConfigError: OneLineErrors prints it.
            self._workspace = Workspace.open(self.workspace_arg)
        return self._workspace

    @property
    def broker(self) -> str:
        return self.workspace.broker_url(self.broker_arg)


def state(ctx: typer.Context) -> CLIState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CLIState):  # a sub-app invoked on its own (tests)
        obj = CLIState(None, None)
        ctx.find_root().obj = obj
    return obj


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    # Escaped: messages name config sections ("[rollout]"), which rich would
    # otherwise take for markup and silently drop.
    line = " ".join(message.split("\n")).strip()
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Bad input caught by the validation the control node shares with the agent (a
# device id or model name, a broker URL such as --broker ftp://x): not bugs, so one
# line too.
ONE_LINE_ERRORS: tuple[type[Exception], ...] = (EdgeloopError, InvalidName, BrokerAddressError)


def exit_code(exc: BaseException) -> int:
    """2 for a setting that cannot be used (systemd's RestartPreventExitStatus=2:
    restarting cannot fix it), 1 for any other failure."""
    return 2 if isinstance(exc, (ConfigError, BrokerAddressError)) else 1


class OneLineErrors(TyperGroup):
    """A command group that turns any :class:`EdgeloopError` into one line on stderr.

    The one place the CLI decides how a failure the user can act on looks: exit 2
    for a setting that cannot be used (:class:`ConfigError` and the agent's own,
    like click's usage errors), 1 for anything else (a bad name included). Any
    other exception is a bug and keeps its traceback. The root ``edgeloop`` app
    uses it, which covers every command; sub-apps that are also invoked on their
    own (the tests do) use it too.
    """

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except ONE_LINE_ERRORS as exc:
            fail(str(exc).strip() or type(exc).__name__, exit_code(exc))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def from_database(reason: str, as_of: float | None) -> str:
    """The line a view prints when it answers from the control database because the
    broker cannot be reached: what failed, and how old the data is. Devices' live
    state is then unknown: the database's "online" is only as fresh as its newest message.
    """
    when = (
        "no device message recorded yet"
        if as_of is None
        else f"as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(as_of))} "
        f"({max(0.0, time.time() - as_of):.0f}s ago, the newest device message)"
    )
    return f"{reason}; showing the control database {when}; device state unknown"
