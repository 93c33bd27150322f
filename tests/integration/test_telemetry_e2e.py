"""Telemetry and captured data are lossless: broker restarts and kill -9.

Every message leaving the agent's outbox carries an id
``{device}:{boot}:{seq}``; the subscriber de-duplicates by it, as the control
node does. "Accepted" means committed to the outbox.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.integration.models import sample_features, sensor_model
from tests.integration.test_agent_e2e import publish_deployment, wait_status
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "tele-1"
FAST = ["--telemetry-interval", "0.5", "--capture-rate", "1.0"]


def collector(url: str) -> Probe:
    sub = Probe(url, client_id="telemetry-collector", persistent=True)
    sub.subscribe(f"edgeloop/{DEVICE}/samples")
    sub.subscribe(f"edgeloop/{DEVICE}/telemetry")
    sub.subscribe(f"edgeloop/{DEVICE}/labels")
    return sub


def drain(sub: Probe, into: dict[str, list[dict]], quiet: float = 2.0) -> None:
    """Read until nothing arrives for ``quiet`` seconds; keep every copy by id."""
    while True:
        try:
            msg = sub.next(quiet)
        except Exception:
            return
        env = json.loads(msg.payload)
        into.setdefault(env["id"], []).append(env)


def outbox_ids(state_dir: Path) -> set[str]:
    path = state_dir / "outbox.sqlite"
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


def deploy(probe: Probe, broker, agents, tmp_path: Path) -> AgentProcess:
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    agent = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=tmp_path / "state", extra=FAST
    ).start()
    agents.append(agent)
    model = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    return agent


def send(app: Probe, start: int, n: int, features: dict) -> list[str]:
    ids = []
    for i in range(start, start + n):
        rid = f"t-{i}"
        app.publish(
            f"edgeloop/{DEVICE}/predict",
            {"id": rid, "features": features},
            response_topic="app/replies",
        )
        ids.append(rid)
        time.sleep(0.003)
    return ids


def test_broker_restart_mid_stream_loses_nothing(broker, probe, agents, tmp_path):
    agent = deploy(probe, broker, agents, tmp_path)
    sub = collector(broker.url)
    features = sample_features(1)[0]
    got: dict[str, list[dict]] = {}
    send(probe, 0, 150, features)
    broker.stop()
    time.sleep(2.0)  # reports keep being produced into the outbox meanwhile
    broker.start()
    probe2 = Probe(broker.url)
    try:
        send(probe2, 150, 150, features)
        time.sleep(1.0)
        assert agent.alive()
        # A clean stop writes a last report and flushes the outbox; then the
        # stream ends and "nothing more arrives" means everything arrived.
        assert agent.stop() == 0
        drain(sub, got, quiet=3.0)
    finally:
        probe2.close()
        sub.close()
    assert outbox_ids(agent.state_dir) == set()
    # One boot, so the sequence numbers of accepted messages must have no gap.
    boots = {i.split(":")[1] for i in got}
    assert len(boots) == 1
    seqs = sorted(int(i.split(":")[2]) for i in got)
    assert seqs == list(range(1, seqs[-1] + 1)), "a message accepted by the outbox never arrived"
    kinds = [copies[0]["kind"] for copies in got.values()]
    assert kinds.count("sample") >= 150  # captured before the stop, and after it
    assert kinds.count("report") >= 4  # reports produced while the broker was down arrived too
    # De-duplication by id is all the control node needs: copies are identical.
    assert all(all(c == copies[0] for c in copies) for copies in got.values())


def test_kill_9_mid_stream_loses_nothing(broker, probe, agents, tmp_path):
    agent = deploy(probe, broker, agents, tmp_path)
    sub = collector(broker.url)
    probe.subscribe("app/replies")
    features = sample_features(1)[0]
    got: dict[str, list[dict]] = {}
    sent = send(probe, 0, 200, features)
    agent.kill()  # SIGKILL: no drain, no flush
    accepted_unsent = outbox_ids(agent.state_dir)
    drain(sub, got, quiet=1.0)
    accepted = accepted_unsent | set(got)
    sent += send(probe, 200, 50, features)  # queued at the broker while the agent is dead
    restarted = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=agent.state_dir, extra=FAST
    ).start()
    agents.append(restarted)
    sent += send(probe, 250, 50, features)
    time.sleep(2.0)
    assert restarted.stop() == 0
    drain(sub, got, quiet=3.0)
    # Every reply the app will ever see: requests were redelivered after the crash.
    replied = set()
    while True:
        try:
            replied.add(json.loads(probe.next(1.0, topic="app/replies").payload)["id"])
        except Exception:
            break
    sub.close()
    assert set(sent) <= replied, f"requests never answered: {sorted(set(sent) - replied)[:5]}"
    missing = accepted - set(got)
    assert not missing, f"accepted before the crash but never delivered: {sorted(missing)[:5]}"
    assert outbox_ids(restarted.state_dir) == set()
    samples = [c[0]["payload"] for c in got.values() if c[0]["kind"] == "sample"]
    captured_requests = {s["request_id"] for s in samples}
    assert set(sent) <= captured_requests, "a served request has no captured sample"
    assert len({i.split(":")[1] for i in got}) == 2  # two boots, ids never collide
