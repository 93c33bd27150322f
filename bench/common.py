"""Shared pieces of the MQTT benchmarks: machine facts, a pinned broker, load and reply capture.

Load is driven by Mosquitto's own C client (``mosquitto_pub -l``, one request per stdin line)
because a Python publisher tops out at 5,000-8,500 msg/s by itself (shared/NOTES.md); replies
are captured by ``mosquitto_sub -F '%U %p'`` into a file, so every reply carries its receive time
(CLOCK_REALTIME, ns) without a Python process in the reply path.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import random
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.mqttlink import no_delay
from edgeloop_control.infra.mosquitto import PrivateBroker

# The agent (or a baseline server) gets core 1; broker, load and reply capture share core 0.
SERVER_CPU = 1
LOAD_CPU = 0


# -- machine ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in load),
    }


def pin(pid: int, cpu: int) -> None:
    """Pin a process to one core; a no-op where the core does not exist."""
    if cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            out.append((sum(v) - idle, sum(v)))
    return out


class CpuMeter:
    """CPU used by named processes (cores) and how busy each core was, over a phase: tells
    whether the server or the load side (broker, load generator, other users) bounded it."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = time.perf_counter()
        self._cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        self._cores0 = core_busy()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        out: dict[str, float] = {}
        for k, p in self.pids.items():
            a, b = self._cpu0[k], cpu_seconds(p)
            if a is not None and b is not None:
                out[f"{k}_cpu"] = (b - a) / wall
        for i, ((b0, t0), (b1, t1)) in enumerate(zip(self._cores0, core_busy(), strict=False)):
            out[f"core{i}_busy"] = (b1 - b0) / max(t1 - t0, 1)
        return out


class RssSampler:
    """VmRSS of one process every ``interval`` seconds, on a daemon thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic s, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.monotonic(), kib))
            self._stop.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


# -- broker -----------------------------------------------------------------------------------


def start_broker(workdir: Path) -> PrivateBroker:
    broker = PrivateBroker(workdir / "broker").start()
    assert broker.proc is not None
    pin(broker.proc.pid, LOAD_CPU)
    return broker


class Client:
    """A small paho MQTT 5 client for set-up messages (deployments, readiness)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = no_delay
        self.messages: dict[str, bytes] = {}
        self._changed = threading.Condition()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages[msg.topic] = msg.payload
            self._changed.notify_all()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(30)

    def wait_json(self, topic: str, predicate: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                raw = self.messages.get(topic)
                if raw:
                    doc = json.loads(raw)
                    if predicate(doc):
                        return doc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching message on {topic} in {timeout} s")
                self._changed.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_with_response(
    client: mqtt.Client, topic: str, payload: bytes, response_topic: str
) -> mqtt.MQTTMessageInfo:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    return client.publish(topic, payload, qos=1, properties=props)


# -- requests ----------------------------------------------------------------------------------


class Requests:
    """Predict requests (object form, named features, a routing key), one JSON line each,
    generated on demand: 1,000,000 of them held at once would cost ~600 MB of bench memory.
    A pool of 256 feature rows is reused; ids are ``{prefix}{i}`` so replies map back to
    their index (and so to their scheduled send time)."""

    def __init__(
        self, feature_names: Sequence[str], *, prefix: str = "r", seed: int = 1, keys: int = 10_000
    ) -> None:
        rng = random.Random(seed)
        self.prefix = prefix
        self.keys = keys
        self.pool = [
            ",".join(f'"{name}":{rng.gauss(0, 1):.4f}' for name in feature_names)
            for _ in range(256)
        ]

    def line(self, i: int) -> bytes:
        return (
            f'{{"id":"{self.prefix}{i}","key":"user-{i % self.keys}",'
            f'"features":{{{self.pool[i % 256]}}}}}\n'
        ).encode()

    def chunk(self, start: int, stop: int) -> bytes:
        return b"".join(self.line(i) for i in range(start, stop))


# -- load and reply capture -------------------------------------------------------------------


class ReplySink:
    """``mosquitto_sub`` writing ``<recv unix time> <payload>`` lines to a file."""

    def __init__(self, port: int, topic: str, path: Path) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - lives as long as the subprocess
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", "1",
                "-t", topic, "-F", "%U %p", "-i", f"sink-{os.getpid()}-{id(self)}",
            ],
            stdout=self._fh,
        )  # fmt: skip
        pin(self.proc.pid, LOAD_CPU)
        self._offset = 0
        self._count = 0
        self._reader = open(path, "rb")  # noqa: SIM115

    def count(self) -> int:
        """Replies written so far (reads only what is new since the last call)."""
        self._reader.seek(self._offset)
        chunk = self._reader.read()
        complete = chunk.rfind(b"\n") + 1
        self._count += chunk.count(b"\n", 0, complete)
        self._offset += complete
        return self._count

    def wait(self, n: int, timeout: float, idle: float = 5.0) -> int:
        """Wait until ``n`` replies arrived, ``timeout`` passed, or no reply came for ``idle`` s."""
        deadline = time.monotonic() + timeout
        last, last_change = self.count(), time.monotonic()
        while last < n and time.monotonic() < deadline:
            time.sleep(0.05)
            c = self.count()
            if c != last:
                last, last_change = c, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
        return last

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._fh.close()
        self._reader.close()

    def records(self) -> Iterable[tuple[int, bytes]]:
        """(receive time in ns, payload) per reply."""
        with open(self.path, "rb") as fh:
            for line in fh:
                stamp, _, payload = line.partition(b" ")
                sec, _, frac = stamp.partition(b".")
                yield int(sec) * 1_000_000_000 + int(frac.ljust(9, b"0")[:9]), payload


@dataclass
class Publishers:
    """``k`` ``mosquitto_pub -l`` processes (QoS 1, MQTT 5 response topic) fed through pipes."""

    port: int
    topic: str
    response_topic: str
    k: int = 2
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> Publishers:
        for j in range(self.k):
            p = subprocess.Popen(
                [
                    "mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-V", "5",
                    "-q", "1", "-t", self.topic, "-l", "-i", f"load-{os.getpid()}-{j}",
                    "-D", "publish", "response-topic", self.response_topic,
                ],
                stdin=subprocess.PIPE,
            )  # fmt: skip
            pin(p.pid, LOAD_CPU)
            self.procs.append(p)
        return self

    def feed(self, requests: Requests, n: int, rate: float | None, chunk: int = 50) -> float:
        """Write requests 0..n-1 round-robin to the publishers, paced at ``rate`` per second
        (open loop: the schedule never waits for replies), or as fast as the pipes take them.
        Returns the seconds it took."""
        pipes = [p.stdin for p in self.procs]
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, n, chunk)):
            if rate:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            pipe = pipes[k % len(pipes)]
            assert pipe is not None
            pipe.write(requests.chunk(i, min(n, i + chunk)))
        for pipe in pipes:
            assert pipe is not None
            pipe.flush()
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]
