"""Fleet status and telemetry into the control database, for a command that
drives a rollout itself (``edgeloop rollout start --wait``) without ``edgeloop serve``.

Each message goes through the fleet layer's own check-and-store
(``fleet/ingest.py: ingest_message``, the daemon's parsers and handlers), which
is idempotent (telemetry by report id, status by value), so running next to a
daemon is harmless. Its session is a clean one with its own client id: it never
takes over the daemon's persistent session.
"""

from __future__ import annotations

import logging
import queue

import paho.mqtt.client as mqtt

from edgeloop_agent.wire.topics import Topics
from edgeloop_control.fleet.ingest import ingest_message
from edgeloop_control.fleet.messages import PoisonMessage
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient

log = logging.getLogger("edgeloop.control.rollout")


class BrokerFeed:
    def __init__(self, client: ControlClient, db: ControlDB, prefix: str) -> None:
        self.db = db
        self.prefix = prefix
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        client.client.on_message = lambda _c, _u, msg: self._queue.put(msg)
        for leaf in ("status", "telemetry"):
            client.client.subscribe(Topics.every_device(leaf, prefix), qos=1)

    def pump(self) -> int:
        """Store every message received so far; returns how many were handled."""
        handled = 0
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                return handled
            try:
                ingest_message(self.db, self.prefix, msg.topic, bytes(msg.payload))
            except (PoisonMessage, TypeError, KeyError) as exc:
                # Bad input from the fleet never stops the command driving the rollout
                # (TypeError/KeyError: a gap in the parsers, as the daemon also guards).
                log.warning("dropped a message on %s: %s", msg.topic[:120], exc)
            handled += 1
