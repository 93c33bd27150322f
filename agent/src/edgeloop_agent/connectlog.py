"""Why a connection to the broker failed, said once, in one line.

paho retries a failed connection for ever (1 s doubling to 15 s) and says nothing
about why: ``on_connect_fail`` gets no exception. A device with the wrong CA file, a
broker certificate for another host name or a self-signed one therefore looked
exactly like a broker that is down. The reason is named once
(``edgeloop_agent.wire.network.describe_connect_error``, in OpenSSL's own words:
"unable to get local issuer certificate", "Hostname mismatch ...", "self-signed
certificate"), with the wait before the next attempt. While the same failure
repeats, one line per back-off step follows (paho waits 1, 2, 4, 8 s, then every
15 s: four lines in the first quarter minute, not one per attempt), then summary
lines after 1 minute and at doubling intervals up to an hour.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

FIRST_SUMMARY_S = 60.0
MAX_SUMMARY_S = 3600.0
# paho's reconnect back-off, as mqttlink.MqttLink sets it (reconnect_delay_set): the
# wait doubles from RETRY_MIN_S after each failed attempt, up to RETRY_MAX_S.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 15.0


def is_config_error(exc: BaseException | None) -> bool:
    """TLS failures do not cure themselves: the operator must act (logged as errors)."""
    return isinstance(exc, ssl.SSLError)


class ConnectFailureLog:
    """Logs the first of a run of identical connect failures, then each back-off
    step, then summaries.

    ``failed`` once per attempt; ``connected`` when an attempt succeeds. A new
    reason is always logged at once. ``reason`` and ``attempts`` describe the
    current trouble for the status line (systemd STATUS=).
    """

    def __init__(
        self,
        target: str,
        logger: logging.Logger,
        *,
        first_summary_s: float = FIRST_SUMMARY_S,
        max_summary_s: float = MAX_SUMMARY_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.log = logger
        self.first_summary_s = first_summary_s
        self.max_summary_s = max_summary_s
        self.clock = clock
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.attempts = 0  # failed attempts since the last success
        self.total_failures = 0
        self._reason: str | None = None
        self._same = 0
        self._since = 0.0
        self._interval = first_summary_s
        self._next_summary = 0.0
        self._step = 0.0  # the back-off wait last logged
        self._delay: float | None = None  # the wait the last failed() was told

    @property
    def reason(self) -> str | None:
        """Why the last attempt failed; None while connected (or before any attempt)."""
        return self._reason

    def retry_delay(self) -> float:
        """The wait before the next attempt, as the last ``failed`` was told (or, when
        it was not, paho's schedule: doubling from ``retry_min_s`` to ``retry_max_s``)."""
        if self._delay is not None:
            return self._delay
        doublings = min(max(self.attempts - 1, 0), 32)
        return min(self.retry_min_s * 2.0**doublings, self.retry_max_s)

    def failed(
        self, reason: str, *, level: int = logging.WARNING, delay: float | None = None
    ) -> None:
        """One failed attempt; ``delay`` is the wait before the next one, when the
        caller knows it better than the doubling model (mqttlink reads paho's)."""
        now = self.clock()
        self.attempts += 1
        self.total_failures += 1
        self._delay = delay
        delay = self.retry_delay()
        if reason != self._reason:
            self._reason, self._same, self._since = reason, 1, now
            self._interval = self.first_summary_s
            self._next_summary = now + self._interval
            self._step = delay
            self.log.log(
                level,
                "cannot connect to %s: %s; retrying in %s",
                self.target,
                reason,
                _seconds(delay),
            )
            return
        self._same += 1
        if delay > self._step:
            self._step = delay
            then = (
                f"retrying every {_seconds(delay)}"
                if delay >= self.retry_max_s
                else f"next attempt in {_seconds(delay)}"
            )
            self.log.log(
                level,
                "cannot connect to %s yet: %s (%d attempts in %.0f s); %s",
                self.target,
                reason,
                self._same,
                now - self._since,
                then,
            )
        elif now >= self._next_summary:
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
        self.attempts, self._reason, self._same, self._step = 0, None, 0, 0.0
        self._delay = None


def _seconds(value: float) -> str:
    return f"{value:g} s"
