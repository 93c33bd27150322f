"""systemd integration: sd_notify and journald, only when running under systemd.

systemd-python is used when installed (the ``systemd`` extra); without it the
notify protocol is spoken directly (one datagram to $NOTIFY_SOCKET), because
that protocol is tiny and stable. Outside systemd nothing is sent and logs go
to stderr.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger("edgeloop.agent.systemd")


def under_systemd() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"))


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET")
        self._sd_notify = None
        if not self.address:
            return
        try:
            from systemd import daemon

            self._sd_notify = daemon.notify
        except ImportError:
            self._sd_notify = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> None:
        if not self.address:
            return
        try:
            if self._sd_notify is not None:
                self._sd_notify(message)
            else:
                self._send(message)
        except OSError as exc:  # the manager going away must not kill the agent
            log.debug("sd_notify failed: %s", exc)

    def _send(self, message: str) -> None:
        assert self.address
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "draining") -> None:
        self.notify(f"STOPPING=1\nSTATUS={status}")


def watchdog_interval() -> float | None:
    """Half the configured WatchdogSec, as systemd recommends; None if unset."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="edgeloop-agent")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
