"""The agent's one MQTT connection (paho-mqtt 2.x, MQTT 5).

Why these settings:
- persistent session (clean start off, session expiry) and QoS 1 subscriptions,
  so requests sent while the agent restarts wait at the broker;
- manual acknowledgement: a request is acknowledged only after its reply is
  queued, so a crash mid-request means redelivery, not loss;
- unlimited client-side in-flight window: paho's default of 20 caps QoS 1
  replies at a few hundred per second on loopback (see docs/performance.md);
- Receive Maximum 1,024 (MQTT 5 flow control): a broker that holds to it keeps a
  burst in its queue instead of the agent's memory. Mosquitto 2.0.11 does not
  once acknowledgements flow (measured: 2,695 outstanding with a maximum of 10),
  so there the intake can still reach 65,535 requests, ~1 KB each with the
  FastClient below (~8 KB each with paho's Properties objects);
- a paho client with a cheaper per-message path (``FastClient``, below): on one
  core, paho's own per-packet work was about half of the agent's CPU time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop_agent.connectlog import (
    RETRY_MAX_S,
    RETRY_MIN_S,
    ConnectFailureLog,
    is_config_error,
)
from edgeloop_agent.wire.network import BrokerAddress, describe_connect_error, tls_options

log = logging.getLogger("edgeloop.agent.mqtt")

MessageHandler = Callable[[mqtt.MQTTMessage], None]


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Disable Nagle: a small reply must not wait ~40 ms for the peer's delayed ACK."""
    # Not a TCP socket (unix, websockets): nothing to tune.
    with suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_PUBLISH = 0x30
_PUBACK = 0x40
_DISCONNECT = 0xE0
_READ_SIZE = 65536  # one recv() serves every packet already in the kernel buffer
_WRITE_COALESCE = 65536  # bytes of queued packets joined into one send()
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
# Unacknowledged requests the broker may push to us: 16 micro-batches of 64 keep the
# serving loop fed; where the broker holds to it, the intake stays under ~1 MB.
RECEIVE_MAXIMUM = 1024


class PublishProperties:
    """The PUBLISH properties the request path reads (MQTT 5 response topic and
    correlation data), decoded without paho's ``Properties``: building one of those
    costs ~10 us and ~5 KB per message (two dicts of every property name).

    Attributes are set only when present, like paho's ``Properties``, so
    ``getattr(props, "ResponseTopic", None)`` reads both the same way.
    """

    __slots__ = ("CorrelationData", "ResponseTopic")
    packetType = PacketTypes.PUBLISH
    ResponseTopic: str
    CorrelationData: bytes


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int] | None:
    """The MQTT variable byte integer at ``pos``: (value, next position), or None when
    it is cut off before ``end`` or longer than the protocol's four bytes."""
    value, mult = 0, 1
    for _ in range(4):
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) * mult
        if byte < 0x80:
            return value, pos
        mult <<= 7
    return None


def _parse_publish_properties(
    packet: bytes | bytearray, pos: int
) -> tuple[PublishProperties | None, int]:
    """Decode the properties at ``pos``; ``None`` when any property other than the
    response topic or correlation data is present (paho's full decoder handles it)."""
    decoded = _varint(packet, pos, len(packet))
    if decoded is None:
        return None, pos
    length, pos = decoded
    props = PublishProperties()
    end = pos + length
    if end > len(packet):
        return None, pos
    while pos < end:
        ident = packet[pos]
        if ident not in (8, 9) or pos + 3 > end:
            return None, pos
        size = (packet[pos + 1] << 8) | packet[pos + 2]
        value = packet[pos + 3 : pos + 3 + size]
        pos += 3 + size
        if pos > end:
            return None, pos
        if ident == 8:
            if hasattr(props, "ResponseTopic"):
                return None, pos
            try:
                props.ResponseTopic = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return None, pos
        else:
            if hasattr(props, "CorrelationData"):
                return None, pos
            props.CorrelationData = bytes(value)
    return props, end


