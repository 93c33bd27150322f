"""The HTTP front end in this process: the agent's real Server, MqttLink and OipHttpServer,
a real Mosquitto and a real onnxruntime model; what the end-to-end test cannot see
(one micro-batch shared by both paths, the connection bound, shutdown)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edgeloop_agent import oip_http
from edgeloop_agent.deployment import Deployment
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.oip_http import OipHttpServer
from edgeloop_agent.protocol import dumps
from edgeloop_agent.serving import LocalRequest, Server, ServingHooks
from edgeloop_agent.wire.desired import DesiredState
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.integration.models import sample_features, sensor_model

# Wall-clock bounds: make test runs this module after the parallel phase, alone.
pytestmark = pytest.mark.serial


class RecordingHooks(ServingHooks):
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.errors: dict[str, int] = {}

    def on_error(self, variant: str | None, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def on_predictions(self, variant, model, request_ids, *args: Any, **kw: Any) -> None:
        self.batches.append(list(request_ids))


class Front:
    def __init__(self, srv: Server, hooks: RecordingHooks, arrived: list, http: OipHttpServer):
        self.srv, self.hooks, self.arrived, self.http = srv, hooks, arrived, http
        self.port = http.address[1]

    def post(
        self, conn: http.client.HTTPConnection, doc: Any, path: str = "/v2/models/sensor/infer"
    ):
        conn.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())


@pytest.fixture
def front(broker: PrivateBroker) -> Iterator[Front]:
    art = sensor_model("v1")
    model = OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)
    desired = DesiredState.from_dict({"revision": 1, "models": [art.entry()]})
    deployment = Deployment.build(desired, {model.ref: model})
    topics = Topics("d1")
    hooks = RecordingHooks()
    arrived: list[Any] = []
    link = MqttLink(
        client_id="oip-agent",
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
        max_micro_batch=64,
        reply_qos=1,
        get_deployment=lambda: deployment,
    )
    http_front = OipHttpServer(
        "127.0.0.1",
        0,
        server=srv,
        get_deployment=lambda: deployment,
        max_payload=65536,
        max_rows=64,
    ).start()
    link.start()
    assert link.connected.wait(10)
    time.sleep(0.3)
    try:
        yield Front(srv, hooks, arrived, http_front)
    finally:
        http_front.close()
        link.stop()


def oip_row(features: dict[str, float], rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "inputs": [
            {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in features.items()
        ],
    }


def test_http_and_mqtt_requests_share_one_micro_batch(front: Front, probe):
    probe.subscribe("app/replies")
    rows = sample_features(4, seed=11)
    for i, row in enumerate(rows):
        probe.publish(
            "edgeloop/d1/predict", {"id": f"m{i}", "features": row}, response_topic="app/replies"
        )
    deadline = time.monotonic() + 10
    while len(front.arrived) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    # HTTP handlers queue their requests (the serving loop is not running yet)...
    results: dict[int, Any] = {}

    def ask(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
        results[i] = front.post(conn, oip_row(rows[i], f"h{i}"))
        conn.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while front.srv.backlog < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert front.srv.backlog == 4
    # ...and one process() call serves them with the MQTT messages: one inference.
    now = time.perf_counter()
    front.srv.process(
        [(m, now) for m in front.arrived] + [front.srv._queue.popleft() for _ in range(4)]
    )
    for t in threads:
        t.join(10)
    assert len(front.hooks.batches) == 1  # HTTP threads queue in any order
    assert sorted(front.hooks.batches[0]) == ["h0", "h1", "h2", "h3", "m0", "m1", "m2", "m3"]
    replies = {r["id"]: r for r in probe.collect(4, timeout=10)}
    for i in range(4):
        status, doc = results[i]
        assert status == 200 and doc["id"] == f"h{i}"
        label, probs = doc["outputs"][0]["data"][0], doc["outputs"][1]["data"]
        assert label == replies[f"m{i}"]["prediction"]
        assert probs == list(replies[f"m{i}"]["probabilities"].values())


@pytest.fixture
def serving(front: Front) -> Iterator[Front]:
    stop = threading.Event()
    thread = threading.Thread(target=front.srv.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield front
    finally:
        stop.set()
        thread.join(10)


def test_keep_alive_serves_many_requests_on_one_connection(serving: Front):
    conn = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=10)
    row = sample_features(1)[0]
    conn.connect()
    sock = conn.sock
    for i in range(5):
        status, doc = serving.post(conn, oip_row(row, f"k{i}"))
        assert status == 200 and doc["id"] == f"k{i}"
        # An error answer keeps the connection too (its body was read).
        status, doc = serving.post(conn, {"inputs": []})
        assert status == 400 and doc["error"].startswith("invalid_features: ")
    assert conn.sock is sock
    # Small responses are not held back by Nagle waiting for the client's delayed
    # ACK (that costs ~40 ms per request on Linux loopback).
    took = []
    for i in range(15):
        t0 = time.perf_counter()
        status, _ = serving.post(conn, oip_row(row, f"t{i}"))
        took.append(time.perf_counter() - t0)
        assert status == 200
    assert sorted(took)[7] < 0.03, took
    conn.close()


def test_connections_beyond_the_bound_get_503_busy_then_recover(serving: Front, monkeypatch):
    held = []
    for _ in range(oip_http.MAX_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", serving.port), timeout=10)
        held.append(s)
    time.sleep(0.3)  # each accepted and given its thread
    conn = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=10)
    conn.request("GET", "/v2/health/live")
    resp = conn.getresponse()
    assert resp.status == 503 and resp.getheader("X-Edgeloop-Error") == "busy"
    assert json.loads(resp.read())["error"].startswith("busy: ")
    conn.close()
    for s in held:
        s.close()
    deadline = time.monotonic() + 10
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=10)
        conn.request("GET", "/v2/health/live")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        if resp.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert resp.status == 200 and body == {"live": True}


def test_after_stop_requests_get_503_shutting_down(serving: Front):
    serving.srv.stop_accepting()
    conn = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=10)
    status, doc = serving.post(conn, oip_row(sample_features(1)[0], "late"))
    assert status == 503 and doc["error"].startswith("shutting_down: ")
    conn.request("GET", "/v2/health/ready")
    resp = conn.getresponse()
    assert resp.status == 503 and json.loads(resp.read()) == {"ready": False}
    conn.close()


def test_a_local_request_is_never_acknowledged_on_the_link(front: Front):
    # A LocalRequest has no MQTT message id: acking it would raise inside paho's
    # code; process() must leave it alone and still deliver the reply.
    got: list[bytes] = []
    item = LocalRequest(None, got.append, error=None)
    assert front.srv.submit_local(item)
    front.srv.process_available()
    assert json.loads(got[0])["error"]["code"] == "internal_error"


def test_a_stalled_connection_is_closed_and_frees_its_slot(front: Front, monkeypatch):
    # A client that sends half a request and stalls (slow loris) is dropped after
    # the socket timeout instead of holding a connection slot for ever.
    monkeypatch.setattr(oip_http._Handler, "timeout", 0.5)
    s = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    s.sendall(b"POST /v2/models/sensor/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    assert s.recv(1024) == b""  # closed by the agent, no answer to half a body
    assert time.monotonic() - t0 < 5
    s.close()
    # The handler thread gives its slot back just after closing the socket.
    deadline = time.monotonic() + 5
    while front.http.http._slots._value < oip_http.MAX_CONNECTIONS:
        assert time.monotonic() < deadline, "the stalled connection kept its slot"
        time.sleep(0.05)
