"""Step-by-step narration with timings for the demo."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Narrator:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.steps: list[tuple[str, float]] = []
        self.history: list[tuple[str, float, float]] = []  # (title, wall start, seconds)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        n = len(self.steps) + 1
        t0 = time.monotonic()
        wall = time.time()
        self.console.print(f"[bold cyan]▶ {n}. {title}[/]")
        try:
            yield
        except BaseException:
            self.console.print(
                f"[bold red]✗ {n}. {title} failed after {time.monotonic() - t0:.1f} s[/]"
            )
            raise
        took = time.monotonic() - t0
        self.steps.append((title, took))
        self.history.append((title, wall, took))
        self.console.print(f"[green]✓[/] {title} [dim]({took:.1f} s)[/]")

    def say(self, text: str) -> None:
        self.console.print(f"   {text}", highlight=False)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
