"""The daemon's intake: messages from paho's network thread to the worker, bounded.

Unbounded, a burst the worker cannot keep up with lands in the daemon's memory (956 MB
after 150 s at 1,000 devices with 5 % capture, docs/scale.md), because the daemon takes
every message the broker pushes and Mosquitto does not honour MQTT 5's Receive Maximum.
Bounded, a full intake makes the network thread wait before it reads the next packet, so
the backlog stays at the broker: in the daemon's persistent session, under the limits the
operator sets there (``max_queued_messages``), and unacknowledged messages are redelivered
after any reconnect, so nothing is lost.

The worker never waits on the network thread of this session: the daemon's policies
publish on a connection of their own (a publish here would wait for an acknowledgement
that a waiting network thread cannot read). A network thread that waits longer than the
keepalive (45 s) is disconnected by the broker; the session and its unacknowledged
messages survive that, and the daemon's de-duplication drops what is delivered twice.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Intake(Generic[T]):
    """A FIFO with a bound that :meth:`put` waits on unless ``may_wait()`` says not to
    (the daemon stopping: its last messages are drained, not waited for)."""

    def __init__(self, bound: int, may_wait: Callable[[], bool] = lambda: True) -> None:
        if bound < 1:
            raise ValueError(f"intake bound must be at least 1, got {bound}")
        self.bound = bound
        self._may_wait = may_wait
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self.high_water = 0
        self.waits = 0  # how many puts found the intake full and waited

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Append ``item``, first waiting while the intake is full and waiting is allowed.

        The wait re-checks ``may_wait`` every 0.1 s, so a stop releases it promptly.
        """
        with self._cond:
            if len(self._items) >= self.bound and self._may_wait():
                self.waits += 1
                while len(self._items) >= self.bound and self._may_wait():
                    self._cond.wait(0.1)
            self._append(item)

    def put_nowait(self, item: T) -> None:
        """Append without waiting (the worker putting back what it will retry)."""
        with self._cond:
            self._append(item)

    def get(self, timeout: float) -> T | None:
        """The oldest item, waiting up to ``timeout`` seconds for one; None if none came."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def _append(self, item: T) -> None:
        self._items.append(item)
        self.high_water = max(self.high_water, len(self._items))
        self._cond.notify_all()
