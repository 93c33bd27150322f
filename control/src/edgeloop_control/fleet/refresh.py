"""Re-sign desired state before it expires, so no device is left on an expired document.

Every desired document carries an ``expires`` (``[signing] desired_ttl_days``,
30 days by default): past it an agent applies nothing more from it and reports
``desired_expired``, which bounds a freeze attack (someone withholding or
replaying old messages). A fleet that is not redeployed for a month must not
trip over its own defence, so this daemon policy re-publishes each document
once half its lifetime has passed: same content, the next revision (a
re-signed document under the old revision would be refused as a replay), a
fresh expiry.
"""

from __future__ import annotations

import logging

from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.infra.mqtt import BrokerError
from edgeloop_control.infra.signing import SigningError

log = logging.getLogger("edgeloop.control.desired")


class DesiredRefresh:
    """A daemon policy: re-signs through :meth:`DesiredState.republish`, which writes
    owned devices too (it keeps the owner's decision alive, it does not change it)."""

    name = "desired_refresh"

    def __init__(self, desired: DesiredState, *, check_every_s: float = 60.0) -> None:
        self.desired = desired
        self.db = desired.db
        self.check_every_s = check_every_s
        self._next_check = 0.0
        self._key_problem: str | None = None
        self._publish_problem: str | None = None

    def due(self, now: float) -> list[str]:
        """Devices whose document is past half its lifetime (or has no expiry at all)."""
        docs = self.db.all_desired()
        if not docs:
            return []  # nothing deployed: no need for the signing key either
        half = self.desired.signer.ttl_s / 2
        return [
            device
            for device, doc in docs.items()
            if not isinstance(doc.get("expires"), (int, float)) or doc["expires"] < now + half
        ]

    def tick(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + self.check_every_s
        try:
            due = self.due(now)
        except SigningError as exc:
            # No usable key: say so once (deploys fail the same way, loudly), not every tick.
            if str(exc) != self._key_problem:
                self._key_problem = str(exc)
                log.warning("cannot re-sign desired state: %s", exc)
            return
        self._key_problem = None
        refreshed = []
        for device in due:
            current = self.db.desired(device)
            if current is None:
                continue
            try:
                sealed = self.desired.republish(device, current[1])
            except (BrokerError, OSError, RuntimeError, ValueError) as exc:
                # Broker away or not acknowledging (BrokerError, which the daemon's
                # publisher raises): the next check retries; one line, not one per minute.
                if str(exc) != self._publish_problem:
                    self._publish_problem = str(exc)
                    log.warning("cannot re-publish desired state (will retry): %s", exc)
                break
            self._publish_problem = None
            if sealed is not None:  # None: a writer published a fresh one meanwhile
                refreshed.append(device)
        if refreshed:
            message = (
                f"re-signed the desired state of {len(refreshed)} device(s) before it expires: "
                + ", ".join(refreshed[:20])
                + (" ..." if len(refreshed) > 20 else "")
            )
            log.info(message)
            self.db.add_event("desired_refreshed", message, data={"devices": refreshed})
