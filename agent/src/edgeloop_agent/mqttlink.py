"""The agent's one MQTT connection (paho-mqtt 2.x, MQTT 5).

Why these settings:
- persistent session (clean start off, session expiry) and QoS 1 subscriptions,
  so requests sent while the agent restarts wait at the broker;
- manual acknowledgement: a request is acknowledged only after its reply is
  queued, so a crash mid-request means redelivery, not loss;
- unlimited client-side in-flight window: paho's default of 20 caps QoS 1
  replies at a few hundred per second on loopback (see docs/performance.md).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.config import BrokerAddress

log = logging.getLogger("edgeloop.agent.mqtt")

MessageHandler = Callable[[mqtt.MQTTMessage], None]


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Disable Nagle: a small reply must not wait ~40 ms for the peer's delayed ACK."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (unix, websockets): nothing to tune


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
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
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

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(0)  # 0 = unlimited
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=15)
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set()
        client.on_socket_open = no_delay
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        self.client = client

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
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

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    # -- callbacks (paho's network thread) -----------------------------------

    def _handle_connect(self, client: mqtt.Client, _ud: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker, rc)
            return
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

    def _handle_disconnect(self, _c: Any, _ud: Any, _flags: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        log.warning("disconnected from %s: %s", self.broker, rc)

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

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            self._extra_subs[topic] = qos
        self.client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._extra_subs.pop(topic, None)
        self.client.unsubscribe(topic)
