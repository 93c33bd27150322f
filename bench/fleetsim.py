"""Fleet simulator: N virtual edgeloop devices speaking the real protocol to a real broker.

Each virtual device has its own MQTT 5 connection (client id ``edgeloop-agent-{device}``,
the agent's Last Will on its retained status topic) and is built from the agent's own wire
code:

* envelopes for telemetry, samples and labels come from the outbox's own envelope builder
  (``Outbox._prepare``: same id scheme, same bytes); the "outbox" is in memory;
* telemetry reports have the shape of ``Telemetry.report``, with metrics snapshots from the
  real ``Metrics`` class and drift windows built from the real ``DriftReport``/``ColumnDrift``
  classes (devices in the drifting subset report drift after ``--drift-onset`` seconds);
* the desired state is opened with the agent's ``open_envelope`` and trusted key, parsed with
  ``DesiredState``, checked for device and revision like the updater does; each artifact is
  fetched from its retained topic, checked for size and sha256 and its signed statement is
  verified with ``verify_any``; the swap is reported on status. No onnxruntime session is
  created (loading ONNX per virtual device would dominate the CPU); devices in the
  ``--fail-load`` subset report ``model_load_failed`` instead, as an agent whose model does
  not load would;
* A/B: requests carry a routing key and are routed with the agent's ``Allocation`` and
  ``bucket_of`` when the desired state has an allocation, else by weight.

Many connections per process: paho clients driven by one ``select.poll`` loop per process
(``loop_read``/``loop_write``/``loop_misc``), no thread per client.

    python bench/fleetsim.py --broker mqtt://127.0.0.1:1883 --devices 1000 --procs 2 \\
        --duration 120 --telemetry-interval 10 --trusted-key ws/keys/desired.pub

Prints one JSON line per worker process with its counters when done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import random
import resource
import select
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent import __version__
from edgeloop_agent.drift.report import ColumnDrift, DriftReport
from edgeloop_agent.metrics import Metrics
from edgeloop_agent.outbox import DEFAULT_KINDS, Outbox
from edgeloop_agent.protocol import dumps
from edgeloop_agent.wire.allocation import Allocation, bucket_of
from edgeloop_agent.wire.desired import DesiredState, DesiredStateError, open_envelope
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.signature import (
    SignatureError,
    artifact_statement,
    load_public_keys,
    verify_any,
)
from edgeloop_agent.wire.topics import Topics, artifact_topic

DEFAULT_FEATURES = (
    "bearing_temp_c",
    "vibration_mm_s",
    "pressure_bar",
    "flow_m3_h",
    "current_a",
    "speed_rpm",
    "ambient_c",
    "humidity_pct",
)


@dataclass
class SimConfig:
    broker: str
    prefix: str = "edgeloop"
    telemetry_interval_s: float = 10.0
    request_rate: float = 1.0  # simulated predict requests per device per second
    capture_rate: float = 0.01  # share of requests captured as samples
    label_rate: float = 0.5  # share of captured samples that later get a label
    drift_share: float = 0.0  # share of devices that start drifting ...
    drift_onset_s: float = 0.0  # ... this many seconds after start
    churn_share: float = 0.0  # share of devices that drop and come back
    churn_period_s: float = 60.0  # each churning device is offline once per period ...
    churn_offline_s: float = 10.0  # ... for this long
    fail_load_share: float = 0.0  # share of devices whose model "does not load"
    drift_window_rows: int = 1000  # the agent's default count window (drift_window)
    features: tuple[str, ...] = DEFAULT_FEATURES
    trusted_keys: tuple[str, ...] = ()
    connect_rate: float = 400.0  # new connections per second per process
    keepalive_s: int = 60
    stop_file: str | None = None  # workers end early once this file exists
    seed: int = 0


@dataclass
class Counters:
    connected: int = 0
    connect_failures: int = 0
    reports: int = 0
    samples: int = 0
    labels: int = 0
    status: int = 0
    desired_applied: int = 0
    desired_refused: int = 0
    load_failed: int = 0
    artifacts_fetched: int = 0
    artifact_bytes: int = 0
    churn_drops: int = 0
    publish_errors: int = 0
    swap_latency_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "swap_latency_s"}
        lat = sorted(self.swap_latency_s)
        out["swaps"] = len(lat)
        if lat:
            out["swap_p50_s"] = lat[len(lat) // 2]
            out["swap_max_s"] = lat[-1]
        return out


class EnvelopeMaker:
    """The outbox's envelope builder without its SQLite file.

    ``Outbox._prepare`` reads only these attributes, so the simulator's envelopes are the
    agent's, byte for byte (id scheme ``device:boot:seq``, key order, float ``ts``).
    """

    _prepare = Outbox._prepare

    def __init__(self, device_id: str, rng: random.Random) -> None:
        self.device_id = device_id
        self.boot_id = f"{rng.getrandbits(64):016x}"
        self._seq = itertools.count(1)
        self.kinds = dict(DEFAULT_KINDS)

    def envelope(self, topic: str, payload: dict[str, Any], kind: str) -> tuple[str, bytes]:
        msg_id, _topic, _kind, _prio, body = self._prepare(0, topic, payload, kind, time.time())
        return msg_id, body


class VirtualDevice:
    def __init__(
        self, device_id: str, cfg: SimConfig, keys: list[Any], rng: random.Random, c: Counters
    ) -> None:
        self.id = device_id
        self.cfg = cfg
        self.keys = keys
        self.rng = rng
        self.c = c
        self.topics = Topics(device_id, cfg.prefix)
        self.env = EnvelopeMaker(device_id, rng)
        self.metrics = Metrics()
        self.drifting = rng.random() < cfg.drift_share
        self.churning = rng.random() < cfg.churn_share
        self.fails_load = rng.random() < cfg.fail_load_share
        self.started_at = time.time()
        self.fd: int | None = None
        self.online = False
        self.next_report = time.monotonic() + rng.uniform(0, cfg.telemetry_interval_s)
        self.last_report = time.time()
        self.offline_until = 0.0
        self.next_churn = time.monotonic() + rng.uniform(0, cfg.churn_period_s)
        self.req_carry = 0.0
        self.req_seq = 0
        self.window_rows: dict[str, int] = {}
        self.window_start = time.time()
        self.report_seq = 0
        self.pending_labels: list[tuple[float, str, str]] = []
        # Deployment state, as the agent keeps it.
        self.applied_revision: int | None = None
        self.applied_digest: str | None = None
        self.last_seen_revision: int | None = None
        self.deployment: DesiredState | None = None
        self.allocation: Allocation | None = None
        self.last_error: dict[str, Any] | None = None
        self.fetching: dict[str, Any] | None = None  # revision being fetched
        self.client = self._make_client()

    # -- MQTT -------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgeloop-agent-{self.id}",
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        will = dumps({"device": self.id, "online": False, "reason": "lost"})
        client.will_set(self.topics.status, will, qos=1, retain=True)
        addr = BrokerAddress.parse(self.cfg.broker)
        if addr.username:
            client.username_pw_set(addr.username, addr.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def connect(self) -> None:
        addr = BrokerAddress.parse(self.cfg.broker)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        try:
            self.client.connect(
                addr.host,
                addr.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=True,
                properties=props,
            )
        except OSError:
            self.c.connect_failures += 1
            self.offline_until = time.monotonic() + 2.0

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.c.connect_failures += 1
            return
        self.online = True
        self.c.connected += 1
        client.subscribe(self.topics.desired, qos=1)
        self.publish_status()

    def _on_disconnect(self, *_: Any) -> None:
        self.online = False

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.desired:
            self.on_desired(msg.payload)
        elif self.fetching is not None and msg.topic in self.fetching["wanted"]:
            self.on_artifact(msg.topic, msg.payload)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.c.publish_errors += 1

    def status_document(self) -> dict[str, Any]:
        dep = self.deployment
        models = []
        if dep is not None:
            models = [
                {
                    "name": m.name,
                    "version": m.version,
                    "sha256": m.sha256,
                    "role": m.role,
                    "weight": m.weight,
                    "variant": m.variant,
                }
                for m in dep.models
            ]
        return {
            "device": self.id,
            "online": True,
            "state": "serving" if dep is not None else "no_model",
            "revision": dep.revision if dep is not None else None,
            "desired_revision": self.last_seen_revision,
            "models": models,
            "error": self.last_error,
            "last_update_error": self.last_error,
            "applied_revision": self.applied_revision,
            "desired_expired": bool(dep and dep.expires is not None and dep.expires <= time.time()),
            "allow_unsigned": False,
            "threads": [],
            "agent_version": __version__,
            "started_at": self.started_at,
            "ts": time.time(),
        }

    def publish_status(self) -> None:
        self.publish(self.topics.status, dumps(self.status_document()), retain=True)
        self.c.status += 1

    # -- desired state (the updater's checks, in the updater's order) ---------------------

    def _fail(self, code: str, message: str, revision: int | None) -> None:
        self.last_error = {
            "code": code,
            "message": message,
            "revision": revision,
            "ts": time.time(),
        }
        self.publish_status()

    def on_desired(self, raw: bytes) -> None:
        if not raw:
            return
        try:
            opened = open_envelope(raw, keys=self.keys, allow_unsigned=not self.keys)
            digest = hashlib.sha256(opened.payload).hexdigest()
            desired = DesiredState.from_payload(opened.payload)
        except DesiredStateError as exc:
            self.c.desired_refused += 1
            self._fail(exc.code, str(exc), None)
            return
        if desired.device != self.id:
            self.c.desired_refused += 1
            self._fail("desired_wrong_device", "desired state is for another device", None)
            return
        if self.applied_revision is not None:
            if desired.revision == self.applied_revision and digest == self.applied_digest:
                return  # a re-delivered copy
            if desired.revision <= self.applied_revision:
                self.c.desired_refused += 1
                self._fail("desired_replayed", "not newer than applied", desired.revision)
                return
        if desired.expires is not None and desired.expires <= time.time():
            self.c.desired_refused += 1
            self._fail("desired_expired", "expired", desired.revision)
            return
        self.last_seen_revision = desired.revision
        wanted = {}
        for m in desired.models:
            if self.deployment is not None and any(
                d.sha256 == m.sha256 for d in self.deployment.models
            ):
                continue  # already held: the agent reuses loaded models by sha256
            wanted[artifact_topic(self.cfg.prefix, m.name, m.version)] = m
        self.fetching = {
            "desired": desired,
            "digest": digest,
            "wanted": wanted,
            "t0": time.monotonic(),
        }
        for topic in wanted:
            self.client.subscribe(topic, qos=1)
        if not wanted:
            self._swap()

    def on_artifact(self, topic: str, data: bytes) -> None:
        assert self.fetching is not None
        entry = self.fetching["wanted"].pop(topic)
        self.client.unsubscribe(topic)
        self.c.artifacts_fetched += 1
        self.c.artifact_bytes += len(data)
        revision = self.fetching["desired"].revision
        if entry.size is None or len(data) != entry.size:
            self.fetching = None
            self._fail("artifact_size_mismatch", f"{entry.ref} size", revision)
            return
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            self.fetching = None
            self._fail("artifact_sha256_mismatch", f"{entry.ref} sha256", revision)
            return
        try:
            statement = artifact_statement(entry.name, entry.version, entry.sha256, entry.size)
            verify_any(statement, [(None, entry.signature or "")], self.keys)
        except SignatureError as exc:
            self.fetching = None
            self._fail("artifact_signature_invalid", str(exc), revision)
            return
        if not self.fetching["wanted"]:
            self._swap()

    def _swap(self) -> None:
        assert self.fetching is not None
        desired: DesiredState = self.fetching["desired"]
        t0 = self.fetching["t0"]
        digest = self.fetching["digest"]
        self.fetching = None
        if self.fails_load:
            self.c.load_failed += 1
            self._fail(
                "model_load_failed",
                "simulated: onnxruntime could not load the model",
                desired.revision,
            )
            return
        self.deployment = desired
        self.allocation = None
        alloc = desired.allocation
        if alloc:
            self.allocation = Allocation(alloc["experiment_id"], alloc["ranges"])
        self.applied_revision = desired.revision
        self.applied_digest = digest
        self.last_error = None
        self.c.desired_applied += 1
        self.c.swap_latency_s.append(time.monotonic() - t0)
        self.publish_status()

    # -- traffic and telemetry -------------------------------------------------------------

    def _route(self, key: str) -> str | None:
        dep = self.deployment
        if dep is None:
            return None
        if self.allocation is not None:
            return self.allocation.owner(bucket_of(self.allocation.experiment_id, key))
        serving = dep.serving
        if not serving:
            return None
        return self.rng.choices(serving, weights=[m.weight or 0.0001 for m in serving])[0].variant

    def simulate_requests(self, dt: float, now: float) -> None:
        self.req_carry += self.cfg.request_rate * dt
        n = int(self.req_carry)
        self.req_carry -= n
        dep = self.deployment
        for _ in range(n):
            self.req_seq += 1
            key = f"{self.id}-k{self.rng.randrange(1000)}"
            variant = self._route(key)
            if variant is None:
                self.metrics.record_request("-", None, error="no_model", predictions=0)
                continue
            self.metrics.record_request(variant, self.rng.lognormvariate(-7.5, 0.4))
            self.window_rows[variant] = self.window_rows.get(variant, 0) + 1
            # A/B: treatment "v2"-like variants (alphabetically later) are a bit better, so
            # an experiment has a known effect to find.
            variants = sorted(m.variant for m in dep.serving) if dep else []
            p_ok = 0.80 + (0.05 if variants and variant == variants[-1] else 0.0)
            self.metrics.record_classification(variant, self.rng.random() < p_ok)
            if self.rng.random() < self.cfg.capture_rate:
                self._capture(variant, now)
        while self.pending_labels and self.pending_labels[0][0] <= now:
            _, sample_id, variant = self.pending_labels.pop(0)
            record = {
                "sample_id": sample_id,
                "request_id": f"r{self.req_seq}",
                "device": self.id,
                "ts": time.time(),
                "label": self.rng.randrange(2),
                "variant": variant,
            }
            _, body = self.env.envelope(self.topics.labels, record, "label")
            self.publish(self.topics.labels, body)
            self.c.labels += 1

    def _drifting_now(self) -> bool:
        return self.drifting and time.time() - self.started_at >= self.cfg.drift_onset_s

    def _capture(self, variant: str, now: float) -> None:
        m = self._model_of(variant)
        shift = 3.0 if self._drifting_now() else 0.0
        features = {f: round(self.rng.gauss(shift, 1.0), 4) for f in self.cfg.features}
        sample_id = f"{self.id}:{self.env.boot_id}:s{self.req_seq}"
        record = {
            "sample_id": sample_id,
            "device": self.id,
            "ts": time.time(),
            "request_id": f"r{self.req_seq}",
            "model": m.name if m else None,
            "version": m.version if m else None,
            "variant": variant,
            "features": features,
            "prediction": self.rng.randrange(2),
            "label": None,
        }
        _, body = self.env.envelope(self.topics.samples, record, "sample")
        self.publish(self.topics.samples, body)
        self.c.samples += 1
        if self.rng.random() < self.cfg.label_rate:
            self.pending_labels.append((now + 2.0, sample_id, variant))

    def _model_of(self, variant: str) -> Any:
        dep = self.deployment
        if dep is None:
            return None
        for m in dep.models:
            if m.variant == variant:
                return m
        return None

    def _drift_window(self, variant: str, t_start: float, t_end: float) -> dict[str, Any]:
        drift = self._drifting_now()
        cols = []
        for i, name in enumerate(self.cfg.features):
            hit = drift and i < 3
            psi = 0.6 + self.rng.random() if hit else self.rng.uniform(0.0, 0.05)
            p = 1e-9 if hit else self.rng.uniform(0.2, 1.0)
            cols.append(
                ColumnDrift(
                    name=name,
                    n=500,
                    missing_rate=0.0,
                    reference_missing_rate=0.0,
                    psi=psi,
                    ks_d=0.3 if hit else 0.02,
                    ks_d_bound=0.06,
                    ks_p=p,
                    ks_p_adjusted=p,
                    drift=hit,
                    reasons=("psi", "ks") if hit else (),
                )
            )
        report = DriftReport(
            window_kind="count",
            start=0.0,
            end=500.0,
            n_rows=500,
            enough_data=True,
            features=tuple(cols),
            output=None,
            dataset_drift=drift,
            ks_mode="binned",
            correction="holm",
            alpha=0.01,
            psi_threshold=0.2,
            missing_rate_delta=None,
            min_samples=200,
        )
        doc = report.to_dict()
        m = self._model_of(variant)
        doc.update(variant=variant, version=m.version if m else None, t_start=t_start, t_end=t_end)
        return doc

    def report(self) -> None:
        now = time.time()
        self.report_seq += 1
        dep = self.deployment
        snapshot = self.metrics.snapshot(reset=True)
        # Like the agent's count windows: a window is reported when it is full, so most
        # reports carry none.
        windows = []
        for variant, rows in list(self.window_rows.items()):
            if rows >= self.cfg.drift_window_rows and self._model_of(variant) is not None:
                windows.append(self._drift_window(variant, self.window_start, now))
                self.window_rows[variant] = 0
                self.window_start = now
        doc = {
            "report_id": f"{self.id}:{self.env.boot_id}:r{self.report_seq}",
            "device": self.id,
            "ts": now,
            "interval_s": now - self.last_report,
            "agent_version": __version__,
            "revision": dep.revision if dep else None,
            "experiment": dep.experiment if dep else None,
            "variants": {
                m.variant: {
                    "name": m.name,
                    "version": m.version,
                    "role": m.role,
                    "sha256": m.sha256,
                    "drift_monitoring": "on",
                }
                for m in (dep.models if dep else ())
            },
            "metrics": snapshot,
            "drift": windows,
            "drift_windows_dropped": 0,
            "concept_drift": {},
            "feedback": {},
            "capture": {"rate": self.cfg.capture_rate, "captured": self.c.samples, "failures": 0},
            "outbox": {"depth": 0, "bytes": 0, "dropped": 0},
            "process": {
                "rss_bytes": 70_000_000,
                "peak_rss_bytes": 80_000_000,
                "cpu_percent": 3.0,
                "cpu_seconds": now - self.started_at,
            },
        }
        self.last_report = now
        _, body = self.env.envelope(self.topics.telemetry, doc, "report")
        self.publish(self.topics.telemetry, body)
        self.c.reports += 1

    def drop(self) -> None:
        """Lose the connection without DISCONNECT: the broker publishes the Last Will."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.c.churn_drops += 1

    def tick(self, mono: float, dt: float) -> None:
        if not self.online:
            return
        self.simulate_requests(dt, mono)
        if mono >= self.next_report:
            self.next_report = mono + self.cfg.telemetry_interval_s
            self.report()
        if self.churning and mono >= self.next_churn:
            self.next_churn = mono + self.cfg.churn_period_s
            self.offline_until = mono + self.cfg.churn_offline_s
            self.drop()


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(want, soft), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_worker(device_ids: list[str], cfg: SimConfig, duration_s: float, seed: int) -> dict:
    raise_fd_limit(len(device_ids) + 256)
    rng = random.Random(seed)
    keys = load_public_keys(cfg.trusted_keys) if cfg.trusted_keys else []
    counters = Counters()
    devices = [
        VirtualDevice(d, cfg, keys, random.Random(f"{seed}:{d}"), counters) for d in device_ids
    ]
    del rng
    poller = select.poll()
    by_fd: dict[int, VirtualDevice] = {}
    start = time.monotonic()
    end = start + duration_s
    to_connect = list(devices)
    connect_budget = 0.0
    last = start
    last_misc = start
    loop_time = 0.0
    loops = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        dt = now - last
        last = now
        # Ramp connections up at connect_rate so the broker's accept queue is not flooded.
        connect_budget = min(connect_budget + dt * cfg.connect_rate, cfg.connect_rate)
        while to_connect and connect_budget >= 1:
            connect_budget -= 1
            to_connect.pop().connect()
        t0 = time.monotonic()
        for dev in devices:
            _service(dev, now, dt, poller, by_fd, to_connect)
        _read_ready(poller, by_fd)
        if now - last_misc >= 1.0:
            last_misc = now
            if cfg.stop_file and os.path.exists(cfg.stop_file):
                break
            for dev in devices:
                if dev.client.socket() is not None:
                    dev.client.loop_misc()
        loop_time += time.monotonic() - t0
        loops += 1
    _stop(devices)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = counters.to_dict()
    out.update(
        devices=len(devices),
        online_at_end=sum(1 for d in devices if d.online),
        cpu_s=usage.ru_utime + usage.ru_stime,
        # ru_maxrss survives exec, so a spawned worker would report its parent's peak.
        rss_mb=_vm_rss_mb(),
        loops=loops,
        mean_loop_ms=1000 * loop_time / max(loops, 1),
    )
    return out


