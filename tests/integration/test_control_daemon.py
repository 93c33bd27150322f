"""The control daemon ingests the fleet idempotently and survives kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sample_features, sensor_model
from tests.integration.test_agent_e2e import wait_status
from tests.mqtt_helpers import AgentProcess

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
DEVICE = "ctl-1"


def start_daemon(ws: Workspace, broker_url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    before = log.read_text().count("control daemon connected") if log.exists() else 0
    proc = subprocess.Popen(
        [EDGELOOP, "-w", str(ws.root), "--broker", broker_url, "serve", "--tick", "0.5"],
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, before


def wait_connected(log: Path, before: int, timeout: float = 30) -> None:
    # Until its first connection the daemon has no session at the broker, so
    # nothing published earlier can reach it (later, its session queues for it).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("control daemon connected") > before:
            return
        time.sleep(0.1)
    raise TimeoutError("control daemon did not connect")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    # No retraining during this test: it is about ingestion.
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[retrain]\nenabled = false\n")
    Registry.for_workspace(ws).register("sensor", sensor_model("v1").data, {"algorithm": "logreg"})
    return Workspace.open(ws.root)


def test_daemon_ingests_everything_once_across_a_kill_9(workspace, broker, probe, agents, tmp_path):
    ws = workspace
    log = tmp_path / "control.log"
    daemon, before = start_daemon(ws, broker.url, log)
    wait_connected(log, before)
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("replies/#")
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=[
            "--trusted-key",
            str(ws.public_key_path),
            "--telemetry-interval",
            "0.5",
            "--capture-rate",
            "1.0",
            "--drift-window",
            "200",
        ],
    ).start()
    agents.append(agent)
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url}
    out = subprocess.run(
        [EDGELOOP, "deploy", "sensor@v1", "--new-device", "--device", DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)

    features = sample_features(1)[0]
    sent = 0

    def burst(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            rid = f"q{sent}"
            probe.publish(
                f"edgeloop/{DEVICE}/predict",
                {"id": rid, "features": features},
                response_topic="replies/q",
            )
            probe.publish(f"edgeloop/{DEVICE}/feedback", {"id": rid, "label": sent % 2})
            sent += 1
            time.sleep(0.004)

    burst(150)
    time.sleep(0.3)
    daemon.send_signal(signal.SIGKILL)  # mid-stream, no chance to flush or ack
    daemon.wait()
    burst(150)  # telemetry and samples queue at the broker for the daemon's session
    daemon, _ = start_daemon(ws, broker.url, log)
    burst(100)
    assert agent.stop() == 0  # last report and outbox flushed
    db = ControlDB(ws.control_db)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            requests = db.conn.execute(
                "SELECT COALESCE(SUM(requests), 0) FROM variant_stats WHERE device = ?", (DEVICE,)
            ).fetchone()[0]
            if requests >= sent:
                break
            time.sleep(0.5)
        time.sleep(3)  # anything still in flight would now double count
        requests, labelled = db.conn.execute(
            "SELECT SUM(requests), SUM(cls_n) FROM variant_stats WHERE device = ?", (DEVICE,)
        ).fetchone()
        assert requests == sent, f"lost or double-counted requests: {requests} != {sent}"
        assert labelled == sent
        device = db.device(DEVICE)
        assert device["status"]["online"] is False and device["status"]["reason"] == "stopped"
        assert device["telemetry"]["rss_bytes"] > 0
        # The inventory holds the drift verdict of the newest window per variant.
        assert isinstance(device["drift"]["sensor@v1"]["data_drift"], bool)
        # The model is calibrated at training, so each window carries the agent's
        # label-free estimate of its accuracy (docs/drift.md, "Performance estimation").
        docs = [json.loads(r[0]) for r in db.conn.execute("SELECT doc FROM drift_windows")]
        assert docs and all(d["estimated"]["n"] == 200 for d in docs)
        assert all(0.0 <= d["estimated"]["value"] <= 1.0 for d in docs)
        kinds = [e["kind"] for e in db.events(limit=1000)]
        assert "deploy" in kinds and "device" in kinds
    finally:
        db.close()
        daemon.terminate()
        daemon.wait(20)
    fleet = json.loads(
        subprocess.run(
            [EDGELOOP, "-w", str(ws.root), "--broker", broker.url, "fleet", "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    [row] = fleet
    # Depth as of the last report, made just before the final flush.
    assert row["rss_mb"] > 10 and row["outbox_depth"] >= 0 and isinstance(row["drifting"], list)
    frame = FeatureStore(ws.feature_store_dir).captured_training_frame("sensor")
    assert len(frame) == sent, "every captured sample (all labelled) is in the feature store once"
    assert frame["sample_id"].is_unique
    assert sorted(frame["request_id"]) == sorted(f"q{i}" for i in range(sent))
