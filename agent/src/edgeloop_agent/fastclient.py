"""paho's MQTT client with a cheaper per-packet path and a gated intake.

``FastClient``: on one core, paho's own per-packet work was about half of the
agent's CPU time (docs/performance.md); this subclass keeps paho's behaviour and
falls back to paho's code for anything unusual.

The intake gate (``intake_paused``): while it says the serving queue is full, the
network loop stops reading the socket, so a burst waits in the broker (TCP flow
control) instead of in the agent's memory. Writes and keepalive go on meanwhile.

``lazy_read``: for a client that only publishes (the reply connection), the socket is
read after each write or wait instead of on every arrival of a PUBACK.
"""

from __future__ import annotations

import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, _ConnectionState
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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
        # Threads inside coalesced(): their packets wake the network thread once.
        self._quiet_threads: set[int] = set()
        self._unwoken_thread: int | None = None  # inside unwoken(): no wake at all
        self._wake_pending = False
        self._puback_reason = ReasonCode(PacketTypes.PUBACK)
        self._puback_props = Properties(PacketTypes.PUBACK)
        self._filtered_callbacks = False
        self.connect_error: OSError | None = None  # why the last attempt failed
        # The intake gate: True while the serving queue is full (read on this
        # client's network thread, before each packet). None: read at wire speed.
        self.intake_paused: Callable[[], bool] | None = None
        # Told each QoS 1 message's info once the broker has acknowledged it (after
        # paho marks it published, so info.is_published() is already True).
        self.after_puback: Callable[[mqtt.MQTTMessageInfo], None] | None = None
        # Read only after each write or wait (never woken by incoming bytes): for a
        # client that only publishes, whose PUBACKs can wait for its next write.
        self.lazy_read = False

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
        gate = self.intake_paused
        if gate is None:
            rc = super().loop_read(max_packets)
            # select() cannot see bytes already in our buffer: drain them before returning.
            while rc == _OK and self._sock is not None and self._rpos < len(self._rbuf):
                rc = super().loop_read(max_packets)
            return rc
        # Gated: the gate is asked before every packet, so the serving queue never
        # grows past its bound; one recv()'s worth per call lets writes interleave.
        while not gate():
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._rpos >= len(self._rbuf):
                return _OK
        return _OK

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        if self.lazy_read and self._sock is not None:
            rc = self._loop_paused(timeout, hold_keepalive=False)
            if rc or self._sock is None:
                return rc
            return self.loop_read()
        gate = self.intake_paused
        if gate is None or self._sock is None:
            return super()._loop(timeout)
        if gate():
            return self._loop_paused(timeout)
        if self._sock is self._rsock and self._rpos < len(self._rbuf):
            # Bytes read before the gate closed: select() cannot see them.
            rc = self.loop_read()
            if rc or self._sock is None:
                return rc
            if self.want_write():
                rc = self.loop_write()
                if rc or self._sock is None:
                    return rc
            return self.loop_misc()
        return super()._loop(timeout)

    def _loop_paused(self, timeout: float, *, hold_keepalive: bool = True) -> MQTTErrorCode:
        """One turn of the network loop with reading stopped: the broker keeps what it
        has not sent (its queue limits apply), and TCP stops it sending more. Writes
        (acks, telemetry) go on; the wake-up socket ends the wait when the serving
        loop has made room (``wake_intake``) or queued something to send."""
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        wlist = [sock] if self.want_write() else []
        rlist = [self._sockpairR] if self._sockpairR is not None else []
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (TypeError, ValueError):
            if self._state not in (
                _ConnectionState.MQTT_CS_DISCONNECTING,
                _ConnectionState.MQTT_CS_DISCONNECTED,
            ):
                self._state = _ConnectionState.MQTT_CS_CONNECTION_LOST
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if readable and self._sockpairR is not None:
            with suppress(BlockingIOError):
                self._sockpairR.recv(10000)
            writable = [sock]
        if writable:
            rc = self.loop_write()
            if rc or self._sock is None:
                return rc
        # Keepalive while paused: nothing is read, so the broker's PINGRESP (queued
        # behind the requests we are not reading) cannot arrive, and paho would drop
        # a healthy link after one keepalive. The silence is ours: count the link as
        # heard from, and let paho go on sending PINGREQ when we have been quiet for
        # a keepalive, so the broker hears from us. A dead peer still shows on the
        # next write; the pause ends when the serving queue drains, not later.
        if hold_keepalive:
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
            self._ping_t = 0
        return self.loop_misc()

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

    def _do_on_publish(
        self, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> MQTTErrorCode:
        hook = self.after_puback
        message = self._out_messages.get(mid) if hook is not None else None
        rc = super()._do_on_publish(mid, reason_code, properties)
        if message is not None and hook is not None and message.qos > 0:
            hook(message.info)
        return rc

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
        me = threading.get_ident()
        if not self._quiet_threads or me not in self._quiet_threads:
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
        if me != self._unwoken_thread:
            self._wake_pending = True
        return _OK

    @contextmanager
    def coalesced(self) -> Iterator[None]:
        """Within the block, this thread's packets wake the network thread once."""
        if self._thread is None or self._sockpairW is None:
            yield  # no network thread to wake: paho writes directly
            return
        me = threading.get_ident()
        self._quiet_threads.add(me)
        try:
            yield
        finally:
            self._quiet_threads.discard(me)
            self.wake()

    @contextmanager
    def unwoken(self) -> Iterator[None]:
        """Within the block, this thread's packets are queued without waking the
        network thread: they leave with its next write, which follows its next read
        (for the agent's session under load, the next request)."""
        if self._thread is None or self._sockpairW is None:
            yield
            return
        me = threading.get_ident()
        was_quiet = me in self._quiet_threads
        self._quiet_threads.add(me)
        self._unwoken_thread = me
        try:
            yield
        finally:
            self._unwoken_thread = None
            if not was_quiet:
                self._quiet_threads.discard(me)

    def wake_intake(self) -> None:
        """Wake the network loop (any thread): the intake gate may have opened."""
        if self._sockpairW is not None:
            with suppress(OSError, AttributeError):  # BlockingIOError: a wake is pending
                self._sockpairW.send(mqtt.sockpair_data)

    def wake(self) -> None:
        """Send what ``coalesced()`` has queued so far, without ending the block."""
        if self._wake_pending and self._sockpairW is not None:
            self._wake_pending = False
            with suppress(OSError, AttributeError):  # BlockingIOError: a wake is pending
                self._sockpairW.send(mqtt.sockpair_data)
            self._call_socket_register_write()
