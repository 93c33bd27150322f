"""``edgeloop serve``: the control node's long-running daemon.

One MQTT session (persistent, manual QoS 1 acks) brings in every device's
status, telemetry, captured samples and labels. A worker thread stores them
idempotently (the control database, the feature store) and only then acknowledges
them, so a crash or restart of the daemon means redelivery, never loss, and
the stores' keys make redelivery harmless. Between messages the worker runs the
policies (retraining, experiments, rollouts) on a fixed tick.

Several daemons can share one workspace as named workers (``edgeloop serve --worker
NAME``, docs/scale.md): telemetry, samples and labels come through MQTT 5 shared
subscriptions (the broker hands each message to one worker), and the policy ticks run
only in the worker that holds the ``policies`` lease (infra/lease.py), which also
follows the devices' statuses: retained, last-one-wins, so one reader keeps them in order.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.daemon.intake import Intake
from edgeloop_control.daemon.workers import Adoptions, Roster
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.captured import store_captured
from edgeloop_control.fleet.ingest import IngestError, handle_report, handle_status, touch_seen
from edgeloop_control.fleet.messages import (
    MAX_PAYLOAD,
    Captured,
    PoisonMessage,
    load_json,
    parse_captured,
    topic_device,
)
from edgeloop_control.fleet.poison import PoisonTally
from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.lease import Lease, LeaseLost
from edgeloop_control.infra.mqtt import ConnectFailureLog, SessionPublisher, new_client
from edgeloop_control.infra.workspace import Workspace

log = logging.getLogger("edgeloop.control.daemon")

# De-duplication ids are kept well past the broker session's 7-day expiry.
SEEN_RETENTION_S = 30 * 24 * 3600
# The shared-subscription group of the workers of one workspace ($share/GROUP/filter).
SHARE_GROUP = "edgeloop-control"


class Policy(Protocol):
    name: str

    def tick(self, now: float) -> None: ...


class ControlDaemon:
    def __init__(
        self,
        ws: Workspace,
        broker_url: str,
        *,
        tick_s: float = 1.0,
        flush_s: float = 2.0,
        flush_max: int = 2000,
        intake_max: int = 10_000,
        worker: str | None = None,
        lease_s: float = 15.0,
    ) -> None:
        if worker is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", worker):
            raise ValueError(
                f"worker name {worker!r}: use 1 to 40 letters, digits, '.', '_' or '-'"
            )
        self.ws = ws
        self.worker = worker
        self.prefix = ws.topic_prefix
        self.address = BrokerAddress.parse(broker_url)
        self.tick_s = tick_s
        self.flush_s = flush_s
        self.flush_max = flush_max
        self.db = ControlDB(ws.control_db)
        self.store = FeatureStore(ws.feature_store_dir)
        self.stop_event = threading.Event()
        self._stop_signal = ""  # the signal that asked the daemon to stop, for its log line
        self.connected = threading.Event()
        self.policies: list[Policy] = []
        self._started = False
        # Bounded: a backlog waits at the broker, not in this process (daemon/intake.py).
        self._queue: Intake[mqtt.MQTTMessage] = Intake(
            intake_max, may_wait=lambda: not self.stop_event.is_set()
        )
        self._captured: list[tuple[mqtt.MQTTMessage, Captured]] = []
        self._retry: list[mqtt.MQTTMessage] = []
        self._last_retry = 0.0
        self.poison = PoisonTally(self.db)
        self._traced: set[tuple[str, str]] = set()
        self._last_flush = time.monotonic()
        self._last_forget = 0.0
        # Without a retention job ([retention] enabled = false) the daemon still keeps
        # seen_messages bounded itself, in one statement an hour.
        self.forget_seen = True
        self.counters = {
            "status": 0,
            "telemetry": 0,
            "duplicates": 0,
            "samples": 0,
            "labels": 0,
            "rejected": 0,
            "poison": 0,
        }
        ident = hashlib.sha256(str(ws.root).encode()).hexdigest()[:10]
        name = f"edgeloop-control-{ident}" + (f"-{worker}" if worker else "")
        # Restarted under the same name, a worker takes its lease back at once.
        self.lease = Lease(self.db, "policies", worker or name, ttl_s=lease_s)
        self._following_status = False
        self._stopping = False
        self._session_mid: int | None = None  # the SUBSCRIBE of a connection's topics
        # Workers only: the roster of heartbeats, and the sessions of silent workers the
        # lease holder adopted (daemon/workers.py); _via says which connection acks what.
        self.roster = Roster(self.db, worker, name, time.time()) if worker else None
        self.adoptions = Adoptions(self.address, self._deliver_adopted)
        self._via: dict[int, mqtt.Client] = {}
        client = new_client(self.address, name, manual_ack=True)
        client.reconnect_delay_set(1, 15)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = lambda *a: self.connected.clear()
        # Without it an unreachable broker is silent: paho retries without a word.
        self._connect_fail = ConnectFailureLog(self.address, log, "control daemon")
        client.on_connect_fail = self._connect_fail
        client.on_message = lambda _c, _u, msg: self._queue.put(msg)  # may wait: see Intake
        self.client = client
        # Policies publish (desired state, artifacts, events) on a connection of their own:
        # the ingest session's network thread waits while the intake is full, and a
        # publish on it would then wait for an acknowledgement that thread cannot read.
        self.publish_client = new_client(self.address, f"{name}-pub")
        self.publish_client.reconnect_delay_set(1, 15)
        self.publisher = SessionPublisher(self.publish_client)

    # -- MQTT ------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self._stopping:
            # A connection that completes after stop(): the network thread may outlive it
            # by its reconnect back-off; it must neither subscribe nor log to a closed log.
            client.disconnect()
            return
        if rc.is_failure:
            log.error("broker refused the control daemon: %s", rc)
            return
        self._connect_fail.connected()
        # One SUBSCRIBE for every topic, and "connected" only once the broker has
        # acknowledged it: a message published between a CONNACK and the broker
        # processing a subscription is not delivered to a new session.
        shared = f"$share/{SHARE_GROUP}/" if self.worker else ""
        topics = [
            (shared + Topics.every_device(leaf, self.prefix), 1)
            for leaf in ("telemetry", "samples", "labels")
        ]
        if not self.worker or self._following_status:
            topics.append((self._status_topic, 1))
        self._session_mid = client.subscribe(topics)[1]

    @property
    def _status_topic(self) -> str:
        return Topics.every_device("status", self.prefix)

    def _follow_status(self, holding: bool) -> None:
        """A worker reads statuses while it holds the lease: subscribing delivers every
        device's retained status, so a new holder starts from the current truth."""
        if not self.worker or holding == self._following_status:
            return
        self._following_status = holding
        if holding:
            self.client.subscribe(self._status_topic, 1)
        else:
            self.client.unsubscribe(self._status_topic)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        if self._stopping:
            return
        refused = [c for c in codes if getattr(c, "is_failure", False)]
        if refused:
            log.error("the broker refused the control daemon's subscriptions: %s", refused)
            return
        if mid != self._session_mid:
            return  # a worker's status subscription when it took the lease: not a connection
        self.connected.set()
        log.info("control daemon connected to %s", self.address)

    def start(self) -> None:
        """Connect and start paho's network thread (once; ``run`` calls it too)."""
        if self._started:
            return
        self._started = True
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 24 * 3600
        self.client.connect_async(
            self.address.host, self.address.port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()
        self.publish_client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.publish_client.loop_start()

    # -- the worker ---------------------------------------------------------------

    def run(self, *, install_signals: bool = True, until: Callable[[], bool] | None = None) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        next_tick = time.monotonic()
        try:
            while not self.stop_event.is_set() and not (until and until()):
                msg = self._queue.get(timeout=0.1)
                if msg is not None:
                    self._handle(msg)
                now = time.monotonic()
                if self._retry and now - self._last_retry >= 1.0:
                    self._last_retry = now
                    self._queue_retries()
                if self._captured and (
                    len(self._captured) >= self.flush_max or now - self._last_flush >= self.flush_s
                ):
                    self._flush_captured()
                if now >= next_tick:
                    next_tick = now + self.tick_s
                    self._tick()
        finally:
            if self._stop_signal:
                # Logged here, not in the handler: a handler that logs can interrupt a
                # log call of this same thread half-way.
                log.info("%s received: stopping", self._stop_signal)
            t0 = time.monotonic()
            self._drain_and_stop()
            if self._stop_signal:
                log.info("control daemon stopped (%.2f s)", time.monotonic() - t0)
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name
        self.stop_event.set()

    def _drain_and_stop(self) -> None:
        if self.worker and self.connected.is_set():
            # A stopped worker's session lives on (7 days) and the broker would go on
            # queuing its share of the fleet's messages there: leave the shared group first,
            # then store what is already on its way.
            self._leave_share_group()
        self._queue_retries()
        while (msg := self._queue.get(timeout=0)) is not None:
            self._handle(msg)
        self._flush_captured()
        self.adoptions.close()
        try:
            self.lease.release()  # the next worker takes over now, not after the lease
        except sql.Error as exc:
            log.warning("could not release the policies lease: %s", exc)
        self._stopping = True
        self.client.disconnect()
        # With the broker gone, paho's network thread sleeps out its reconnect back-off in
        # steps of up to 1 s before it sees the stop (0.9 s measured). Nothing is left to
        # send then, and the thread is a daemon: wait briefly, not for the whole step.
        self.publish_client.disconnect()
        stopper = threading.Thread(target=self._stop_loops, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=0.3)
        self.db.close()

    def _leave_share_group(self) -> None:
        done = threading.Event()
        self.client.on_unsubscribe = lambda *_a: done.set()
        self.client.unsubscribe(
            [f"$share/{SHARE_GROUP}/" + Topics.every_device(leaf, self.prefix)
             for leaf in ("telemetry", "samples", "labels")]
        )  # fmt: skip
        if not done.wait(2.0):
            log.warning("the broker did not confirm the unsubscribe of worker %s", self.worker)
        time.sleep(0.2)  # what the broker sent before its UNSUBACK is read by now

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        leaf, device = _leaf_device(msg.topic)  # for the counters until the topic is checked
        device = device[:80]
        try:
            device, leaf = topic_device(msg.topic, self.prefix)
            if leaf not in MAX_PAYLOAD:
                raise PoisonMessage(f"the daemon does not consume {leaf!r} messages")
            if not msg.payload:
                # An empty retained status is how a device's status is cleared.
                self._ack(msg)
                return
            doc = load_json(msg.payload, leaf)
            if leaf in ("samples", "labels"):
                # Acknowledged once stored, in _flush_captured.
                self._captured.append((msg, parse_captured(device, leaf, doc)))
                return
            if leaf == "status":
                handle_status(self.db, device, doc)
                self.counters["status"] += 1
            elif handle_report(self.db, doc, device):
                self.counters["telemetry"] += 1
            else:
                self.counters["duplicates"] += 1
        except sql.OperationalError as exc:
            # The database, not the message (locked, disk full, I/O): keep it
            # unacknowledged and try again shortly rather than drop it.
            log.error("cannot store a %s message from %s, will retry: %s", leaf, device, exc)
            self._retry.append(msg)
            return
        except (PoisonMessage, IngestError) as exc:
            self._poison(msg, leaf, device, str(exc))
        except Exception as exc:  # the last line: no message may stop the daemon
            # A parser gap: the traceback once per kind of failure (a flood of the
            # same junk must not flood the journal); the tally counts every one.
            key = (leaf, type(exc).__name__)
            if key not in self._traced:
                self._traced.add(key)
                log.exception("unexpected failure on a %s message from %s", leaf, device)
            self._poison(msg, leaf, device, f"{type(exc).__name__}: {exc}")
        self._ack(msg)

    def _poison(self, msg: mqtt.MQTTMessage, leaf: str, device: str, reason: str) -> None:
        self.counters["rejected"] += 1
        self.counters["poison"] += 1
        try:
            self.poison.record(leaf, device, reason, len(msg.payload or b""))
        except sql.Error:
            log.exception("cannot record a poison message")

    def _flush_captured(self) -> None:
        batch, self._captured = self._captured, []
        self._last_flush = time.monotonic()
        if not batch:
            return
        try:
            self._store_captured(batch)
        except Exception:
            if len(batch) == 1:
                self._captured_failed(batch)
                return
            # One message may be what breaks the batch: store them one by one so
            # it alone is set aside and the others are kept.
            log.exception("feature store ingestion failed for %d messages", len(batch))
            failed = []
            for item in batch:
                try:
                    self._store_captured([item])
                except Exception:
                    failed.append(item)
            if len(failed) == len(batch):
                self._captured_failed(batch)  # every one failed: the store, not the data
            else:
                for msg, _ in failed:
                    leaf, device = _leaf_device(msg.topic)
                    self._poison(msg, leaf, device, "the feature store could not store it")
                    self._ack(msg)

    def _captured_failed(self, batch: list[tuple[mqtt.MQTTMessage, Captured]]) -> None:
        # Storage failed: do not acknowledge; they are retried at the next flush
        # (and redelivered after a restart); the store's sample ids make that harmless.
        log.error("feature store ingestion failed for %d messages; will retry", len(batch))
        self._captured = batch + self._captured

    def _store_captured(self, batch: list[tuple[mqtt.MQTTMessage, Captured]]) -> None:
        rejected: list[tuple[int, str]] = []
        result = store_captured(
            self.store,
            [item for _, item in batch],
            on_reject=lambda i, _record, reason: rejected.append((i, str(reason))),
        )
        self.counters["samples"] += result.get("samples", (0, 0))[0]
        self.counters["labels"] += result.get("labels", (0, 0))[0]
        refused: dict[int, str] = {}
        for i, reason in rejected:
            refused.setdefault(i, reason)
        # Seen = the last message of any kind: one statement for the whole batch.
        touch_seen(self.db, (_leaf_device(m.topic)[1] for m, _ in batch))
        for i, (m, _) in enumerate(batch):
            if i in refused:
                leaf, device = _leaf_device(m.topic)
                self._poison(m, leaf, device, refused[i])
            self._ack(m)

    def _stop_loops(self) -> None:
        self.client.loop_stop()
        self.publish_client.loop_stop()

    def _queue_retries(self) -> None:
        retry, self._retry = self._retry, []
        for msg in retry:
            self._queue.put_nowait(msg)  # the worker must never wait on its own intake

    def _ack(self, msg: mqtt.MQTTMessage) -> None:
        client = self._via.pop(id(msg), self.client)
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _deliver_adopted(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        self._via[id(msg)] = client
        self._queue.put(msg)

    def _tick(self) -> None:
        now = time.time()
        if self.roster is not None:
            self._follow_workers(now)
        if not self._hold_lease(now):
            return
        if self.forget_seen and now - self._last_forget >= 3600:
            self._last_forget = now
            self.db.forget_seen(SEEN_RETENTION_S)
        with self.db.fenced(self.lease.check):
            for policy in self.policies:
                # Renewed before each policy: a long one must not outlive the lease.
                if not self._hold_lease(time.time()):
                    return
                try:
                    policy.tick(now)
                except LeaseLost as exc:
                    log.warning("policy %s stopped: %s", policy.name, exc)
                    return
                except Exception:  # one policy's bug must not stop ingestion or the others
                    log.exception("policy %s failed", policy.name)

    def _follow_workers(self, now: float) -> None:
        assert self.roster is not None
        try:
            self.roster.heartbeat(now)
            if self.lease.term:  # the holder adopts silent workers' sessions
                self.adoptions.follow(
                    self.roster.silent(now, self.lease.ttl_s), now, self.lease.ttl_s
                )
            elif self.adoptions.names:
                self.adoptions.close()
        except sql.Error as exc:
            log.error("cannot read or write the workers' roster: %s", exc)

    def _hold_lease(self, now: float) -> bool:
        try:
            holding = self.lease.hold(now)
        except sql.Error as exc:
            log.error("cannot renew the policies lease: %s", exc)
            holding = False
        self._follow_status(holding)
        return holding


def _leaf_device(topic: str) -> tuple[str, str]:
    parts = topic.split("/")
    return parts[-1], parts[-2] if len(parts) >= 2 else "?"
