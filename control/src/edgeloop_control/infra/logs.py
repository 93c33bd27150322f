"""Root logging for ``edgeloop serve``: stderr, in the journal's own form when it is one.

Under systemd (``JOURNAL_STREAM`` names stderr) each line gets a ``<N>`` syslog
priority prefix, which journald parses, and no timestamp (the journal stamps it);
anywhere else, timestamped lines.
"""

from __future__ import annotations

import logging
import os
import stat
import sys

# logging level -> syslog priority (sd-daemon(3)); the first level at or below wins.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


class _PriorityFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        return f"<{prio}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True if stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_PriorityFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
