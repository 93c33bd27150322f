"""Shared plumbing for the typer CLI: workspace lookup, output, failure."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from edgeloop_control.infra.workspace import Workspace, WorkspaceError

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
            try:
                self._workspace = Workspace.open(self.workspace_arg)
            except WorkspaceError as exc:
                fail(str(exc))
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    return t
