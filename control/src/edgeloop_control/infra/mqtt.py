"""A small blocking MQTT client for the control node's commands.

The long-running daemon (`edgeloop serve`) has its own loop; commands such as
`edgeloop deploy` just need to connect, publish retained documents with QoS 1,
wait for the broker's acknowledgement, and read retained state.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as mqtt

from edgeloop_agent.config import BrokerAddress
from edgeloop_agent.connectlog import describe_connect_error, tls_options
from edgeloop_agent.mqttlink import no_delay
from edgeloop_control.errors import EdgeloopError


class BrokerError(EdgeloopError):
    """The broker could not be reached or refused an operation."""


class Publisher(Protocol):
    """Anything that publishes and waits for the broker's acknowledgement.

    The one publishing seam of the control node: commands use
    :class:`ControlClient`, the daemon :class:`SessionPublisher` over its own
    session; desired state, artifacts and events go through it.
    """

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None: ...


class SessionPublisher:
    """:class:`Publisher` over an already connected paho client (the daemon's session)."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None:
        publish_and_wait(self.client, topic, payload, retain=retain, qos=qos, timeout=timeout)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class ControlClient:
    def __init__(self, url: str, *, client_id: str | None = None) -> None:
        self.address = BrokerAddress.parse(url)
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeloop-control-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        if self.address.username:
            self.client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            # The broker URL may carry ?ca_file=/path (docs/operations.md).
            self.client.tls_set(**tls_options(self.address.ca_file))
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._inbox: list[Message] = []
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = no_delay

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._inbox.append(Message(msg.topic, msg.payload, bool(msg.retain)))

    def connect(self, timeout: float = 10.0) -> ControlClient:
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            # One line naming the cause: "TLS certificate verify failed: Hostname mismatch...".
            reason = describe_connect_error(exc, self.address.ca_file)
            raise BrokerError(f"cannot reach the broker at {self.address}: {reason}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise BrokerError(f"the broker at {self.address} did not accept the connection")
        return self

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None:
        publish_and_wait(self.client, topic, payload, retain=retain, qos=qos, timeout=timeout)

    def retained(
        self, topic_filter: str, *, settle: float = 0.5, timeout: float = 5.0
    ) -> list[Message]:
        """Retained messages under a filter: wait until no new one arrives for ``settle`` s."""
        with self._lock:
            self._inbox.clear()
        self.client.subscribe(topic_filter, qos=1)
        deadline = time.monotonic() + timeout
        seen = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with self._lock:
                count = len(self._inbox)
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                break
        self.client.unsubscribe(topic_filter)
        with self._lock:
            return [m for m in self._inbox if m.retain]


def publish_and_wait(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    *,
    retain: bool = False,
    qos: int = 1,
    timeout: float = 30,
) -> None:
    """Publish and block until the broker acknowledged it (QoS 1), or raise BrokerError."""
    info = client.publish(topic, payload, qos=qos, retain=retain)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as exc:
        raise BrokerError(f"publish to {topic} failed: {exc}") from None
    if not info.is_published():
        raise BrokerError(f"the broker did not acknowledge {topic} within {timeout} s")


@contextmanager
def connected(url: str) -> Iterator[ControlClient]:
    client = ControlClient(url).connect()
    try:
        yield client
    finally:
        client.close()
