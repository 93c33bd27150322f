"""The bounded intake in the real agent process: a burst far past ``--max-intake`` is
answered completely and once, and telemetry shows the bound held (high-water mark)."""

from __future__ import annotations

import json

from edgeloop_agent.wire.topics import Topics
from tests.agent.test_intake_bound import REPLIES, burst
from tests.integration.models import sensor_model
from tests.integration.test_agent_e2e import DEVICE, publish_deployment, start_agent, wait_status


def test_burst_past_the_intake_bound_is_answered_and_reported(broker, probe, agents, tmp_path):
    topics = Topics(DEVICE)
    probe.subscribe(topics.status)
    probe.subscribe(topics.telemetry)
    probe.subscribe(REPLIES)
    start_agent(agents, broker, tmp_path, extra=["--max-intake", "32", "--telemetry-interval", "1"])
    v1 = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    n = 3000
    burst(broker, n, topics.predict)
    ids: list[str] = []
    reports: list[dict] = []
    while len(ids) < n:
        msg = probe.next(timeout=60)
        if msg.topic == REPLIES:
            ids.append(json.loads(msg.payload)["id"])
        elif msg.topic == topics.telemetry:
            reports.append(json.loads(msg.payload))
    assert sorted(ids) == sorted(f"r{i}" for i in range(n)), "lost or duplicated replies"
    # Reports travel through the outbox, in its envelope.
    report = probe.wait_for(
        topics.telemetry, lambda r: r["payload"].get("intake", {}).get("high_water"), 15
    )
    intake = report["payload"]["intake"]
    assert intake["bound"] == 32
    # The bound was reached (the burst was 100 times larger) and held.
    assert intake["high_water"] == 32 and intake["pauses"] > 0
    assert all(r["payload"]["intake"]["high_water"] <= 32 for r in reports)
