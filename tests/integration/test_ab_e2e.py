"""A/B routing on a device, driven by the real `edgeloop deploy` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeloop_agent.wire.allocation import bucket_of
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sample_features, sensor_model
from tests.integration.test_agent_e2e import wait_status
from tests.mqtt_helpers import AgentProcess, Probe

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
DEVICE = "ab-1"


def cli(ws: Workspace, broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker_url}
    return subprocess.run([EDGELOOP, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    registry = Registry.for_workspace(ws)
    for version, algo in (("v1", "logreg"), ("v2", "rf"), ("v3", "hgb")):
        art = sensor_model(version, algo=algo)
        registry.register("sensor", art.data, {"algorithm": algo})
    return ws


def ask(probe: Probe, rid: str, key: str | None, features: dict) -> dict:
    body = {"id": rid, "features": features}
    if key is not None:
        body["key"] = key
    probe.publish(
        f"edgeloop/{DEVICE}/predict", body, response_topic="ab/replies", correlation=rid.encode()
    )
    return json.loads(probe.next(10, topic="ab/replies").payload)


def test_weighted_routing_shadow_and_weight_change(workspace, broker, probe, agents, tmp_path):
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("ab/replies")
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=["--trusted-key", str(workspace.public_key_path), "--telemetry-interval", "0.5"],
    ).start()
    agents.append(agent)
    out = cli(
        workspace,
        broker.url,
        "deploy",
        "--new-device",
        "sensor@v1=90",
        "sensor@v2=10",
        "--shadow",
        "sensor@v3",
        "--device",
        DEVICE,
        "--json",
    )
    assert out.returncode == 0, out.stderr
    desired = json.loads(out.stdout)[0]["desired"]
    experiment = desired["experiment"]
    status = wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    roles = {m["variant"]: (m["role"], m["weight"]) for m in status["models"]}
    assert roles == {
        "sensor@v1": ("serve", 90.0),
        "sensor@v2": ("serve", 10.0),
        "sensor@v3": ("shadow", 0.0),
    }

    features = sample_features(1)[0]
    keys = [f"pump-{i}" for i in range(400)]
    first = {k: ask(probe, f"a-{k}", k, features) for k in keys}
    # The shadow never answers; every reply names variant and version.
    assert {r["variant"] for r in first.values()} <= {"sensor@v1", "sensor@v2"}
    assert all(r["version"] == r["variant"].split("@")[1] for r in first.values())
    # Deterministic: the bucket formula from docs/router.md decides the variant.
    ranges = desired["allocation"]["ranges"]
    for k, reply in first.items():
        b = bucket_of(experiment, k)
        owner = next(v for v, rs in ranges.items() if any(lo <= b < hi for lo, hi in rs))
        assert reply["variant"] == owner
    share_v2 = sum(r["variant"] == "sensor@v2" for r in first.values()) / len(keys)
    assert 0.04 < share_v2 < 0.18

    # Same keys after a restart of the agent: same variants.
    assert agent.stop() == 0
    restarted = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=agent.state_dir,
        extra=["--trusted-key", str(workspace.public_key_path)],
    ).start()
    agents.append(restarted)
    wait_status(probe, DEVICE, lambda s: s.get("online") and s.get("revision") == 1)
    again = {k: ask(probe, f"b-{k}", k, features)["variant"] for k in keys[:100]}
    assert again == {k: first[k]["variant"] for k in keys[:100]}

    # Change weights without restart: only keys whose bucket left v1's range move, all to v2.
    out = cli(
        workspace,
        broker.url,
        "deploy",
        "--new-device",
        "sensor@v1=50",
        "sensor@v2=50",
        "--device",
        DEVICE,
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["desired"]["experiment"] == experiment
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 2)
    moved = {k: ask(probe, f"c-{k}", k, features)["variant"] for k in keys}
    assert all(moved[k] == "sensor@v2" for k in keys if first[k]["variant"] == "sensor@v2")
    movers = [k for k in keys if moved[k] != first[k]["variant"]]
    assert all(first[k]["variant"] == "sensor@v1" for k in movers)
    assert 0.25 < len(movers) / len(keys) < 0.55  # theory: 40 of 100 buckets move


def test_feedback_outcomes_per_variant_reach_telemetry(workspace, broker, probe, agents, tmp_path):
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("ab/replies")
    # Reports on their own client: Probe.next(topic=...) skips other topics, so
    # waiting for replies on a shared probe would throw reports away.
    reports = Probe(broker.url)
    reports.subscribe(f"edgeloop/{DEVICE}/telemetry")
    agents.append(
        AgentProcess(
            broker_url=broker.url,
            device_id=DEVICE,
            state_dir=tmp_path / "state",
            extra=["--trusted-key", str(workspace.public_key_path), "--telemetry-interval", "0.5"],
        ).start()
    )
    out = cli(
        workspace,
        broker.url,
        "deploy",
        "--new-device",
        "sensor@v1=50",
        "sensor@v2=50",
        "--shadow",
        "sensor@v3",
        "--device",
        DEVICE,
    )
    assert out.returncode == 0, out.stderr
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    rows = sample_features(60, seed=11)
    expected: dict[str, list[bool]] = {}
    for i, features in enumerate(rows):
        reply = ask(probe, f"f-{i}", f"k{i}", features)
        label = 1 if i % 3 == 0 else 0
        expected.setdefault(reply["variant"], []).append(reply["prediction"] == label)
        probe.publish(f"edgeloop/{DEVICE}/feedback", {"id": f"f-{i}", "label": label})
    probe.publish(f"edgeloop/{DEVICE}/feedback", {"id": "never-asked", "label": 1})
    totals: dict[str, list[int]] = {}
    unknown = 0
    deadline = time.monotonic() + 60  # a loaded box delays feedback and reports
    while time.monotonic() < deadline:
        env = reports.next_json(5, topic=f"edgeloop/{DEVICE}/telemetry")
        report = env["payload"]
        unknown = max(unknown, report["feedback"].get("unknown", 0))  # cumulative counter
        for variant, m in report["metrics"]["variants"].items():
            outcome = m.get("classification") or {}
            n, correct = outcome.get("n", 0), outcome.get("correct", 0)
            t = totals.setdefault(variant, [0, 0])
            t[0] += n
            t[1] += correct
        if sum(totals.get(v, [0])[0] for v in expected) == len(rows) and totals.get(
            "sensor@v3", [0]
        )[0] == len(rows):
            break
    for _ in range(3):  # the stray feedback may land in a later report
        if unknown:
            break
        env = reports.next_json(5, topic=f"edgeloop/{DEVICE}/telemetry")
        unknown = max(unknown, env["payload"]["feedback"].get("unknown", 0))
    for variant, outcomes in expected.items():
        assert totals[variant] == [len(outcomes), sum(outcomes)], variant
    assert totals["sensor@v3"][0] == len(rows)  # the shadow was graded on every request too
    assert unknown >= 1  # feedback for an id never seen is counted, not fatal
