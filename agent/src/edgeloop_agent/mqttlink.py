"""The agent's MQTT connections (paho-mqtt 2.x, MQTT 5): the session, and one for replies.

Why these settings:
- persistent session (clean start off, session expiry) and QoS 1 subscriptions,
  so requests sent while the agent restarts wait at the broker;
- manual acknowledgement: a request is acknowledged only once the broker has
  acknowledged its reply (QoS 1 end to end), so a crash mid-request means
  redelivery, not loss;
- a bounded intake: while the serving queue is full the session's socket is not
  read (``FastClient.intake_paused``), so a burst waits in the broker, whose queue
  limits the operator sets, and TCP flow control holds it there;
- replies go out on a second, clean connection (``-replies``): on one connection
  the broker's PUBACKs for our replies queue behind every request it has sent
  and we have not read, so with reading paused the replies awaiting them piled up
  instead (57,000 after 15 s, on the way to paho's 65,535 message ids; see
  docs/performance.md). On its own connection a reply's PUBACK comes back at once.
  While that connection is down, replies use the session (and are acknowledged
  as soon as they are queued, as before);
- unlimited client-side in-flight window: paho's default of 20 caps QoS 1
  replies at a few hundred per second on loopback (see docs/performance.md);
- Receive Maximum 1,024 (MQTT 5 flow control): a broker that holds to it keeps a
  burst in its queue instead of the agent's memory. Mosquitto 2.0.11 does not
  once acknowledgements flow (measured: 2,695 outstanding with a maximum of 10),
  so there the intake can still reach 65,535 requests, ~1 KB each with the
  FastClient (~8 KB each with paho's Properties objects): hence the gate above;
- a paho client with a cheaper per-message path (``fastclient.FastClient``): on
  one core, paho's own per-packet work was about half of the agent's CPU time.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.connectlog import (
    RETRY_MAX_S,
    RETRY_MIN_S,
    ConnectFailureLog,
    is_config_error,
)
from edgeloop_agent.fastclient import RECEIVE_MAXIMUM, FastClient
from edgeloop_agent.wire.network import BrokerAddress, describe_connect_error, tls_options

log = logging.getLogger("edgeloop.agent.mqtt")

MessageHandler = Callable[[mqtt.MQTTMessage], None]


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Disable Nagle: a small reply must not wait ~40 ms for the peer's delayed ACK."""
    # Not a TCP socket (unix, websockets): nothing to tune.
    with suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttLink:
    def __init__(
        self,
        *,
        client_id: str,
        broker: BrokerAddress,
        session_expiry_s: int,
        keepalive_s: int,
        will_topic: str,
        will_payload: bytes,
        subscriptions: list[tuple[str, int]],
        on_message: MessageHandler,
        on_connected: Callable[[], object] | None = None,
        receive_maximum: int = RECEIVE_MAXIMUM,
        max_packet_bytes: int | None = None,
        reply_connection: bool = True,
        max_unacked_replies: int = 4096,
    ) -> None:
        self.broker = broker
        self._receive_maximum = receive_maximum
        self._max_packet_bytes = max_packet_bytes
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connected = on_connected
        self.connected = threading.Event()
        self.ever_connected = threading.Event()
        self._keepalive = keepalive_s
        self._session_expiry = session_expiry_s
        self._lock = threading.Lock()
        self._extra_subs: dict[str, int] = {}
        self.publish_failures = 0
        self.connect_failures = ConnectFailureLog(str(broker), log)
        # Requests waiting for the broker's PUBACK of their reply (reply connection),
        # by id() of the reply's MQTTMessageInfo (kept alive by the value).
        self._awaiting: dict[int, tuple[mqtt.MQTTMessageInfo, mqtt.MQTTMessage]] = {}
        self._acks_ready: deque[mqtt.MQTTMessage] = deque()
        # Called (reply client's thread) when acks are ready: the serving loop wakes.
        self.on_acks_ready: Callable[[], object] | None = None
        self.max_unacked_replies = max_unacked_replies
        self._intake_full: Callable[[], bool] | None = None
        self.intake_pauses = 0  # times the gate closed
        self.disconnects = 0  # lost connections of the session (not refused attempts)
        self._paused = False

        client = FastClient(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(0)  # 0 = unlimited
        client.max_queued_messages_set(0)
        # connect_failures logs one line per step of this back-off, so both read the
        # same constants.
        client.reconnect_delay_set(min_delay=int(RETRY_MIN_S), max_delay=int(RETRY_MAX_S))
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(**tls_options(broker.ca_file, broker.cert_file, broker.key_file))
        client.on_socket_open = no_delay
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        self.client = client
        self.replies_connected = threading.Event()
        self.reply_client: FastClient | None = None
        if reply_connection:
            self.reply_client = self._make_reply_client(f"{client_id}-replies")

    def _make_reply_client(self, client_id: str) -> FastClient:
        """A clean session that only publishes: its only inbound packets are
        CONNACK, PUBACK and PINGRESP, so nothing ever queues ahead of a PUBACK."""
        client = FastClient(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=int(RETRY_MIN_S), max_delay=int(RETRY_MAX_S))
        broker = self.broker
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(**tls_options(broker.ca_file, broker.cert_file, broker.key_file))
        client.on_socket_open = no_delay
        client.on_connect = self._handle_reply_connect
        client.on_disconnect = self._handle_reply_disconnect
        client.after_puback = self._reply_acked
        # Its PUBACKs are read after each write of replies, not on arrival: a wake-up
        # of this thread per read of PUBACKs cost ~5 us per request (the thread's own
        # CPU, bench/bench_memory.py). Acks wait at most one write, or the 1 s wait.
        client.lazy_read = True
        return client

    # -- the intake gate ---------------------------------------------------------

    def set_intake_gate(self, full: Callable[[], bool]) -> None:
        """``full()`` (called on the network thread before each packet is read) says
        the serving queue has no room; reading stops until it says otherwise and
        ``wake_intake()`` is called."""
        self._intake_full = full
        self.client.intake_paused = self._gate

    def _gate(self) -> bool:
        full = self._intake_full
        paused = (full is not None and full()) or len(self._awaiting) >= self.max_unacked_replies
        if paused and not self._paused:
            self.intake_pauses += 1
        self._paused = paused
        return paused

    @property
    def intake_paused(self) -> bool:
        return self._paused

    def wake_intake(self) -> None:
        """The serving loop made room: let the network thread read again."""
        self.client.wake_intake()

    @property
    def unacked_replies(self) -> int:
        return len(self._awaiting)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_maximum
        if self._max_packet_bytes is not None:
            # MQTT 5 Maximum Packet Size: the broker must not send this client
            # anything larger (it drops it instead). paho reads a whole packet into
            # memory before any check of ours can run, so this is the only bound on
            # what a hostile publisher can make the agent allocate.
            props.MaximumPacketSize = self._max_packet_bytes
        # connect_async never raises for an unreachable broker: the network
        # thread keeps retrying, and the agent serves its last good model meanwhile.
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        if self.reply_client is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0
            self.reply_client.connect_async(
                self.broker.host,
                self.broker.port,
                keepalive=self._keepalive,
                clean_start=True,
                properties=props,
            )
            self.reply_client.loop_start()

    def stop(self) -> None:
        try:
            if self.reply_client is not None:
                try:
                    self.reply_client.disconnect()
                finally:
                    self.reply_client.loop_stop()
        finally:
            try:
                self.client.disconnect()
            finally:
                self.client.loop_stop()

    # -- callbacks (paho's network thread) -----------------------------------

    def _handle_connect(self, client: mqtt.Client, _ud: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.connect_failures.failed(
                f"the broker refused the connection: {rc}", delay=self._next_retry_s()
            )
            return
        self.connect_failures.connected()
        subs = list(self._subscriptions)
        with self._lock:
            subs += list(self._extra_subs.items())
        # Subscriptions live in the persistent session already; re-subscribing
        # is harmless and repairs a session the broker expired.
        for topic, qos in subs:
            client.subscribe(topic, qos=qos)
        log.info(
            "connected to %s (session present: %s)",
            self.broker,
            getattr(flags, "session_present", "?"),
        )
        self.connected.set()
        self.ever_connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _handle_connect_fail(self, client: Any, _ud: Any) -> None:
        exc = getattr(client, "connect_error", None)
        delay = self._next_retry_s()
        if exc is None:
            self.connect_failures.failed("connection failed", delay=delay)
            return
        level = logging.ERROR if is_config_error(exc) else logging.WARNING
        reason = describe_connect_error(exc, self.broker.ca_file)
        self.connect_failures.failed(reason, level=level, delay=delay)

    def _next_retry_s(self) -> float:
        """How long paho will wait before its next attempt, from its own back-off state
        (called right after a failed attempt, on paho's network thread)."""
        previous = getattr(self.client, "_reconnect_delay", None)
        if previous is None:
            # A first connection that failed: loop_forever waits the minimum, then its
            # main loop waits again (doubled) before retrying: 1 + 2 s (measured, paho 2.2).
            # After a lost connection the first retry has waited 1 s already.
            return RETRY_MIN_S * 3 if not self.ever_connected.is_set() else RETRY_MIN_S
        return float(min(previous * 2, RETRY_MAX_S))

    def _handle_disconnect(self, _c: Any, _ud: Any, _flags: Any, rc: Any, _p: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        # A refused CONNACK ends in a disconnect too; connect_failures has said it.
        if was_connected:
            self.disconnects += 1
            log.warning("disconnected from %s: %s", self.broker, rc)
        else:
            log.debug("disconnected from %s before connecting: %s", self.broker, rc)

    def _handle_reply_connect(self, _c: Any, _ud: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("reply connection refused: %s (replies use the session)", rc)
            return
        self.replies_connected.set()

    def _handle_reply_disconnect(self, _c: Any, _ud: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.replies_connected.is_set():
            log.warning("reply connection lost: %s (replies use the session)", rc)
        self.replies_connected.clear()

    def _reply_acked(self, info: mqtt.MQTTMessageInfo) -> None:
        """The reply client's thread, inside the session's coalesced(): the broker has
        the reply, so its request may be acknowledged."""
        entry = self._awaiting.pop(id(info), None)
        if entry is None:
            return
        # Sent by the serving thread with its next batch (flush_acks): acking from here
        # cost a wake-up of the session's network thread per read of PUBACKs, 6-10 %
        # more CPU per request at 5,000 req/s (bench/bench_memory.py).
        self._acks_ready.append(entry[1])
        ready = self.on_acks_ready
        if ready is not None:
            ready()
        if self._paused and len(self._awaiting) == self.max_unacked_replies - 1:
            self.wake_intake()  # the gate closed on unacknowledged replies may open

    @property
    def acks_ready(self) -> bool:
        return bool(self._acks_ready)

    def flush_acks(self, *, wake: bool = True) -> None:
        """Acknowledge the requests whose replies the broker has (any thread).
        ``wake=False`` (the serving loop under load): the acks leave with the session's
        next write instead of waking its network thread, which wakes anyway for the
        next request; a wake-up per micro-batch for acks alone cost ~5 % more CPU per
        request (bench/bench_memory.py)."""
        ready = self._acks_ready
        if not ready:
            return
        if wake or self._paused:
            self._drain_acks()
            return
        with self.client.unwoken():
            self._drain_acks()

    def _drain_acks(self) -> None:
        ready = self._acks_ready
        while ready:
            try:
                msg = ready.popleft()
            except IndexError:  # another thread took the last one
                return
            self._ack_now(msg)

    def _handle_message(self, _c: Any, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("message handler failed on %s", msg.topic)

    # -- operations (any thread) ---------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Queue a message; the returned info tells when the broker has it (QoS 1)."""
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.publish_failures += 1
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        return info

    def publish_reply(
        self, topic: str, payload: bytes, *, qos: int, correlation: bytes | None
    ) -> tuple[mqtt.MQTTMessageInfo, bool]:
        """Queue a reply: on the reply connection while it is up (then ``True``: the
        request's ack waits for this reply's PUBACK, see ``ack``), else on the session."""
        client = self.reply_client
        if client is None or not self.replies_connected.is_set():
            return self.publish(topic, payload, qos=qos, correlation=correlation), False
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = client.publish(topic, payload, qos=qos, properties=props)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.publish_failures += 1
            log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        return info, qos > 0

    @contextmanager
    def coalesced(self) -> Iterator[None]:
        """A block whose publishes and acks wake each network thread once."""
        with ExitStack() as stack:
            stack.enter_context(self.client.coalesced())
            if self.reply_client is not None:
                stack.enter_context(self.reply_client.coalesced())
            yield

    def flush(self) -> None:
        """Inside ``coalesced()``: send the replies queued so far now."""
        if self.reply_client is not None:
            self.reply_client.wake()
        self.client.wake()

    def ack(self, msg: mqtt.MQTTMessage, after: mqtt.MQTTMessageInfo | None = None) -> None:
        """Acknowledge a request, or (``after``: its reply on the reply connection)
        once the broker has acknowledged that reply."""
        if msg.qos == 0:
            return
        # ``_published``, not ``is_published()``: that takes a lock and raises for a
        # reply queued while the reply connection was dropping (rc NO_CONN), which
        # paho sends after reconnecting; its PUBACK acknowledges the request then.
        if after is not None and not after._published:
            # No lock: dict.pop is atomic, so whichever of this thread and the reply
            # client's (``_reply_acked``, which runs after paho marks the reply
            # published) pops the entry acknowledges the request, exactly once.
            key = id(after)
            awaiting = self._awaiting
            awaiting[key] = (after, msg)
            if not after._published or awaiting.pop(key, None) is None:
                return
        self._ack_now(msg)

    def _ack_now(self, msg: mqtt.MQTTMessage) -> None:
        self.client.ack(msg.mid, msg.qos)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            self._extra_subs[topic] = qos
        self.client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._extra_subs.pop(topic, None)
        self.client.unsubscribe(topic)
