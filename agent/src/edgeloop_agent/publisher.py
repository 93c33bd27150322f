"""Drains the outbox to the broker: QoS 1 publishes, deleted on PUBACK.

At least once: a message leaves the outbox only after the broker acknowledged
it; after a disconnect or a crash it is sent again, and the control node
de-duplicates by the id inside each envelope.
"""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.outbox import Outbox

log = logging.getLogger("edgeloop.agent.publisher")


class OutboxPublisher:
    def __init__(
        self, outbox: Outbox, link: MqttLink, *, batch: int = 200, ack_timeout_s: float = 10.0
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.batch = batch
        self.ack_timeout_s = ack_timeout_s
        self.sent = 0
        self._idle = threading.Event()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.link.connected.is_set():
                self._idle.set()
                stop.wait(0.2)
                continue
            if self.pump_once() == 0:
                self._idle.set()
                stop.wait(0.2)

    def pump_once(self) -> int:
        """Publish one batch and wait for its acknowledgements; return how many left."""
        messages = self.outbox.peek(self.batch)
        if not messages:
            return 0
        self._idle.clear()
        ids = [m.id for m in messages]
        self.outbox.mark_inflight(ids)
        pending: list[tuple[str, mqtt.MQTTMessageInfo]] = []
        for m in messages:
            # The stored body is already the JSON envelope the control node reads.
            pending.append((m.id, self.link.publish(m.topic, m.body, qos=1)))
        deadline = time.monotonic() + self.ack_timeout_s
        done: list[str] = []
        for msg_id, info in pending:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(max(remaining, 0.001))
            except (RuntimeError, ValueError):
                break  # not queued (disconnected): retried on the next pass
            if not info.is_published():
                break
            done.append(msg_id)
        if done:
            self.outbox.ack(done)
            self.sent += len(done)
        left = [i for i in ids if i not in set(done)]
        if left:
            self.outbox.release(left)
        return len(messages)

    def flush(self, timeout: float) -> bool:
        """Publish until the outbox is empty or ``timeout`` passes (shutdown path)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.link.connected.is_set():
                return self.outbox.depth() == 0
            if self.pump_once() == 0:
                return True
        return self.outbox.depth() == 0
