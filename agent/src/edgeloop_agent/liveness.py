"""Is every agent thread still alive and making progress? Feeds the systemd watchdog.

A thread that dies (an exception nobody caught) or stops beating (a deadlock, a
call that never returns) must stop the watchdog pings, so systemd restarts the
agent instead of leaving a device that answers requests but never updates, or
updates but never reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Watched:
    thread: threading.Thread
    last_beat: Callable[[], float] | None  # monotonic time of its last sign of progress
    max_silence_s: float


class Liveness:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._watched: dict[str, _Watched] = {}
        self._clock = clock

    def watch(
        self,
        thread: threading.Thread,
        *,
        last_beat: Callable[[], float] | None = None,
        max_silence_s: float = 60.0,
    ) -> None:
        """``last_beat`` None: the thread only has to be alive (it has no beat to read)."""
        self._watched[thread.name] = _Watched(thread, last_beat, max_silence_s)

    def problems(self) -> list[str]:
        """One phrase per dead or stuck thread; empty when all is well."""
        now = self._clock()
        out = []
        for name, w in self._watched.items():
            if not w.thread.is_alive():
                out.append(f"{name} thread died")
            elif w.last_beat is not None and now - w.last_beat() > w.max_silence_s:
                out.append(f"{name} thread silent for {now - w.last_beat():.0f} s")
        return out
