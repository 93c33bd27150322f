"""``edgeloop serve``: the control node's long-running daemon.

One MQTT session (persistent, manual QoS 1 acks) brings in every device's
status, telemetry, captured samples and labels. A worker thread stores them
idempotently (control.sqlite, the feature store) and only then acknowledges
them, so a crash or restart of the daemon means redelivery, never loss, and
the stores' keys make redelivery harmless. Between messages the worker runs the
policies (retraining, experiments, rollouts) on a fixed tick.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.config import BrokerAddress
from edgeloop_agent.mqttlink import no_delay
from edgeloop_control.controldb import ControlDB
from edgeloop_control.daemon.ingest import IngestError, handle_report, handle_status
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.mqttclient import publish_and_wait
from edgeloop_control.workspace import Workspace

log = logging.getLogger("edgeloop.control.daemon")

# De-duplication ids are kept well past the broker session's 7-day expiry.
SEEN_RETENTION_S = 30 * 24 * 3600


class Policy(Protocol):
    name: str

    def tick(self, now: float) -> None: ...


class DaemonPublisher:
    """The ``publish`` the deploy helpers expect, over the daemon's own session."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None:
        publish_and_wait(self.client, topic, payload, retain=retain, qos=qos, timeout=timeout)


class ControlDaemon:
    def __init__(
        self,
        ws: Workspace,
        broker_url: str,
        *,
        tick_s: float = 1.0,
        flush_s: float = 2.0,
        flush_max: int = 2000,
    ) -> None:
        self.ws = ws
        self.prefix = ws.topic_prefix
        self.address = BrokerAddress.parse(broker_url)
        self.tick_s = tick_s
        self.flush_s = flush_s
        self.flush_max = flush_max
        self.db = ControlDB(ws.state_db)
        self.store = FeatureStore(ws.feature_store_dir)
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.policies: list[Policy] = []
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._captured: list[mqtt.MQTTMessage] = []
        self._last_flush = time.monotonic()
        self._last_forget = 0.0
        self.counters = {
            "status": 0,
            "telemetry": 0,
            "duplicates": 0,
            "samples": 0,
            "labels": 0,
            "rejected": 0,
        }
        ident = hashlib.sha256(str(ws.root).encode()).hexdigest()[:10]
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgeloop-control-{ident}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 15)
        client.on_socket_open = no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = lambda _c, _u, msg: self._queue.put(msg)
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set()
        self.client = client
        self.publisher = DaemonPublisher(client)

    # -- MQTT ------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the control daemon: %s", rc)
            return
        for leaf in ("status", "telemetry", "samples", "labels"):
            client.subscribe(f"{self.prefix}/+/{leaf}", qos=1)
        self.connected.set()
        log.info("control daemon connected to %s", self.address)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 24 * 3600
        self.client.connect_async(
            self.address.host, self.address.port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()

    # -- the worker ---------------------------------------------------------------

    def run(self, *, install_signals: bool = True, until: Callable[[], bool] | None = None) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        self.start()
        next_tick = time.monotonic()
        try:
            while not self.stop_event.is_set() and not (until and until()):
                try:
                    msg = self._queue.get(timeout=0.1)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    self._handle(msg)
                now = time.monotonic()
                if self._captured and (
                    len(self._captured) >= self.flush_max or now - self._last_flush >= self.flush_s
                ):
                    self._flush_captured()
                if now >= next_tick:
                    next_tick = now + self.tick_s
                    self._tick()
        finally:
            self._drain_and_stop()
        return 0

    def _drain_and_stop(self) -> None:
        while True:
            try:
                self._handle(self._queue.get_nowait())
            except queue.Empty:
                break
        self._flush_captured()
        self.client.disconnect()
        self.client.loop_stop()
        self.db.close()

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        leaf = parts[-1]
        device = parts[-2] if len(parts) >= 2 else "?"
        if leaf in ("samples", "labels"):
            self._captured.append(msg)  # acknowledged once stored, in _flush_captured
            return
        try:
            if leaf == "status":
                if msg.payload:
                    handle_status(self.db, device, json.loads(msg.payload))
                    self.counters["status"] += 1
            elif leaf == "telemetry":
                if handle_report(self.db, json.loads(msg.payload)):
                    self.counters["telemetry"] += 1
                else:
                    self.counters["duplicates"] += 1
        except (IngestError, ValueError, TypeError, KeyError) as exc:
            self.counters["rejected"] += 1
            log.warning("dropped a %s message from %s: %s", leaf, device, exc)
        self._ack(msg)

    def _flush_captured(self) -> None:
        batch, self._captured = self._captured, []
        self._last_flush = time.monotonic()
        if not batch:
            return
        rejected: list[str] = []
        try:
            result = self.store.ingest_messages(
                [(m.topic, m.payload) for m in batch],
                on_reject=lambda _i, _record, reason: rejected.append(str(reason)),
            )
        except Exception:
            # Storage failed: do not acknowledge; the broker redelivers after a
            # restart, and the store's sample ids make that harmless.
            log.exception("feature store ingestion failed for %d messages", len(batch))
            self._captured = batch + self._captured
            return
        self.counters["samples"] += result.get("samples", (0, 0))[0]
        self.counters["labels"] += result.get("labels", (0, 0))[0]
        self.counters["rejected"] += len(rejected)
        for reason in rejected[:3]:
            log.warning("rejected captured record: %s", reason)
        for m in batch:
            self._ack(m)

    def _ack(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def _tick(self) -> None:
        now = time.time()
        if now - self._last_forget >= 3600:
            self._last_forget = now
            self.db.forget_seen(SEEN_RETENTION_S)
        for policy in self.policies:
            try:
                policy.tick(now)
            except Exception:  # one policy's bug must not stop ingestion or the others
                log.exception("policy %s failed", policy.name)