def _service(
    dev: VirtualDevice,
    now: float,
    dt: float,
    poller: select.poll,
    by_fd: dict[int, VirtualDevice],
    to_connect: list[VirtualDevice],
) -> None:
    """One device's turn of the loop: follow its socket, reconnect it after a pause
    offline, let it simulate and write what it queued."""
    sock = dev.client.socket()
    fd = sock.fileno() if sock is not None else None
    if fd != dev.fd:
        if dev.fd is not None and by_fd.get(dev.fd) is dev:
            poller.unregister(dev.fd)
            del by_fd[dev.fd]
        if fd is not None and fd >= 0:
            poller.register(fd, select.POLLIN)
            by_fd[fd] = dev
        dev.fd = fd
    if sock is None:
        if dev.offline_until and now >= dev.offline_until and dev not in to_connect:
            dev.offline_until = 0.0
            dev.online = False
            try:
                dev.client.reconnect()
            except OSError:
                dev.offline_until = now + 2.0
        return
    dev.tick(now, dt)
    if dev.client.want_write():
        dev.client.loop_write()


def _read_ready(poller: select.poll, by_fd: dict[int, VirtualDevice]) -> None:
    for fd, _ev in poller.poll(50):
        dev = by_fd.get(fd)
        if dev is not None:
            rc = dev.client.loop_read(max_packets=100)
            if rc != mqtt.MQTT_ERR_SUCCESS and not dev.offline_until:
                dev.offline_until = time.monotonic() + 2.0  # reconnect after a pause


