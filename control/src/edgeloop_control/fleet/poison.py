"""What the daemon does with a message it can never use.

A poison message is acknowledged (redelivering it would only fail again: that
is how one bad status used to crash-loop ``edgeloop serve``), counted in the
control database (``counters``: ``poison``, ``poison.<leaf>``) and recorded as
an event of kind ``poison``. Logging and events are rate-limited per leaf, so a
flood of junk costs one line and one row per window, with the number of
messages it stood for, instead of filling the journal and the events table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edgeloop_control.infra.db import ControlDB

log = logging.getLogger("edgeloop.control.daemon")


@dataclass
class _Window:
    start: float = 0.0
    reported: int = 0
    suppressed: int = 0


@dataclass
class PoisonTally:
    db: ControlDB
    window_s: float = 60.0
    per_window: int = 3
    total: int = 0
    _windows: dict[str, _Window] = field(default_factory=dict)

    def record(self, leaf: str, device: str, reason: str, size: int) -> None:
        self.total += 1
        with self.db.transaction():
            self.db.bump_counter("poison")
            self.db.bump_counter(f"poison.{leaf}")
            now = time.monotonic()
            window = self._windows.setdefault(leaf, _Window(start=now))
            if now - window.start >= self.window_s:
                if window.suppressed:
                    self._report(leaf, device, "(rate limit window ended)", 0, window.suppressed)
                window.start, window.reported, window.suppressed = now, 0, 0
            if window.reported >= self.per_window:
                window.suppressed += 1
                return
            window.reported += 1
            self._report(leaf, device, reason, size, 0)

    def _report(self, leaf: str, device: str, reason: str, size: int, suppressed: int) -> None:
        if suppressed:
            message = f"{suppressed} more poison {leaf} messages in the last {self.window_s:.0f} s"
        else:
            message = f"poison {leaf} message from {device!r} dropped: {reason}"
        log.warning("%s", message)
        self.db.add_event(
            "poison",
            message,
            subject=device,
            data={"leaf": leaf, "reason": reason, "bytes": size, "suppressed": suppressed},
        )
