# ruff: noqa: F811 - pytest fixtures are imported by name and received as parameters
"""Faults the A/B loop must survive: labels that never arrive; a broker restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace
from tests.integration.test_experiment_e2e import (  # noqa: F401 - fixtures
    DEVICES,
    ON_DEVICES,
    App,
    Fleet,
    cli,
    daemon,
    drive,
    experiment_state,
    workspace,
)
from tests.mqtt_helpers import AgentProcess, Probe

# Wall-clock bounds: make test runs this module after the parallel phase, alone.
pytestmark = pytest.mark.serial


def start_agents(ws: Workspace, broker: PrivateBroker, agents: list, tmp_path: Path) -> None:
    for device in DEVICES:
        agents.append(
            AgentProcess(
                broker_url=broker.url,
                device_id=device,
                state_dir=tmp_path / f"state-{device}",
                extra=["--trusted-key", str(ws.public_key_path), "--telemetry-interval", "0.3"],
            ).start()
        )


def unlabelled(app: App, device: str, n: int) -> None:
    """Predictions whose ground truth never comes back."""
    rows = app.frame.iloc[:n]
    for i, (_, row) in enumerate(rows.iterrows()):
        rid = f"nolabel-{device}-{app.sent + i}"
        body = {"id": rid, "key": rid, "features": {k: float(row[k]) for k in app_features()}}
        app.replies.publish(
            f"edgeloop/{device}/predict", body, response_topic="app/replies",
            correlation=rid.encode(),
        )  # fmt: skip
    app.sent += n
    for _ in range(n):
        app.replies.next(15, topic="app/replies")


def app_features() -> list[str]:
    from edgeloop_control.demo.sensors import FEATURES

    return FEATURES


def status(ws: Workspace, broker: PrivateBroker, exp_id: str) -> dict:
    out = cli(ws, broker, "ab", "status", exp_id, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return data[0] if isinstance(data, list) else data


def test_labels_that_never_arrive_defer_the_decision(
    workspace, broker, agents, daemon, tmp_path
) -> None:
    ws = workspace
    fleet, app = Fleet(broker), App(broker)
    try:
        start_agents(ws, broker, agents, tmp_path)
        out = cli(ws, broker, "ab", "start", "sensor@v1", "sensor@v2", *ON_DEVICES, "--json")
        assert out.returncode == 0, out.stderr
        exp = json.loads(out.stdout)["id"]
        fleet.serving({"sensor@v1", "sensor@v2"})
        for _ in range(3):
            for device in DEVICES:
                unlabelled(app, device, 150)  # far past min_samples_per_arm in requests
        time.sleep(2)
        assert experiment_state(ws, exp) == "running"
        db = ControlDB(ws.control_db)
        try:
            waiting = [e for e in db.events(kind="ab_waiting_for_labels") if e["subject"] == exp]
            assert len(waiting) == 1, "the reason is recorded once, not every tick"
            assert "label" in waiting[0]["message"]
            assert not db.events(kind="ab_decision")
        finally:
            db.close()
        # Labels start flowing: the experiment decides on them.
        assert drive(app, ws, exp, ("promoted",), timeout=40) == "promoted"
    finally:
        app.close()
        fleet.close()


def test_broker_restart_mid_experiment_loses_no_outcome(
    workspace, broker, agents, daemon, tmp_path
) -> None:
    ws = workspace
    fleet = Fleet(broker)
    app = App(broker)
    # A durable app session: its reply subscription survives the broker restart.
    app.replies.close()
    app.replies = Probe(broker.url, client_id="fault-app", persistent=True)
    app.replies.subscribe("app/replies")
    try:
        start_agents(ws, broker, agents, tmp_path)
        out = cli(
            ws, broker, "ab", "start", "sensor@v2", "sensor@v3", *ON_DEVICES,
            "--weight", "50", "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        exp = json.loads(out.stdout)["id"]
        fleet.serving({"sensor@v2", "sensor@v3"})
        for device in DEVICES:
            app.batch(device, 40)
        broker.restart()  # persistence on: sessions, retained desired state survive
        fleet.serving({"sensor@v2", "sensor@v3"}, timeout=40)
        for device in DEVICES:
            app.batch(device, 40)
        # Restart the agents: whatever their outboxes still held (a flush can be cut
        # short on a loaded box) is sent on start. Every outcome the app fed back,
        # before and after the broker restart, must then be stored exactly once.
        for agent in agents:
            assert agent.stop() == 0
        agents.clear()
        start_agents(ws, broker, agents, tmp_path)
        sent = sum(len(r) for r in app.served.values())
        db = ControlDB(ws.control_db)
        try:
            deadline = time.monotonic() + 90
            counted = 0
            while time.monotonic() < deadline:
                (counted,) = db.conn.execute(
                    "SELECT COALESCE(SUM(cls_n), 0) FROM variant_stats WHERE experiment = ?",
                    (exp,),
                ).fetchone()
                if counted >= sent:
                    break
                time.sleep(0.5)
            time.sleep(2)  # a late duplicate would now show
            (counted,) = db.conn.execute(
                "SELECT COALESCE(SUM(cls_n), 0) FROM variant_stats WHERE experiment = ?", (exp,)
            ).fetchone()
            assert counted == sent, f"outcomes stored {counted}, fed back {sent}"
        finally:
            db.close()
        assert experiment_state(ws, exp) == "running"  # 80 per arm: below min samples
        fleet.serving({"sensor@v2", "sensor@v3"})
        assert drive(app, ws, exp, ("rolled_back",), timeout=60) == "rolled_back"
    finally:
        app.close()
        fleet.close()
