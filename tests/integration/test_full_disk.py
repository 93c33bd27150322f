"""The real agent on a real 3 MB state filesystem that fills up or turns read-only.

Each test mounts its own tmpfs for the agent's state directory (skipped, with the reason,
where mounting is impossible) and runs the installed `edgeloop-agent` against the test's
Mosquitto, with a notify socket standing in for systemd's.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.models import sample_features, sensor_model
from tests.integration.test_agent_e2e import publish_deployment, wait_status
from tests.integration.test_systemd import NotifyListener
from tests.mqtt_helpers import AgentProcess, Probe
from tests.tmpfs import fill, remount, tmpfs

DEVICE = "disk-1"
FAST = ["--telemetry-interval", "0.5", "--capture-rate", "1.0"]
STATUS = f"edgeloop/{DEVICE}/status"


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "3m") as mnt:
        yield mnt


def start(broker, agents, state: Path, env: dict[str, str] | None = None) -> AgentProcess:
    agent = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=state, extra=FAST, env=env
    )
    # The log goes next to the mount point, not on the filesystem the test fills.
    agent.log_path = state.parent.parent / f"agent-{len(agents)}.log"
    agent.start()
    agents.append(agent)
    return agent


def ask(probe: Probe, rid: str, features: dict, reply: str = "app/replies") -> dict:
    probe.publish(
        f"edgeloop/{DEVICE}/predict", {"id": rid, "features": features}, response_topic=reply
    )
    while True:
        body = json.loads(probe.next(15, topic=reply).payload)
        if body.get("id") == rid:
            return body


def storage_is(state: str, storage: str = "disk"):
    return lambda s: (
        (s.get("storage") or {}).get("state") == state and s["storage"]["storage"] == storage
    )


class Delivered:
    """The control node's view: every envelope the agent delivers, kept by topic kind."""

    def __init__(self, url: str) -> None:
        self.probe = Probe(url)
        for topic in ("telemetry", "samples", "labels"):
            self.probe.subscribe(f"edgeloop/{DEVICE}/{topic}")
        self.samples: set[str] = set()
        self.labels: set[str] = set()
        self.reports: list[dict] = []

    def until(self, predicate, timeout: float) -> dict:
        """Read (keeping everything) until a telemetry report satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.probe.next(max(0.1, deadline - time.monotonic()))
            except (TimeoutError, queue.Empty):
                break
            payload = json.loads(msg.payload)["payload"]
            kind = msg.topic.rsplit("/", 1)[1]
            if kind == "samples":
                self.samples.add(payload["request_id"])
            elif kind == "labels":
                self.labels.add(payload["request_id"])
            else:
                self.reports.append(payload)
                if predicate(payload):
                    return payload
        raise TimeoutError(f"no matching report in {timeout} s (last: {self.reports[-1:]})")

    def close(self) -> None:
        self.probe.close()


class WalWatch:
    """Samples the size of the outbox's WAL file while the test runs."""

    def __init__(self, path: Path) -> None:
        self.path, self.max = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.max = max(self.max, os.path.getsize(self.path))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.max


def test_full_disk_keeps_serving_reports_drops_and_recovers_without_restart(
    broker, probe, agents, tmp_path, fs
):
    probe.subscribe(STATUS)
    app = Probe(broker.url)
    app.subscribe("app/replies")
    sub = Delivered(broker.url)
    with NotifyListener(tmp_path / "notify.sock") as pid1:
        state = fs / "state"
        start(broker, agents, state, env={"NOTIFY_SOCKET": str(pid1.path)})
        model = sensor_model("v1")
        publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
        wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
        wal = WalWatch(state / "outbox.sqlite-wal")
        features = sample_features(1)[0]

        fill(fs / "filler")  # someone else's file takes the whole filesystem
        full = wait_status(probe, DEVICE, storage_is("disk_full"), timeout=15)
        assert full["state"] == "serving" and full["revision"] == 1
        pid1.wait_for(lambda n: "state filesystem full" in n.fields.get("STATUS", ""), 15)

        # Serving goes on: every request is answered, every label accepted by the agent.
        ids = [f"r-{i}" for i in range(150)]
        for rid in ids:
            assert ask(app, rid, features)["version"] == "v1"
            app.publish(f"edgeloop/{DEVICE}/feedback", {"id": rid, "label": 1})
        # Telemetry keeps flowing on the full disk, with the drops by kind.
        report = sub.until(lambda r: r["outbox"]["disk"]["state"] == "disk_full", 20)
        assert set(report["dropped"]) == {
            "telemetry",
            "samples",
            "labels",
            "events",
            "drift_windows",
        }

        # Space comes back: no restart, the state lifts, delivery and status recover.
        (fs / "filler").unlink()
        wait_status(probe, DEVICE, storage_is("ok"), timeout=15)
        pid1.wait_for(
            lambda n: (
                n.fields.get("STATUS", "").startswith("serving revision 1")
                and "state filesystem" not in n.fields["STATUS"]
                and n.at > time.monotonic() - 10
            ),
            15,
        )
        # Let the outbox drain, then account for every sample and label: delivered or
        # reported dropped, none vanished.
        last = sub.until(
            lambda r: r["outbox"]["disk"]["state"] == "ok" and r["outbox"]["depth"] <= 2, 30
        )
        samples, labels = sub.samples, sub.labels
        assert last is not None, "no telemetry after space returned"
        assert last["outbox"]["disk"]["state"] == "ok"
        dropped = last["dropped"]
        got_s, got_l = len(samples & set(ids)), len(labels & set(ids))
        assert got_s + dropped["samples"] >= len(ids), (got_s, dropped)
        assert got_l + dropped["labels"] >= len(ids), (got_l, dropped)
        assert last["outbox"]["depth"] <= 2  # the backlog was delivered
        wal_max = wal.stop()
    app.close()
    sub.close()
    assert wal_max <= 300 * 1024, f"the WAL reached {wal_max} bytes"


