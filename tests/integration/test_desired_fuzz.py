"""Hostile desired-state messages against a real agent and broker (small; see bench/).

The updater must stay alive through every example, and a valid revision sent
afterwards must still apply. ``bench/fuzz_agent_desired.py`` runs the same
strategies for 10,000+ examples.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests.integration.desired_strategies import hostile_message
from tests.integration.models import sensor_model
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "fuzz-1"
V1 = sensor_model("v1")
BASE = {"revision": 5, "models": [V1.entry()]}


def test_hostile_desired_messages_never_stop_the_updater(broker, probe: Probe, agents, tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\nbroker = "{broker.url}"\nallow_unsigned = true\n'
        "artifact_timeout_s = 1.0\n"
    )
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=["-c", str(config)],
    ).start()
    agents.append(agent)
    status_topic = f"edgeloop/{DEVICE}/status"
    probe.subscribe(status_topic)
    probe.publish(f"edgeloop/models/{V1.name}/{V1.version}", V1.data, retain=True)
    probe.wait_for(status_topic, lambda s: s.get("online") is True)
    tried = [0]

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(hostile_message(BASE))
    def one(payload: bytes) -> None:
        tried[0] += 1
        marker = time.time()
        probe.publish(f"edgeloop/{DEVICE}/desired", payload)
        # A refusal or an apply publishes status; a no-op publishes nothing.
        with contextlib.suppress(TimeoutError):
            probe.wait_for(status_topic, lambda s: s.get("ts", 0) >= marker, timeout=3)
        assert agent.alive()

    one()
    probe.publish(
        f"edgeloop/{DEVICE}/desired", {"revision": 10**7, "models": [V1.entry()]}, retain=True
    )
    status = probe.wait_for(status_topic, lambda s: s.get("revision") == 10**7, timeout=30)
    assert status["threads"] == [] and agent.alive() and tried[0] == 40
    assert "Traceback" not in Path(agent.log_path).read_text()
