"""Test-side MQTT tools: a real paho client and a real agent process.

Nothing here stands in for a real part: the probe is a paho client talking to
the test's own Mosquitto, and AgentProcess runs the installed `edgeloop-agent`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.mqttlink import no_delay
from edgeloop_agent.wire.network import BrokerAddress

VENV_BIN = Path(sys.executable).parent


class Probe:
    """A paho client that records every message on its subscriptions."""

    def __init__(
        self,
        url: str,
        *,
        protocol: int = mqtt.MQTTv5,
        client_id: str | None = None,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        require_accept: bool = True,
    ):
        addr = BrokerAddress.parse(url)
        self.protocol = protocol
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._connack = threading.Event()  # any CONNACK, refused ones included
        self.reason: Any = None  # the last CONNACK's reason code
        self._topics: dict[str, int] = {}
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.on_socket_open = no_delay
        if persistent:
            # A durable subscriber: its session (and queued QoS 1 messages)
            # survives its own disconnects and broker restarts.
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.reconnect_delay_set(0.2, 1)
            self.client.connect(
                addr.host, addr.port, keepalive=30, clean_start=False, properties=props
            )
        else:
            self.client.connect(addr.host, addr.port, keepalive=30)
        self.client.loop_start()
        assert self._connack.wait(10), "probe got no CONNACK from the test broker"
        if require_accept:
            assert self.accepted, f"the test broker refused the probe: {self.reason}"

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self._connack.set()
        if reason.is_failure:
            return
        # After a broker restart a clean session has lost its subscriptions.
        for topic, qos in self._topics.items():
            client.subscribe(topic, qos=qos)
        self._connected.set()

    def wait_connected(self, timeout: float = 30.0) -> None:
        assert self._connected.wait(timeout), "probe did not reconnect to the test broker"

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._topics[topic] = qos
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=qos)
        assert done.wait(10), f"subscription to {topic} not acknowledged"

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.wait_connected()
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)

    def next(self, timeout: float = 10.0, topic: str | None = None) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no message{' on ' + topic if topic else ''} in {timeout} s")
            msg = self.messages.get(timeout=remaining)
            if topic is None or msg.topic == topic:
                return msg

    def next_json(self, timeout: float = 10.0, topic: str | None = None) -> dict[str, Any]:
        return json.loads(self.next(timeout, topic).payload)

    def collect(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"got {len(out)} of {n} messages in {timeout} s")
            out.append(json.loads(self.messages.get(timeout=remaining).payload))
        return out

    def wait_for(
        self, topic: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg.topic != topic or not msg.payload:
                continue
            last = json.loads(msg.payload)
            if predicate(last):
                return last
        raise TimeoutError(f"no matching message on {topic} in {timeout} s (last: {last})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentProcess:
    """The real `edgeloop-agent` console script in a subprocess."""

    def __init__(
        self,
        *,
        broker_url: str,
        device_id: str,
        state_dir: Path,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        unsigned_by_default: bool = True,
    ) -> None:
        extra = list(extra or [])
        if unsigned_by_default and not {"--trusted-key", "--config", "-c"} & set(extra):
            # Tests that publish hand-made desired state run the agent in its
            # explicit development mode; the signed path has its own tests
            # (tests/integration/test_update_path.py) and every --trusted-key test.
            extra.append("--allow-unsigned")
        self.args = [
            str(VENV_BIN / "edgeloop-agent"),
            "--broker",
            broker_url,
            "--device-id",
            device_id,
            "--state-dir",
            str(state_dir),
            *(extra or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"agent-{device_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._log.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