def test_restart_on_a_full_disk_serves_the_last_good_model(broker, probe, agents, tmp_path, fs):
    probe.subscribe(STATUS)
    probe.subscribe("app/replies")
    state = fs / "state"
    agent = start(broker, agents, state)
    model = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    assert agent.stop() == 0
    fill(fs / "filler")
    with NotifyListener(tmp_path / "notify.sock") as pid1:
        again = start(broker, agents, state, env={"NOTIFY_SOCKET": str(pid1.path)})
        status = wait_status(
            probe, DEVICE, lambda s: s.get("online") and s.get("revision") == 1, timeout=20
        )
        assert again.alive(), again.log()[-2000:]
        assert status["storage"]["state"] == "disk_full"
        assert ask(probe, "after-restart", sample_features(1)[0])["version"] == "v1"
        # systemd hears it with READY=1: a full disk is not a crash loop, and says so.
        ready = pid1.wait_for(lambda n: "READY" in n.fields, 20)
        assert ready.fields["STATUS"].startswith("serving, connected (state filesystem full")


def test_model_swap_on_a_full_disk_is_refused_and_later_deploys_apply(broker, probe, agents, fs):
    probe.subscribe(STATUS)
    probe.subscribe("app/replies")
    start(broker, agents, fs / "state")
    v1, v2 = sensor_model("v1"), sensor_model("v2")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    fill(fs / "filler")
    publish_deployment(probe, DEVICE, 2, [(v2, v2.entry())])
    failed = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 2)
    assert failed["error"]["code"] == "disk_full" and failed["revision"] == 1
    assert ask(probe, "still-v1", sample_features(1)[0])["version"] == "v1"
    (fs / "filler").unlink()
    publish_deployment(probe, DEVICE, 3, [(v2, v2.entry())])
    done = wait_status(probe, DEVICE, lambda s: s.get("revision") == 3)
    assert done["error"] is None
    assert ask(probe, "now-v2", sample_features(1)[0])["version"] == "v2"


def test_read_only_state_disk_serves_reports_and_moves_back_to_disk(broker, probe, agents, fs):
    probe.subscribe(STATUS)
    probe.subscribe("app/replies")
    probe.subscribe(f"edgeloop/{DEVICE}/telemetry")
    state = fs / "state"
    agent = start(broker, agents, state)
    model = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    assert agent.stop() == 0
    remount(fs, "ro")
    try:
        again = start(broker, agents, state)
        status = wait_status(probe, DEVICE, storage_is("read_only", "memory"), timeout=20)
        assert status["revision"] == 1, again.log()[-2000:]
        assert ask(probe, "on-ro", sample_features(1)[0])["version"] == "v1"
        # Telemetry still reaches the control node, from the in-memory outbox.
        probe.wait_for(
            f"edgeloop/{DEVICE}/telemetry",
            lambda e: e["payload"]["outbox"]["disk"]["state"] == "read_only",
            timeout=15,
        )
    finally:
        remount(fs, "rw")
    wait_status(probe, DEVICE, storage_is("ok", "disk"), timeout=15)
    assert (state / "outbox.sqlite").exists()
