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
import stat
import sys
import time

log = logging.getLogger("edgeloop.agent.systemd")

# libsystemd's sd_journal_send() always writes here; it is not configurable.
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def under_systemd() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"))


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET")
        self._sd_notify = None
        # The caller may poll far more often than systemd needs a ping (the
        # housekeeping loop runs every 0.2 s); every datagram wakes PID 1, so
        # pings are spaced at half WatchdogSec, as sd_watchdog_enabled(3) advises.
        self._watchdog_every = watchdog_interval()
        self._last_watchdog = float("-inf")
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
        except Exception as exc:  # the manager going away must not kill the agent
            log.debug("sd_notify failed: %s", exc)

    def _send(self, message: str) -> None:
        assert self.address
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A receiver that stops reading fills the socket queue; a blocking send
            # would then hang whichever thread reported a status (the updater).
            sock.settimeout(1.0)
            sock.connect(address)
            # Status text carries names from the network; a lone surrogate must not
            # raise here (it killed the updater thread once).
            sock.sendall(message.encode("utf-8", "backslashreplace"))

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        now = time.monotonic()
        if self._watchdog_every is not None and now - self._last_watchdog < self._watchdog_every:
            return
        self._last_watchdog = now
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "draining") -> None:
        self.notify(f"STOPPING=1\nSTATUS={_one_line(status)}")


def _one_line(status: str) -> str:
    # Status text carries model names from the desired-state document: a newline
    # in it would start a new notify field (READY=1, WATCHDOG=trigger, ...).
    text = " ".join(status.splitlines())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def journal_available() -> bool:
    """True if systemd-python is installed and journald listens on its socket.

    Without journald, sd_journal_send() returns success and drops the message
    (libsystemd treats a missing socket as "no journal"), so the JournalHandler
    would lose every log line silently; probing the socket avoids that.
    """
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(JOURNAL_SOCKET)  # refused if the socket is stale
    except OSError:
        return False
    return True


def stderr_is_journal() -> bool:
    """True if stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class _PriorityFormatter(logging.Formatter):
    """``<N>`` syslog priority prefixes, which journald parses on a stream (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        if level >= logging.CRITICAL:
            prio = 2
        elif level >= logging.ERROR:
            prio = 3
        elif level >= logging.WARNING:
            prio = 4
        elif level >= logging.INFO:
            prio = 6
        else:
            prio = 7
        return f"<{prio}>{super().format(record)}"


def setup_logging(level: str = "INFO", identifier: str = "edgeloop-agent") -> None:
    """Root logging: journald under systemd when it listens, else stderr.

    ``identifier`` is the journal's SYSLOG_IDENTIFIER (the control daemon reuses this).
    """
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler: logging.Handler
    if (os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")) and (
        journal_available()
    ):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    elif stderr_is_journal():
        # Journald without systemd-python: stderr already is the journal, which
        # stamps each line itself and reads the priority from the prefix.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PriorityFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
