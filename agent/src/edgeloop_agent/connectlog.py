"""Why a connection to the broker failed, said once, in one line.

paho retries a failed connection for ever (1 s doubling to 15 s) and says nothing
about why: ``on_connect_fail`` gets no exception. A device with the wrong CA file, a
broker certificate for another host name or a self-signed one therefore looked
exactly like a broker that is down. The reason is named once
(``edgeloop_agent.wire.network.describe_connect_error``, in OpenSSL's own words:
"unable to get local issuer certificate", "Hostname mismatch ...", "self-signed
certificate"), and while the same failure repeats only a summary line follows,
after 1 minute, then at doubling intervals up to an hour.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

FIRST_SUMMARY_S = 60.0
MAX_SUMMARY_S = 3600.0


def is_config_error(exc: BaseException | None) -> bool:
    """TLS failures do not cure themselves: the operator must act (logged as errors)."""
    return isinstance(exc, ssl.SSLError)


class ConnectFailureLog:
    """Logs the first of a run of identical connect failures, then summaries.

    ``failed`` once per attempt; ``connected`` when an attempt succeeds. A new
    reason is always logged at once.
    """

    def __init__(
        self,
        target: str,
        logger: logging.Logger,
        *,
        first_summary_s: float = FIRST_SUMMARY_S,
        max_summary_s: float = MAX_SUMMARY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.log = logger
        self.first_summary_s = first_summary_s
        self.max_summary_s = max_summary_s
        self.clock = clock
        self.attempts = 0  # failed attempts since the last success
        self.total_failures = 0
        self._reason: str | None = None
        self._same = 0
        self._since = 0.0
        self._interval = first_summary_s
        self._next_summary = 0.0

    def failed(self, reason: str, *, level: int = logging.WARNING) -> None:
        now = self.clock()
        self.attempts += 1
        self.total_failures += 1
        if reason != self._reason:
            self._reason, self._same, self._since = reason, 1, now
            self._interval = self.first_summary_s
            self._next_summary = now + self._interval
            self.log.log(level, "cannot connect to %s: %s; retrying", self.target, reason)
            return
        self._same += 1
        if now >= self._next_summary:
            self.log.log(
                level,
                "still cannot connect to %s: %s (%d attempts in %.0f s)",
                self.target,
                reason,
                self._same,
                now - self._since,
            )
            self._interval = min(self._interval * 2, self.max_summary_s)
            self._next_summary = now + self._interval
        else:
            self.log.debug("connect attempt %d to %s failed again", self._same, self.target)

    def connected(self) -> None:
        if self.attempts:
            self.log.info(
                "connected to %s after %d failed attempts (last: %s)",
                self.target,
                self.attempts,
                self._reason,
            )
        self.attempts, self._reason, self._same = 0, None, 0
