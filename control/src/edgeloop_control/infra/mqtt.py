"""The control node's MQTT: one paho client factory, one publishing seam.

:func:`new_client` is how every control-side paho client is made (the daemon's
session, the commands' :class:`ControlClient`, the demo's app). The long-running
daemon (`edgeloop serve`) has its own loop; commands such as `edgeloop deploy`
just need to connect, publish retained documents with QoS 1, wait for the
broker's acknowledgement, and read retained state.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_agent.wire.network import BrokerAddress, describe_connect_error, tls_options
from edgeloop_control.errors import EdgeloopError

# How long a command waits for the broker, TCP connect and CONNACK together: a
# closed port fails at once, a host that drops packets (a firewall, a wrong
# address) would otherwise hang for the kernel's SYN retries (~2 min) or paho's
# default. 3 s leaves the slowest command's start-up (~2 s for `edgeloop ab`) inside
# the 5 s in which every command that needs the broker must answer.
CONNECT_TIMEOUT_S = 3.0


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open``: no Nagle, so a small publish does not wait ~40 ms for
    the broker's delayed ACK."""
    with suppress(OSError, AttributeError):  # not a TCP socket: nothing to tune
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    address: BrokerAddress, client_id: str, *, manual_ack: bool = False, reconnect: bool = True
) -> mqtt.Client:
    """A paho MQTT 5 client for ``address``, not yet connected.

    Credentials and TLS (the CA named by the URL's ``?ca_file=``) come from the
    address; Nagle is off; paho's own in-flight and queue limits are off, since
    every caller waits for each publish's acknowledgement itself.
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
        reconnect_on_failure=reconnect,
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_socket_open = no_delay
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(**tls_options(address.ca_file))
    return client


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
    """:class:`Publisher` over a connected paho client (the daemon's publishing connection)."""

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
        self.client_id = client_id or f"edgeloop-control-{uuid.uuid4().hex[:10]}"
        self.client = new_client(self.address, self.client_id)
        self._connected = threading.Event()
        self._barrier: str | None = None
        self._barrier_seen = threading.Event()
        self._lock = threading.Lock()
        self._inbox: list[Message] = []
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        # A CONNACK that refuses (bad password, not authorised) ends the wait too, and
        # says why, instead of leaving every later publish to fail.
        if rc.is_failure:
            self._refused = str(rc)
        self._connected.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._barrier:
            self._barrier_seen.set()
            return
        with self._lock:
            self._inbox.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> ControlClient:
        deadline = time.monotonic() + timeout
        # paho's socket timeout bounds the TCP (and TLS) handshake; the CONNACK wait
        # below gets what is left of the same budget.
        self.client.connect_timeout = timeout
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            # One line naming the cause: "TLS certificate verify failed: Hostname mismatch...".
            reason = describe_connect_error(exc, self.address.ca_file)
            raise BrokerError(f"cannot reach the broker at {self.address}: {reason}") from None
        self.client.loop_start()
        if not self._connected.wait(max(0.1, deadline - time.monotonic())):
            self.close()
            raise BrokerError(
                f"cannot reach the broker at {self.address}: no answer to CONNECT within "
                f"{timeout:g} s (is that an MQTT port?)"
            )
        if self._refused:
            self.close()
            reason = self._refused
            raise BrokerError(f"the broker at {self.address} refused the connection: {reason}")
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
        """Retained messages under a filter.

        The broker queues a subscription's retained messages before it reads the
        client's next packet, so a message this client publishes to itself right after
        subscribing arrives after all of them: when it arrives the listing is complete,
        without waiting out a quiet period (at 1,000 devices the quiet period was most
        of `edgeloop fleet`'s wall time). If it never comes (an ACL that does not let
        this user write there), the listing ends after ``settle`` s without a new one.
        """
        with self._lock:
            self._inbox.clear()
        self._barrier = self._barrier_topic(topic_filter)
        self._barrier_seen.clear()
        if self._barrier is not None:
            self.client.subscribe(self._barrier, qos=1)
        self.client.subscribe(topic_filter, qos=1)
        if self._barrier is not None:
            self.client.publish(self._barrier, b"", qos=1)
        try:
            self._wait_for_retained(settle, timeout)
        finally:
            self.client.unsubscribe(topic_filter)
            if self._barrier is not None:
                self.client.unsubscribe(self._barrier)
            self._barrier = None
        with self._lock:
            return [m for m in self._inbox if m.retain]

    def _barrier_topic(self, topic_filter: str) -> str | None:
        # Under the filter's own first level, where the control user may write; never
        # retained, and one level deeper than any device topic the daemon reads.
        first = topic_filter.split("/", 1)[0]
        if not first or first in ("+", "#") or first.startswith("$"):
            return None
        return f"{first}/_control/{self.client_id}/barrier"

    def _wait_for_retained(self, settle: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._barrier_seen.wait(0.02):
                return
            with self._lock:
                count = len(self._inbox)
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return


def probe_reason(address: BrokerAddress, timeout: float = 2.0) -> str:
    """Why a TCP connection to the broker fails now, in one line (for logs: paho's
    reconnect loop says only that it failed)."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return "the port answers, but the MQTT connection failed (TLS or credentials?)"
    except OSError as exc:
        return describe_connect_error(exc, address.ca_file)


class ConnectFailureLog:
    """paho ``on_connect_fail`` for long-running sessions: logs the first failure with
    its reason, then one line each time the number of failures doubles (1, 2, 4, 8...),
    so an outage of hours is a handful of lines, not one per retry."""

    def __init__(self, address: BrokerAddress, log: Any, who: str) -> None:
        self.address = address
        self.log = log
        self.who = who
        self.failures = 0

    def __call__(self, _client: Any, _userdata: Any) -> None:
        self.failures += 1
        if self.failures & (self.failures - 1) == 0:
            self.log.error(
                "%s cannot reach the broker at %s: %s (%d failed attempt%s; retrying with "
                "back-off)",
                self.who,
                self.address,
                probe_reason(self.address),
                self.failures,
                "" if self.failures == 1 else "s",
            )

    def connected(self) -> None:
        if self.failures:
            self.log.info("%s reached the broker after %d failed attempts", self.who, self.failures)
        self.failures = 0


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
def connected(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[ControlClient]:
    client = ControlClient(url).connect(timeout)
    try:
        yield client
    finally:
        client.close()
