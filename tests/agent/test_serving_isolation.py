"""Per-message isolation in the serving loop: the agent's real Server and MqttLink,
a real Mosquitto and a real onnxruntime model, in this process so that a hook can
fail on one chosen request (a stand-in for a bug that one payload triggers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from edgeloop_agent.deployment import Deployment
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.protocol import dumps
from edgeloop_agent.serving import Server, ServingHooks
from edgeloop_agent.wire.desired import DesiredState
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.integration.models import sample_features, sensor_model


class Bug(Exception):
    pass


class FaultyHooks(ServingHooks):
    """Raises for one request id, counts error codes like the real telemetry."""

    def __init__(self, bad_id: str) -> None:
        self.bad_id = bad_id
        self.errors: dict[str, int] = {}

    def on_request(self, variant: str | None, latency_s: float, n_rows: int) -> None:
        self._current = getattr(self, "_current", 0) + 1
        if self._current == 21:  # the 21st request served in the batch is the bad one
            raise Bug("a bug on one request")

    def on_error(self, variant: str | None, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def on_feedback(self, request_id: str, label: Any) -> str | None:
        if request_id == self.bad_id:
            raise Bug("a bug on one label")
        return None


@pytest.fixture
def server(broker: PrivateBroker) -> Iterator[tuple[Server, FaultyHooks, list[Any]]]:
    """The agent's Server on a real link; arrivals are held in a list so the test
    hands the whole burst to ``process`` as one micro-batch."""
    art = sensor_model("v1")
    model = OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)
    desired = DesiredState.from_dict({"revision": 1, "models": [art.entry()]})
    deployment = Deployment.build(desired, {model.ref: model})
    topics = Topics("d1")
    hooks = FaultyHooks("boom")
    arrived: list[Any] = []
    link = MqttLink(
        client_id="isolation-agent",
        broker=BrokerAddress.parse(broker.url),
        session_expiry_s=60,
        keepalive_s=30,
        will_topic=topics.status,
        will_payload=dumps({"online": False}),
        subscriptions=[(topics.predict, 1), (topics.feedback, 1)],
        on_message=arrived.append,
    )
    srv = Server(
        topics=topics,
        link=link,
        hooks=hooks,
        max_payload=65536,
        max_rows=64,
        max_micro_batch=64,
        reply_qos=1,
        get_deployment=lambda: deployment,
    )
    link.start()
    assert link.connected.wait(10)
    time.sleep(0.3)  # the subscriptions land
    try:
        yield srv, hooks, arrived
    finally:
        link.stop()


def test_a_failure_on_one_request_leaves_its_batch_neighbours_served(server, probe):
    srv, hooks, arrived = server
    probe.subscribe("app/replies")
    features = sample_features(1)[0]
    for i in range(41):
        body = {"id": f"r{i}", "features": features}
        probe.publish("edgeloop/d1/predict", body, response_topic="app/replies")
    probe.publish("edgeloop/d1/feedback", {"id": "boom", "label": 1}, response_topic="app/replies")
    deadline = time.monotonic() + 10
    while len(arrived) < 42 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(arrived) == 42
    now = time.perf_counter()
    srv.process([(m, now) for m in arrived])
    got = probe.collect(42, timeout=10)
    by_id = {r["id"]: r for r in got}
    # Every request got its prediction, those served after the failing hook too.
    assert sorted(by_id) == sorted([*(f"r{i}" for i in range(41)), "boom"])
    assert all("prediction" in by_id[f"r{i}"] for i in range(41))
    # The label the bug hit gets an error reply instead of silence.
    assert by_id["boom"]["error"]["code"] == "internal_error"
    assert hooks.errors == {"internal_error": 1}
