"""Fleet status and telemetry into the control database, for a command that
drives a rollout itself (``edgeloop rollout start --wait``) without ``edgeloop serve``.

It uses the daemon's own ingestion functions, which are idempotent (telemetry
by report id, status by value), so running next to a daemon is harmless. Its
session is a clean one with its own client id: it never takes over the
daemon's persistent session.
"""

from __future__ import annotations

import json
import logging
import queue

import paho.mqtt.client as mqtt

from edgeloop_agent.wire.topics import Topics
from edgeloop_control.fleet.ingest import IngestError, handle_report, handle_status
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient

log = logging.getLogger("edgeloop.control.rollout")


class BrokerFeed:
    def __init__(self, client: ControlClient, db: ControlDB, prefix: str) -> None:
        self.db = db
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
            parts = msg.topic.split("/")
            device, leaf = (parts[-2], parts[-1]) if len(parts) >= 2 else ("?", "?")
            try:
                if leaf == "status" and msg.payload:
                    handle_status(self.db, device, json.loads(msg.payload))
                elif leaf == "telemetry":
                    handle_report(self.db, json.loads(msg.payload))
            except (IngestError, ValueError, TypeError, KeyError) as exc:
                log.warning("dropped a %s message from %s: %s", leaf, device, exc)
            handled += 1
