"""Staged rollout end to end: a real broker, three real agents, real models from a
real registry, and the real control daemon (in a thread) or the real CLI driving it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.daemon.service import ControlDaemon
from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.fleet.inventory import register
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import connected
from edgeloop_control.infra.signing import DesiredSigner, open_desired
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout import RolloutConfig, RolloutManager
from edgeloop_control.registry import Registry
from tests.control.test_rollout import build_template, copy_workspace
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import AgentProcess, Probe

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
DEVICES = ["a", "b", "c"]
# Short soak, generous latency gate: a loaded CI box must not fail a healthy rollout.
CONFIG = RolloutConfig(soak_s=1.0, batch_timeout_s=45.0, max_p99_ms=1000.0)


class Watch:
    """The latest retained status of every device, and every fresh desired document.

    One probe, many devices: waiting for one device must not throw the others'
    messages away (``Probe.wait_for`` skips them).
    """

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.status: dict[str, dict[str, Any]] = {}
        self.desired: list[tuple[str, int]] = []
        probe.subscribe("edgeloop/+/status")
        probe.subscribe("edgeloop/+/desired")

    def pump(self) -> None:
        while True:
            try:
                msg = self.probe.messages.get_nowait()
            except queue.Empty:
                return
            parts = msg.topic.split("/")
            if parts[-1] == "status" and msg.payload:
                self.status[parts[1]] = json.loads(msg.payload)
            elif parts[-1] == "desired" and msg.payload and not msg.retain:
                self.desired.append((parts[1], open_desired(msg.payload)["revision"]))

    def wait(
        self, devices: list[str], predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if all(predicate(self.status.get(d) or {}) for d in devices):
                return
            if time.monotonic() > deadline:
                seen = {d: self.status.get(d) for d in devices}
                raise AssertionError(f"devices {devices} not there in {timeout} s: {seen}")
            time.sleep(0.05)


@pytest.fixture
def watch(probe: Probe) -> Watch:
    return Watch(probe)


def broken_model() -> bytes:
    """Valid ONNX whose edgeloop metadata declares an input the graph lacks."""
    import onnx

    model = onnx.load_from_string(sensor_model("v1", algo="logreg").data)
    for prop in model.metadata_props:
        if prop.key == "edgeloop":
            meta = json.loads(prop.value)
            meta["inputs"][0]["name"] = "no_such_input"
            prop.value = json.dumps(meta)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_template(tmp_path_factory.mktemp("rollout-e2e"))
    Registry.for_workspace(Workspace.open(root)).register(
        "sensor", broken_model(), {"broken": True}
    )
    return root


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    return copy_workspace(template, tmp_path / "ws")


def start_agent(
    ws: Workspace, broker_url: str, tmp_path: Path, device: str, *extra: str
) -> AgentProcess:
    return AgentProcess(
        broker_url=broker_url,
        device_id=device,
        state_dir=tmp_path / f"state-{device}",
        extra=["--trusted-key", str(ws.public_key_path), "--telemetry-interval", "0.5", *extra],
    ).start()


@pytest.fixture
def fleet(ws, broker, watch, agents, tmp_path) -> Callable[..., dict[str, AgentProcess]]:
    """Start three agents serving sensor@v1 at revision 1, deployed as `edgeloop deploy` does.

    ``small``: devices with a tighter artifact budget than sensor@v2 needs (sensor@v1
    fits), a realistic way for one device of a fleet to refuse a version the others load.
    """

    def start(small: tuple[str, ...] = ()) -> dict[str, AgentProcess]:
        config = tmp_path / "small.toml"
        config.write_text("max_artifact_bytes = 100000\n")
        procs = {
            d: start_agent(
                ws, broker.url, tmp_path, d, *(["--config", str(config)] if d in small else [])
            )
            for d in DEVICES
        }
        agents.extend(procs.values())
        registry = Registry.for_workspace(ws, create=False)
        v1 = registry.get("sensor@v1")
        assert v1.size < 100_000 < registry.get("sensor@v2").size
        db = ControlDB(ws.control_db)
        try:
            register(db, DEVICES, source="test")  # as `edgeloop deploy --new-device` does
            with connected(broker.url) as client:
                desired = DesiredState(db, client, ws.topic_prefix, DesiredSigner.for_workspace(ws))
                desired.publish_artifact(v1, registry.artifact_bytes(v1))
                for device in DEVICES:
                    desired.publish(device, desired.plan(device, [(v1, 100.0)], []))
        finally:
            db.close()
        watch.wait(DEVICES, lambda s: s.get("revision") == 1, timeout=60)
        return procs

    return start


class DaemonThread:
    """The real control daemon, in-process, with the rollout manager as its policy.

    Built on its own thread: the daemon opens its SQLite connection in its
    constructor, and sqlite3 connections belong to the thread that made them.
    """

    def __init__(self, ws: Workspace, broker_url: str) -> None:
        self.ws = ws
        self.broker_url = broker_url
        self.ready = threading.Event()
        self.daemon: ControlDaemon | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.daemon = ControlDaemon(self.ws, self.broker_url, tick_s=0.5)
        manager = RolloutManager(self.ws, self.daemon.db, self.daemon.publisher, config=CONFIG)
        self.daemon.policies = [manager]
        self.ready.set()
        self.daemon.run(install_signals=False)

    def start(self) -> DaemonThread:
        self.thread.start()
        assert self.ready.wait(10) and self.daemon is not None
        assert self.daemon.connected.wait(10), "control daemon did not connect"
        return self

    def stop(self) -> None:
        assert self.daemon is not None
        self.daemon.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def daemons() -> Iterator[list[DaemonThread]]:
    started: list[DaemonThread] = []
    yield started
    for d in started:
        if d.thread.is_alive():
            d.stop()


class Traffic:
    """Predict requests to every device while the rollout runs, so the gates see data."""

    def __init__(self, broker_url: str) -> None:
        self.probe = Probe(broker_url)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        rows = sample_features(20)
        while not self.stop_event.wait(0.05):
            for device in DEVICES:
                self.probe.client.publish(
                    f"edgeloop/{device}/predict",
                    json.dumps({"id": f"t{self.sent}", "features": rows[self.sent % len(rows)]}),
                    qos=1,
                )
                self.sent += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.probe.close()


def status_of(ws: Workspace, rollout_id: str) -> dict[str, Any]:
    db = ControlDB(ws.control_db)
    try:
        return RolloutManager(ws, db, None, config=CONFIG).status(rollout_id)[0]
    finally:
        db.close()


def wait_rollout(
    ws: Workspace, rollout_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = status_of(ws, rollout_id)
        if done(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(
                f"rollout {rollout_id} not there in {timeout} s: {json.dumps(info, indent=1)}"
            )
        time.sleep(0.2)


def steps(ws: Workspace, rollout_id: str) -> list[str]:
    db = ControlDB(ws.control_db)
    try:
        return [
            e["data"]["step"]
            for e in db.events(limit=100_000)
            if e["kind"].startswith("rollout_") and e["subject"] == rollout_id
        ]
    finally:
        db.close()


def serving(status: dict[str, Any], version: str, revision: int) -> bool:
    return status.get("revision") == revision and [
        m["variant"] for m in status.get("models", [])
    ] == [f"sensor@{version}"]


def cli(ws: Workspace, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGELOOP_WORKSPACE": str(ws.root),
        "EDGELOOP_BROKER": broker_url,
        "COLUMNS": "160",
    }
    return subprocess.run([EDGELOOP, *args], capture_output=True, text=True, env=env, timeout=120)


# -- (1) the happy path, started from the CLI, driven by the daemon ------------------------------


def test_staged_rollout_v1_to_v2(ws, broker, watch, fleet, daemons) -> None:
    fleet()
    daemons.append(DaemonThread(ws, broker.url).start())
    with Traffic(broker.url):
        out = cli(
            ws,
            broker.url,
            "rollout",
            "sensor@v2",
            "--canary",
            "34%",
            "--step",
            "34%",
            "--gate",
            "p99_ms=1000",
            "--gate",
            "soak_s=1",
            "--timeout",
            "45",
            "--reason",
            "v2 won its A/B test",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        rid = json.loads(out.stdout)["id"]
        info = wait_rollout(ws, rid, lambda s: s["state"] != "running")
    assert info["state"] == "completed", info
    assert [[d["device"] for d in b["devices"]] for b in info["batches"]] == [["a", "b"], ["c"]]
    watch.wait(DEVICES, lambda s: serving(s, "v2", 2), timeout=10)
    assert steps(ws, rid) == [
        "started",
        "artifact_published",
        "batch_published",
        "device_loaded",
        "device_loaded",
        "batch_passed",
        "batch_published",
        "device_loaded",
        "batch_passed",
        "completed",
    ]
    # The gates judged real traffic on the new version.
    health = [d["health"] for b in info["batches"] for d in b["devices"]]
    assert all(h["requests"] > 0 and h["errors"] == 0 and h["p99_ms"] > 0 for h in health)
    # The canary passed before the next batch was published.
    first, second = info["batches"]
    assert first["passed_at"] <= second["started_at"]

    out = cli(ws, broker.url, "rollout", "status", rid, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["devices_loaded"] == 3
    out = cli(ws, broker.url, "rollout", "status", rid)
    assert "completed" in out.stdout and "3/3 devices loaded" in out.stdout


# -- (2) one device cannot load the target: automatic rollback ------------------------------------


def test_failed_load_on_one_device_rolls_back_everyone(ws, broker, watch, fleet, daemons) -> None:
    fleet(small=("c",))
    daemons.append(DaemonThread(ws, broker.url).start())
    db = ControlDB(ws.control_db)
    try:
        rid = RolloutManager(ws, db, None, config=CONFIG).start(
            "sensor@v2", devices=DEVICES, canary=0.34, step=0.34
        )["id"]
    finally:
        db.close()
    info = wait_rollout(ws, rid, lambda s: s["state"] in ("completed", "rolled_back"))
    assert info["state"] == "rolled_back", info
    assert "c could not load sensor@v2: artifact_too_large" in info["failure"]
    assert [b["state"] for b in info["batches"]] == ["passed", "failed"]
    # Every switched device, the canaries that had loaded v2 included, is back on v1
    # under a new, higher revision.
    watch.wait(DEVICES, lambda s: serving(s, "v1", 3) and s.get("error") is None, timeout=30)
    assert steps(ws, rid)[-3:] == ["batch_failed", "rolling_back", "rolled_back"]
    db = ControlDB(ws.control_db)
    try:
        assert [db.desired(d)[0] for d in DEVICES] == [3, 3, 3]
    finally:
        db.close()


# -- (3) the control daemon stops mid-rollout; a new one resumes ---------------------------------


def test_daemon_restart_resumes_without_republishing(ws, broker, watch, fleet, daemons) -> None:
    fleet()
    watch.desired.clear()  # the fleet's own first deployment
    first = DaemonThread(ws, broker.url).start()
    daemons.append(first)
    db = ControlDB(ws.control_db)
    try:
        rid = RolloutManager(ws, db, None, config=CONFIG).start(
            "sensor@v2", canary=0.34, step=0.34
        )["id"]
    finally:
        db.close()
    wait_rollout(ws, rid, lambda s: s["batches"][0]["published_at"] is not None, timeout=20)
    first.stop()  # mid-batch: published, not yet judged
    assert status_of(ws, rid)["state"] == "running"
    # Meanwhile the canaries take the retained desired state without the control node.
    watch.wait(["a", "b"], lambda s: serving(s, "v2", 2), timeout=30)

    daemons.append(DaemonThread(ws, broker.url).start())
    info = wait_rollout(ws, rid, lambda s: s["state"] != "running")
    assert info["state"] == "completed", info
    watch.wait(["c"], lambda s: serving(s, "v2", 2), timeout=10)
    # Each device was sent revision 2 exactly once, by whichever daemon reached its batch.
    assert sorted(watch.desired) == [("a", 2), ("b", 2), ("c", 2)]
    assert steps(ws, rid).count("batch_published") == 2


# -- (4) a device offline during the rollout gets the version when it returns ---------------------


def test_offline_device_gets_the_version_on_return(
    ws, broker, watch, fleet, daemons, agents, tmp_path
) -> None:
    procs = fleet()
    assert procs["b"].stop() == 0  # a clean shutdown: status says offline, "stopped"
    watch.wait(["b"], lambda s: s.get("online") is False, timeout=10)
    daemons.append(DaemonThread(ws, broker.url).start())
    db = ControlDB(ws.control_db)
    try:
        for device in DEVICES:
            db.upsert_device(device, groups=["line-1"])
        time.sleep(1.0)  # the daemon ingests b's offline status
        rid = RolloutManager(ws, db, None, config=CONFIG).start(
            "sensor@v2", group="line-1", canary=0.34, step=0.34
        )["id"]
    finally:
        db.close()
    info = wait_rollout(ws, rid, lambda s: s["state"] != "running")
    assert info["state"] == "completed", info
    # Online devices first: the canary can answer; b is not waited for.
    assert [[d["device"] for d in b["devices"]] for b in info["batches"]] == [["a", "c"], ["b"]]
    assert {d["device"]: d["state"] for b in info["batches"] for d in b["devices"]} == {
        "a": "loaded",
        "c": "loaded",
        "b": "offline",
    }
    assert steps(ws, rid)[-1] == "completed"
    # b comes back, finds its retained desired state and loads v2.
    agents.append(start_agent(ws, broker.url, tmp_path, "b"))
    watch.wait(["b"], lambda s: serving(s, "v2", 2), timeout=30)
    wait_rollout(ws, rid, lambda s: s["devices_loaded"] == 3, timeout=10)


# -- (5) the CLI drives a rollout itself (--wait, no daemon); a broken model fails the canary


def test_cli_wait_rolls_back_a_model_that_fails_to_load(ws, broker, watch, fleet) -> None:
    fleet()
    out = cli(
        ws,
        broker.url,
        "rollout",
        "start",
        "sensor@v3",
        "--device",
        "a",
        "--device",
        "b",
        "--canary",
        "50%",
        "--gate",
        "soak_s=1",
        "--timeout",
        "30",
        "--wait",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "rolled back: batch 1: a could not load sensor@v3: model_load_failed" in out.stderr
    assert 'metadata input "no_such_input" is not a graph input' in out.stderr
    watch.wait(["a"], lambda s: serving(s, "v1", 3) and s.get("error") is None, timeout=30)
    db = ControlDB(ws.control_db)
    try:
        assert db.desired("b")[0] == 1  # never reached: untouched
    finally:
        db.close()