class FastClient(mqtt.Client):
    """paho's client with a cheaper path for the packets the agent sees most.

    Measured on one core (docs/performance.md), paho spent more time per request
    than everything else the agent does. Every override below keeps paho's
    behaviour and falls back to paho's own code for anything unusual:

    - reads: one ``recv(64 KiB)`` feeds every complete packet in it, instead of
      three ``recv`` calls per packet (command byte, length, body);
    - PUBLISH (QoS 0/1, MQTT 5) with no property but response topic and
      correlation data: decoded without paho's ``Properties`` and logging;
    - PUBACK with no reason code or properties: no ``ReasonCode``/``Properties``
      objects per acknowledgement;
    - writes: queued packets are joined into one ``send`` (paho sends each alone);
    - ``coalesced()``: packets queued by one thread inside the block wake the
      network thread once, not once per packet (one syscall each);
    - dispatch: without ``message_callback_add`` filters, ``on_message`` is called
      without paho's topic matcher and callback lock.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None
        self._quiet_thread: int | None = None
        self._wake_pending = False
        self._puback_reason = ReasonCode(PacketTypes.PUBACK)
        self._puback_props = Properties(PacketTypes.PUBACK)
        self._filtered_callbacks = False
        self.connect_error: OSError | None = None  # why the last attempt failed

    def reconnect(self) -> MQTTErrorCode:
        # paho's on_connect_fail is told nothing; keep the reason for it to read.
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.connect_error = exc
            raise
        self.connect_error = None
        return rc

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self._on_message
        if self._filtered_callbacks or on_message is None:
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:  # what paho does with a failing callback
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    # -- reads (network thread) ----------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:  # a new connection: drop the old bytes
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            end = min(len(buf), pos + bufsize)
            self._rpos = end
            return buf[pos:end]
        data = super()._sock_recv(max(bufsize, _READ_SIZE))
        if len(data) <= bufsize:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos = data, bufsize
        return data[:bufsize]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already in our buffer: drain them before returning.
        while rc == _OK and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(max_packets)
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        inp = self._in_packet
        if inp["command"] != 0 or self._sock is not self._rsock:
            return super()._packet_read()
        buf, start = self._rbuf, self._rpos
        end = len(buf)
        decoded = _varint(buf, start + 1, end)
        if decoded is None:
            # Header cut off (paho keeps the state) or over four bytes (paho reports it).
            return super()._packet_read()
        length, pos = decoded
        if pos + length > end:
            return super()._packet_read()  # body incomplete
        inp["command"] = buf[start]
        inp["remaining_length"] = length
        inp["have_remaining"] = 1
        inp["to_process"] = 0
        # A bytes slice, not a bytearray copy: paho only reads the packet.
        inp["packet"] = buf[pos : pos + length]  # type: ignore[typeddict-item]
        inp["pos"] = 0
        self._rpos = pos + length
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        self._last_bytes_received = time.monotonic()  # keepalive: an unlocked float store
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            pos = 2 + ((packet[0] << 8) | packet[1])
            topic = bytes(packet[2:pos])
            mid = 0
            if qos:
                mid = (packet[pos] << 8) | packet[pos + 1]
                pos += 2
            props, pos = _parse_publish_properties(packet, pos)
        except IndexError:
            props = None
        if props is None or not topic:
            return super()._handle_publish()  # malformed or unusual: paho decides
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        # A received message has no delivery to wait for: no MQTTMessageInfo (it
        # would allocate a Condition per message).
        message.info = None  # type: ignore[assignment]
        message.state = mqtt.mqtt_ms_invalid
        message.mid = mid
        message._topic = topic
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = props  # type: ignore[assignment]
        message.payload = bytes(packet[pos:])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return _OK

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]  # no reason code: success (MQTT 5, 3.4.2.1)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._puback_reason, self._puback_props)
        return _OK

    # -- writes --------------------------------------------------------------

    def _packet_write(self) -> MQTTErrorCode:
        out: deque[Any] = self._out_packet
        while True:
            batch: list[Any] = []
            size = 0
            # Only this thread pops; other threads append on the right.
            while out and size < _WRITE_COALESCE:
                head = out[0]
                command = head["command"] & 0xF0
                if (command == _PUBLISH and head["qos"] == 0) or command == _DISCONNECT:
                    break  # these need paho's per-packet completion work
                batch.append(out.popleft())
                size += head["to_process"]
            if not batch:
                return super()._packet_write() if out else _OK
            data = b"".join(
                p["packet"] if p["pos"] == 0 else p["packet"][p["pos"] :] for p in batch
            )
            try:
                sent = self._sock_send(data)
            except (AttributeError, ValueError):
                out.extendleft(reversed(batch))
                return _OK
            except BlockingIOError:
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(batch))
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if sent <= 0:
                out.extendleft(reversed(batch))
                break
            for k, p in enumerate(batch):
                if sent >= p["to_process"]:
                    sent -= p["to_process"]
                    p["pos"] += p["to_process"]
                    p["to_process"] = 0
                    continue
                p["pos"] += sent
                p["to_process"] -= sent
                out.extendleft(reversed(batch[k:]))  # the rest goes on the next pass
                break
        with self._msgtime_mutex:
            self._last_msg_out = time.monotonic()
        return _OK

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> MQTTErrorCode:
        if self._quiet_thread is None or self._quiet_thread != threading.get_ident():
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        self._wake_pending = True
        return _OK

    @contextmanager
    def coalesced(self) -> Iterator[None]:
        """Within the block, this thread's packets wake the network thread once."""
        if self._thread is None or self._sockpairW is None:
            yield  # no network thread to wake: paho writes directly
            return
        self._quiet_thread = threading.get_ident()
        try:
            yield
        finally:
            self._quiet_thread = None
            self.wake()

    def wake(self) -> None:
        """Send what ``coalesced()`` has queued so far, without ending the block."""
        if self._wake_pending and self._sockpairW is not None:
            self._wake_pending = False
            with suppress(OSError, AttributeError):  # BlockingIOError: a wake is pending
                self._sockpairW.send(mqtt.sockpair_data)
            self._call_socket_register_write()


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

    def stop(self) -> None:
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
            log.warning("disconnected from %s: %s", self.broker, rc)
        else:
            log.debug("disconnected from %s before connecting: %s", self.broker, rc)

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

    def coalesced(self) -> Any:
        """A block whose publishes and acks wake paho's network thread once."""
        return self.client.coalesced()

    def flush(self) -> None:
        """Inside ``coalesced()``: send the replies queued so far now."""
        self.client.wake()

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