def _stop(devices: list[VirtualDevice]) -> None:
    """Clean shutdown: a last status "stopped" like a stopping agent, then DISCONNECT."""
    for dev in devices:
        if dev.online:
            dev.publish(
                dev.topics.status,
                dumps({"device": dev.id, "online": False, "reason": "stopped"}),
                retain=True,
            )
            dev.client.loop_write()
            dev.client.disconnect()
            dev.client.loop_write()


def _worker_entry(args: tuple[list[str], SimConfig, float, int], queue: Any) -> None:
    queue.put(run_worker(*args))


def run_fleet(
    cfg: SimConfig, n_devices: int, procs: int, duration_s: float, *, id_prefix: str = "sim"
) -> list[dict[str, Any]]:
    """Start ``procs`` worker processes for ``n_devices`` devices; return their counters."""
    ids = [f"{id_prefix}-{i:05d}" for i in range(n_devices)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = []
    for p in range(procs):
        share = ids[p::procs]
        if not share:
            continue
        w = ctx.Process(
            target=_worker_entry, args=((share, cfg, duration_s, cfg.seed * 1000 + p), queue)
        )
        w.start()
        workers.append(w)
    results = [queue.get(timeout=duration_s + 120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--prefix", default="edgeloop")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--id-prefix", default="sim")
    ap.add_argument("--telemetry-interval", type=float, default=10.0)
    ap.add_argument("--request-rate", type=float, default=1.0)
    ap.add_argument("--capture-rate", type=float, default=0.01)
    ap.add_argument("--drift-share", type=float, default=0.0)
    ap.add_argument("--drift-onset", type=float, default=0.0)
    ap.add_argument("--churn-share", type=float, default=0.0)
    ap.add_argument("--churn-period", type=float, default=60.0)
    ap.add_argument("--churn-offline", type=float, default=10.0)
    ap.add_argument("--fail-load-share", type=float, default=0.0)
    ap.add_argument("--drift-window-rows", type=int, default=1000)
    ap.add_argument("--connect-rate", type=float, default=400.0)
    ap.add_argument("--trusted-key", action="append", default=[])
    ap.add_argument("--features", default=",".join(DEFAULT_FEATURES))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = SimConfig(
        broker=a.broker,
        prefix=a.prefix,
        telemetry_interval_s=a.telemetry_interval,
        request_rate=a.request_rate,
        capture_rate=a.capture_rate,
        drift_share=a.drift_share,
        drift_onset_s=a.drift_onset,
        churn_share=a.churn_share,
        churn_period_s=a.churn_period,
        churn_offline_s=a.churn_offline,
        fail_load_share=a.fail_load_share,
        drift_window_rows=a.drift_window_rows,
        connect_rate=a.connect_rate,
        trusted_keys=tuple(a.trusted_key),
        features=tuple(f for f in a.features.split(",") if f),
        seed=a.seed,
    )
    for result in run_fleet(cfg, a.devices, a.procs, a.duration, id_prefix=a.id_prefix):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
