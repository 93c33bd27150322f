"""Real agent processes and a real MQTT client for the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.infra.mqtt import new_client


def agent_command() -> str:
    """The edgeloop-agent console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "edgeloop-agent"
    return str(candidate) if candidate.exists() else "edgeloop-agent"


@dataclass
class AgentHandle:
    device: str
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode or 0)


def start_agent(
    device: str,
    broker_url: str,
    workdir: Path,
    trusted_key: Path,
    extra: list[str] | None = None,
) -> AgentHandle:
    state_dir = workdir / "agents" / device
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "agents" / f"{device}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [
            agent_command(),
            "--broker",
            broker_url,
            "--device-id",
            device,
            "--state-dir",
            str(state_dir),
            "--trusted-key",
            str(trusted_key),
            *(extra or []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return AgentHandle(device, state_dir, proc, log_path)


@dataclass
class DeviceStats:
    sent: int = 0
    replies: int = 0
    errors: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    agent_ms: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)


class DemoClient:
    """An app that asks devices for predictions (MQTT 5 request/response)."""

    def __init__(self, broker_url: str, prefix: str = "edgeloop") -> None:
        addr = BrokerAddress.parse(broker_url)
        self.prefix = prefix
        self._by_device: dict[str, Topics] = {}
        self.reply_topic = f"demo/replies/{uuid.uuid4().hex[:8]}"
        self.client = new_client(addr, f"demo-app-{uuid.uuid4().hex[:8]}")
        self._lock = threading.Lock()
        self._sent_at: dict[str, tuple[str, float]] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, DeviceStats] = {}
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_message = self._on_message
        self.client.connect(addr.host, addr.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("demo client could not connect to the broker")
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(self.reply_topic, qos=1)
        done.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        rid = body.get("id")
        with self._lock:
            sent = self._sent_at.pop(rid, None)
            if sent is None:
                return
            device, t0 = sent
            st = self.stats.setdefault(device, DeviceStats())
            self.replies[rid] = body
            st.replies += 1
            if "error" in body:
                st.errors += 1
                return
            st.rtt_ms.append((now - t0) * 1000)
            st.agent_ms.append(float(body.get("ms", 0.0)))
            ver = f"{body.get('model')}@{body.get('version')}"
            st.versions[ver] = st.versions.get(ver, 0) + 1

    def request(
        self, device: str, rid: str, features: dict[str, Any], key: str | None = None
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = rid.encode()
        payload: dict[str, Any] = {"id": rid, "features": features}
        if key is not None:
            payload["key"] = key
        with self._lock:
            self._sent_at[rid] = (device, time.perf_counter())
            self.stats.setdefault(device, DeviceStats()).sent += 1
        self.client.publish(
            self._topics(device).predict, json.dumps(payload), qos=1, properties=props
        )

    def feedback(self, device: str, rid: str, label: Any) -> None:
        self.client.publish(
            self._topics(device).feedback, json.dumps({"id": rid, "label": label}), qos=1
        )

    def _topics(self, device: str) -> Topics:
        # Built once per device: requests go out by the thousand.
        topics = self._by_device.get(device)
        if topics is None:
            topics = self._by_device[device] = Topics(device, self.prefix)
        return topics

    def wait_replies(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sent_at:
                    return 0
            time.sleep(0.05)
        with self._lock:
            return len(self._sent_at)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
