"""The serving loop reports what the router assigned (keys per variant) to the telemetry.

The agent's real Server, MqttLink, Router and onnxruntime models on a real Mosquitto, and the
real Telemetry's metrics: a keyed burst is routed at 50/50, and the per-variant assignment
counts and key sketches in the metrics snapshot are checked against the router's own choice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from edgeloop_agent.deployment import Deployment
from edgeloop_agent.metrics import Metrics
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.protocol import dumps
from edgeloop_agent.serving import Server, ServingHooks
from edgeloop_agent.wire import keysketch
from edgeloop_agent.wire.desired import DesiredState
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.integration.models import sample_features, sensor_model


class Assignments(ServingHooks):
    """The telemetry's assignment bookkeeping (Metrics.record_assigned), nothing else."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.calls = 0

    def on_routed(self, variant: str, keys: list[str | None], experiment_id: str) -> None:
        self.calls += 1
        keyed = [k for k in keys if k is not None]
        hashes = keysketch.key_hashes(experiment_id, keyed)
        self.metrics.record_assigned(variant, hashes, len(keys) - len(keyed))


@pytest.fixture
def served(broker: PrivateBroker) -> Iterator[tuple[Server, Assignments, Deployment, list[Any]]]:
    arts = [sensor_model("v1"), sensor_model("v2", algo="rf")]
    models = {
        f"{a.name}@{a.version}": OnnxModel(a.data, name=a.name, version=a.version, sha256=a.sha256)
        for a in arts
    }
    desired = DesiredState.from_dict(
        {"revision": 1, "experiment": "exp-7", "models": [a.entry(weight=50) for a in arts]}
    )
    deployment = Deployment.build(desired, models)
    topics = Topics("d1")
    hooks = Assignments()
    arrived: list[Any] = []
    link = MqttLink(
        client_id="assignments-agent",
        broker=BrokerAddress.parse(broker.url),
        session_expiry_s=60,
        keepalive_s=30,
        will_topic=topics.status,
        will_payload=dumps({"online": False}),
        subscriptions=[(topics.predict, 1)],
        on_message=arrived.append,
    )
    srv = Server(
        topics=topics,
        link=link,
        hooks=hooks,
        max_payload=65536,
        max_rows=64,
        max_micro_batch=256,
        reply_qos=1,
        get_deployment=lambda: deployment,
    )
    link.start()
    assert link.connected.wait(10)
    time.sleep(0.3)
    try:
        yield srv, hooks, deployment, arrived
    finally:
        link.stop()


def test_keys_are_counted_per_variant_where_the_router_assigns(served, probe) -> None:
    srv, hooks, deployment, arrived = served
    probe.subscribe("app/replies")
    features = sample_features(1)[0]
    keys = [f"pump-{i % 60}" for i in range(150)]  # 60 distinct keys, most seen 2-3 times
    bodies: list[dict[str, Any]] = [
        {"id": f"k{i}", "key": k, "features": features} for i, k in enumerate(keys)
    ]
    bodies += [{"id": f"u{i}", "features": features} for i in range(20)]  # no key
    bodies.append({"id": "bad", "key": "pump-999", "features": {"nope": 1}})  # refused
    for body in bodies:
        probe.publish("edgeloop/d1/predict", body, response_topic="app/replies")
    deadline = time.monotonic() + 10
    while len(arrived) < len(bodies) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(arrived) == len(bodies)
    srv.process([(m, time.perf_counter()) for m in arrived])
    replies = {r["id"]: r for r in probe.collect(len(bodies), timeout=10)}
    assert "error" in replies["bad"] and all("prediction" in replies[f"k{i}"] for i in range(150))

    variants = hooks.metrics.snapshot()["variants"]
    expected: dict[str, set[str]] = {}
    keyed_requests: dict[str, int] = {}
    # The refused request was assigned before its row was checked: it counts.
    for k in [*keys, "pump-999"]:
        v = deployment.route(k)
        expected.setdefault(v, set()).add(k)
        keyed_requests[v] = keyed_requests.get(v, 0) + 1
    assert set(expected) == {"sensor@v1", "sensor@v2"}
    unkeyed = 0
    for v, mine in expected.items():
        assigned = variants[v]["assigned"]
        assert assigned["keyed"] == keyed_requests[v]
        assert round(keysketch.estimate(keysketch.from_wire(assigned["keys"]))) == len(mine)
        unkeyed += assigned["unkeyed"]
    assert unkeyed == 20
    assert hooks.calls == 2  # once per variant for the whole micro-batch
