"""The bounded intake: the agent's real Server and MqttLink, a real Mosquitto and a
real onnxruntime model, in this process so the test can read the queue's high-water
mark and slow the serving loop down (a stand-in for a device that cannot keep up).

While the serving queue is full the link stops reading its socket, so a burst waits
in the broker; QoS 1 requests not yet read are still the broker's, so none is lost.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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

REPLIES = "app/replies"


class SlowHooks(ServingHooks):
    """Sleeps per served variant batch (a slow device); ``stall`` once, for the first
    batch only (a long stop of the serving loop)."""

    def __init__(self, per_batch_s: float, stall_s: float = 0.0) -> None:
        self.per_batch_s = per_batch_s
        self.stall_s = stall_s

    def on_predictions(self, *args: Any, **kwargs: Any) -> None:
        if self.stall_s:
            stall, self.stall_s = self.stall_s, 0.0
            time.sleep(stall)
        time.sleep(self.per_batch_s)


def _serve(
    broker: PrivateBroker, hooks: ServingHooks, *, bound: int, keepalive_s: int
) -> Iterator[tuple[Server, MqttLink]]:
    art = sensor_model("v1")
    model = OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)
    desired = DesiredState.from_dict({"revision": 1, "models": [art.entry()]})
    deployment = Deployment.build(desired, {model.ref: model})
    topics = Topics("d1")
    srv: Server | None = None

    def on_message(msg: mqtt.MQTTMessage) -> None:
        assert srv is not None
        srv.submit(msg)

    link = MqttLink(
        client_id="intake-agent",
        broker=BrokerAddress.parse(broker.url),
        session_expiry_s=600,
        keepalive_s=keepalive_s,
        will_topic=topics.status,
        will_payload=dumps({"online": False}),
        subscriptions=[(topics.predict, 1)],
        on_message=on_message,
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
        max_queue=bound,
    )
    stop = threading.Event()
    thread = threading.Thread(target=srv.run, args=(stop,), daemon=True)
    link.start()
    assert link.connected.wait(10) and link.replies_connected.wait(10)
    time.sleep(0.3)  # the subscription lands
    thread.start()
    try:
        yield srv, link
    finally:
        stop.set()
        thread.join(10)
        link.stop()


def burst(broker: PrivateBroker, n: int, topic: str = "edgeloop/d1/predict") -> None:
    """Publish ``n`` QoS 1 requests as fast as paho takes them, each with its id."""
    addr = BrokerAddress.parse(broker.url)
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="burst",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect(addr.host, addr.port)
    client.loop_start()
    features = sample_features(1)[0]
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = REPLIES
    try:
        infos = [
            client.publish(
                topic,
                json.dumps({"id": f"r{i}", "features": features}),
                qos=1,
                properties=props,
            )
            for i in range(n)
        ]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def _reply_ids(probe: Any, n: int, timeout: float) -> list[str]:
    return [reply["id"] for reply in probe.collect(n, timeout=timeout)]


@pytest.fixture
def slow_agent(broker: PrivateBroker) -> Iterator[tuple[Server, MqttLink]]:
    yield from _serve(broker, SlowHooks(per_batch_s=0.01), bound=64, keepalive_s=30)


def test_a_burst_waits_in_the_broker_and_is_answered_completely(slow_agent, probe, broker):
    srv, link = slow_agent
    probe.subscribe(REPLIES)
    n = 5000
    burst(broker, n)
    ids = _reply_ids(probe, n, timeout=120)
    # Every request answered exactly once...
    assert len(ids) == n and set(ids) == {f"r{i}" for i in range(n)}
    time.sleep(0.5)
    assert probe.messages.empty(), "a request was answered twice"
    # ...while the agent never held more than its bound: the rest waited in the broker.
    assert srv.high_water == 64
    assert link.intake_pauses > 0
    assert link.disconnects == 0
    # Each request was acknowledged after the broker had its reply.
    deadline = time.monotonic() + 10
    while link.unacked_replies and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link.unacked_replies == 0


@pytest.fixture
def stalled_agent(broker: PrivateBroker) -> Iterator[tuple[Server, MqttLink]]:
    # Keepalive 3 s (the broker drops a client silent for 4.5 s); the serving loop
    # stops for 8 s on its first batch, with the intake full and reading paused.
    hooks = SlowHooks(per_batch_s=0.0, stall_s=8.0)
    yield from _serve(broker, hooks, bound=16, keepalive_s=3)


def test_a_pause_longer_than_the_keepalive_keeps_the_connection(stalled_agent, probe, broker):
    srv, link = stalled_agent
    probe.subscribe(REPLIES)
    n = 300
    burst(broker, n)
    seen_paused = False
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        seen_paused = seen_paused or link.intake_paused
        assert link.connected.is_set(), "the agent lost its connection while paused"
        time.sleep(0.1)
    assert seen_paused
    ids = _reply_ids(probe, n, timeout=60)
    assert sorted(ids) == sorted(f"r{i}" for i in range(n))
    time.sleep(0.5)
    assert probe.messages.empty(), "a request was answered twice (redelivered)"
    assert link.disconnects == 0
    assert srv.high_water <= 16


def test_a_reply_queued_while_the_reply_connection_drops_defers_its_ack(broker):
    """paho returns rc NO_CONN for a reply published while its connection is down and
    sends it after reconnecting; the request's ack must wait for that, not raise (an
    exception here would stop the serving loop)."""
    link = MqttLink(
        client_id="ack-agent",
        broker=BrokerAddress.parse(broker.url),
        session_expiry_s=60,
        keepalive_s=30,
        will_topic="edgeloop/d1/status",
        will_payload=b"{}",
        subscriptions=[],
        on_message=lambda _m: None,
    )
    assert link.reply_client is not None
    info = link.reply_client.publish(REPLIES, b"{}", qos=1)  # never connected
    assert info.rc == mqtt.MQTT_ERR_NO_CONN
    request = mqtt.MQTTMessage(mid=7, topic=b"edgeloop/d1/predict")
    request.qos = 1
    link.ack(request, info)
    assert link.unacked_replies == 1 and not link.acks_ready
