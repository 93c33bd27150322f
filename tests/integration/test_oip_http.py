"""The Open Inference Protocol v2 endpoint of a real agent, driven by clients we did not write.

A real Mosquitto, a real agent process with ``--http``, a model that arrives through
the signed desired-state path; tritonclient[http] and curl on one side, the MQTT
path on the other: same predictions, same router, same telemetry, same error codes.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from edgeloop_agent.protocol import DEFAULT_MAX_PAYLOAD
from edgeloop_control.infra.mosquitto import PrivateBroker, free_port
from edgeloop_control.infra.signing import generate_keypair, load_signing_key
from tests.integration.models import Artifact, sample_features, sensor_model, strict_model
from tests.integration.signed import envelope
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "oip-1"
STATUS = f"edgeloop/{DEVICE}/status"


class Http:
    """The agent's HTTP and Prometheus addresses, plus a raw-request helper."""

    def __init__(self, agent: AgentProcess, port: int, metrics_port: int) -> None:
        self.agent = agent
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(
            f"http://{self.url}{path}", data=body, method=method, headers=headers or {}
        )
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def counters(self) -> dict[str, float]:
        """``requests_total``/``errors_total`` samples of the agent's Prometheus endpoint."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"\w*?((?:requests|errors)_total\{[^}]*\}) (\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


def requests_of(counters: dict[str, float], variant: str) -> float:
    return counters.get(f'requests_total{{variant="{variant}"}}', 0.0)


def errors_of(counters: dict[str, float], code: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith("errors_total") and code in k)


def wait_http(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def deploy(probe: Probe, key, revision: int, entries: list[tuple[Artifact, dict]], **extra):
    for art, _ in entries:
        probe.publish(f"edgeloop/models/{art.name}/{art.version}", art.data, retain=True)
    doc = envelope(DEVICE, revision, [e for _, e in entries], [key], **extra)
    probe.publish(f"edgeloop/{DEVICE}/desired", doc, retain=True)
    probe.wait_for(STATUS, lambda s: s.get("revision") == revision, 30)


@pytest.fixture
def keys(tmp_path: Path):
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    return load_signing_key(tmp_path / "k.key"), tmp_path / "k.pub"


@pytest.fixture
def http_agent(broker: PrivateBroker, probe: Probe, agents, tmp_path: Path, keys):
    """An agent with --http, before any model: (Http, signing key)."""
    probe.subscribe(STATUS)
    probe.subscribe("replies/#")
    port, metrics_port = free_port(), free_port()
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=[
            "--trusted-key",
            str(keys[1]),
            "--http",
            f"127.0.0.1:{port}",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
        ],
    ).start()
    agents.append(agent)
    wait_http(port)
    return Http(agent, port, metrics_port), keys[0]


def mqtt_batch(probe: Probe, rows: list[dict], key: str | None = None) -> dict:
    corr = f"c-{time.monotonic_ns()}".encode()
    payload: dict[str, Any] = {"id": corr.decode(), "rows": rows}
    if key is not None:
        payload["key"] = key
    probe.publish(
        f"edgeloop/{DEVICE}/predict", payload, response_topic="replies/x", correlation=corr
    )
    while True:
        msg = probe.next(10, topic="replies/x")
        if msg.properties.CorrelationData == corr:
            return json.loads(msg.payload)


def oip_body(rows: list[dict], **extra: Any) -> dict:
    names = list(rows[0])
    return {
        "inputs": [
            {"name": n, "shape": [len(rows), 1], "datatype": "FP64", "data": [r[n] for r in rows]}
            for n in names
        ],
        **extra,
    }


def curl(http: Http, path: str, body: bytes, *headers: str) -> tuple[int, dict]:
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]
    for h in ("Content-Type: application/json", *headers):
        args += ["-H", h]
    proc = subprocess.run(
        [*args, "--data-binary", "@-", f"http://{http.url}{path}"],
        input=body,
        capture_output=True,
        timeout=30,
        check=True,
    )
    text, _, status = proc.stdout.decode().rpartition("\n")
    return int(status), json.loads(text)


def test_tritonclient_and_curl_get_the_mqtt_answers(http_agent, probe):
    http, key = http_agent
    client = triton.InferenceServerClient(http.url)
    # Live at once; not ready, and inference refused with the MQTT code, until a model arrives.
    assert client.is_server_live()
    assert not client.is_server_ready()
    body = json.dumps(oip_body(sample_features(1))).encode()
    status, doc, headers = http.request("POST", "/v2/models/sensor/infer", body)
    assert status == 503 and doc["error"].startswith("no_model: ")
    assert headers["X-Edgeloop-Error"] == "no_model"

    v1 = sensor_model("v1")
    deploy(probe, key, 1, [(v1, v1.entry())])
    assert client.is_server_ready() and client.is_model_ready("sensor")
    meta = client.get_model_metadata("sensor")
    assert meta["name"] == "sensor" and meta["versions"] == ["v1"]
    assert [i["name"] for i in meta["inputs"]] == v1.features
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32"}
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]

    rows = sample_features(6, seed=7)
    want = mqtt_batch(probe, rows)
    assert "predictions" in want, want
    want_labels = [p["prediction"] for p in want["predictions"]]
    want_probs = np.array([list(p["probabilities"].values()) for p in want["predictions"]])
    before = http.counters()

    # tritonclient, one FP32 input per feature, [batch, 1].
    inputs = []
    for name in v1.features:
        col = np.array([[r[name]] for r in rows], dtype=np.float32)
        inp = triton.InferInput(name, list(col.shape), "FP32")
        inp.set_data_from_numpy(col, binary_data=False)
        inputs.append(inp)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("sensor", inputs, outputs=outputs, request_id="t-1")
    assert result.as_numpy("label").tolist() == want_labels
    np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "sensor" and response["model_version"] == "v1"
    assert response["id"] == "t-1" and response["parameters"]["variant"] == "sensor@v1"

    # tritonclient, every feature in one [batch, n_features] matrix, in model order.
    matrix = np.array([[r[n] for n in v1.features] for r in rows], dtype=np.float32)
    inp = triton.InferInput("features", list(matrix.shape), "FP32")
    inp.set_data_from_numpy(matrix, binary_data=False)
    result = client.infer("sensor", [inp], model_version="v1", outputs=outputs[:1])
    assert result.as_numpy("label").tolist() == want_labels
    assert result.as_numpy("probabilities") is None  # only what was asked for

    # curl, FP64 by name, routing key in the header.
    status, doc = curl(
        http, "/v2/models/sensor/infer", json.dumps(oip_body(rows)).encode(), "X-Edgeloop-Key: k1"
    )
    assert status == 200, doc
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert by_name["label"]["data"] == want_labels and by_name["label"]["shape"] == [6]
    assert by_name["probabilities"]["shape"] == [6, 2]
    got = np.array(by_name["probabilities"]["data"]).reshape(6, 2)
    np.testing.assert_allclose(got, want_probs, atol=1e-6)
    assert doc["id"].startswith("http-")  # an id the feedback join can use

    # Telemetry counted the three HTTP requests like MQTT ones.
    after = http.counters()
    assert requests_of(after, "sensor@v1") - requests_of(before, "sensor@v1") == 3
    # tritonclient understands the error form: the MQTT code leads the message.
    with pytest.raises(InferenceServerException, match="unknown_model"):
        client.infer("pump", inputs)
    with pytest.raises(InferenceServerException, match="missing_feature"):
        client.infer("sensor", inputs[1:])

    client.close()


def test_ab_split_applies_and_a_version_can_be_forced(http_agent, probe):
    http, key = http_agent
    v1, v2 = sensor_model("v1"), sensor_model("v2", algo="rf")
    deploy(
        probe,
        key,
        1,
        [(v1, v1.entry(weight=50)), (v2, v2.entry(weight=50))],
        experiment="exp-oip",
    )
    status, meta, _ = http.request("GET", "/v2/models/sensor")
    assert status == 200 and meta["versions"] == ["v1", "v2"]
    row = sample_features(1, seed=3)
    seen: dict[str, str] = {}
    for i in range(40):
        k = f"pump-{i}"
        # The key as a header for even i, as the request parameter for odd i.
        if i % 2:
            body, headers = oip_body(row, parameters={"key": k}), {}
        else:
            body, headers = oip_body(row), {"X-Edgeloop-Key": k}
        status, doc, _ = http.request(
            "POST", "/v2/models/sensor/infer", json.dumps(body).encode(), headers
        )
        assert status == 200, doc
        seen[k] = doc["parameters"]["variant"]
        assert doc["model_version"] == seen[k].split("@")[1]
    assert set(seen.values()) == {"sensor@v1", "sensor@v2"}
    # The MQTT path routes the same keys the same way (same router, same buckets).
    for k in list(seen)[:8]:
        assert mqtt_batch(probe, row, key=k)["variant"] == seen[k]
    # A version in the URL bypasses the router.
    for k in list(seen)[:6]:
        status, doc, _ = http.request(
            "POST",
            "/v2/models/sensor/versions/v2/infer",
            json.dumps(oip_body(row)).encode(),
            {"X-Edgeloop-Key": k},
        )
        assert status == 200 and doc["parameters"]["variant"] == "sensor@v2"
    status, doc, _ = http.request(
        "POST", "/v2/models/sensor/versions/v9/infer", json.dumps(oip_body(row)).encode()
    )
    assert status == 404 and doc["error"].startswith("unknown_version: ")


HOSTILE: list[tuple[str, bytes, int, str]] = [
    ("bad json", b'{"inputs": [', 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, "not_an_object"),
    ("deep nesting", b'{"inputs":' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "too_deep"),
    ("utf-16", '{"inputs": []}'.encode("utf-16"), 400, "invalid_encoding"),
    ("not utf-8", b'{"id": "\xff\xfe", "inputs": []}', 400, "invalid_encoding"),
    ("no inputs", b'{"id": "x"}', 400, "missing_features"),
    (
        "bad shape",
        b'{"inputs":[{"name":"a","shape":[1,2,3],"datatype":"FP32","data":[1]}]}',
        400,
        "invalid_features",
    ),
    (
        "shape/data mismatch",
        b'{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1]}]}',
        400,
        "invalid_features",
    ),
    (
        "unknown datatype",
        b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP128","data":[1]}]}',
        400,
        "invalid_features",
    ),
    (
        "wrong datatype",
        b'{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":["x"]}]}',
        400,
        "non_numeric",
    ),
    (
        "int with a fraction",
        b'{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1.5]}]}',
        400,
        "non_numeric",
    ),
]


def _rows_body(rows: list[dict], **over: Any) -> bytes:
    body = oip_body(rows)
    for tensor in body["inputs"]:
        if tensor["name"] in over:
            tensor["data"] = [over[tensor["name"]]] * len(rows)
    return json.dumps(body).encode()


def test_hostile_bodies_get_the_error_form_and_the_agent_keeps_serving(http_agent, probe):
    http, key = http_agent
    strict = strict_model("v1")  # no imputer: NaN must be refused, as on MQTT
    deploy(probe, key, 1, [(strict, strict.entry())])
    rows = [{"a": 0.5, "b": -1.0, "c": 2.0}, {"a": 1.0, "b": 0.0, "c": -2.0}]
    url = "/v2/models/strict/infer"
    nan_body = json.dumps(oip_body(rows)).replace("0.5", "NaN", 1).encode()
    cases = [
        *HOSTILE,
        ("NaN", nan_body, 400, "non_finite"),
        ("Infinity", nan_body.replace(b"NaN", b"-Infinity"), 400, "non_finite"),
        ("missing feature", json.dumps(oip_body([{"a": 1.0}])).encode(), 400, "missing_feature"),
        (
            "unknown feature",
            json.dumps(oip_body([{**rows[0], "zz": 1.0}])).encode(),
            400,
            "unknown_feature",
        ),
        ("float32 overflow", _rows_body(rows, a=1e300), 400, "non_finite"),
        (
            "huge body",
            b'{"inputs": [' + b" " * DEFAULT_MAX_PAYLOAD + b"]}",
            413,
            "payload_too_large",
        ),
        (
            "unknown output",
            json.dumps(oip_body(rows, outputs=[{"name": "secret"}])).encode(),
            400,
            "unknown_output",
        ),
    ]
    before = http.counters()
    for what, body, want_status, code in cases:
        status, doc, headers = http.request("POST", url, body)
        assert status == want_status, (what, status, doc)
        assert set(doc) == {"error"} and doc["error"].startswith(f"{code}: "), (what, doc)
        assert headers["X-Edgeloop-Error"] == code, what
        assert http.agent.alive(), what
    # The same codes over curl (another client, another connection handling).
    status, doc = curl(http, url, nan_body)
    assert status == 400 and doc["error"].startswith("non_finite: ")
    status, doc = curl(http, "/v2/models/pump/infer", json.dumps(oip_body(rows)).encode())
    assert status == 404 and doc["error"].startswith("unknown_model: ")
    # Routes and methods the protocol does not have.
    status, doc, _ = http.request("GET", "/v2/nothing")
    assert status == 404 and doc["error"].startswith("not_found: ")
    # A web page (cross-site, or same-site after DNS rebinding) cannot drive it.
    status, doc, _ = http.request("POST", url, _rows_body(rows), {"Origin": "http://evil.example"})
    assert status == 403 and doc["error"].startswith("origin_refused: ")
    status, doc, _ = http.request("GET", "/v2/models/strict", None, {"Origin": "null"})
    assert status == 403 and doc["error"].startswith("origin_refused: ")
    # What http.server itself refuses comes in the error form too.
    with socket.create_connection(("127.0.0.1", http.port), timeout=10) as raw:
        raw.sendall(b"GET /v2 HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = raw.makefile("rb").read()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"X-Edgeloop-Error: bad_request" in head
    assert json.loads(rest)["error"].startswith("bad_request: ")
    status, doc, _ = http.request("DELETE", "/v2/models/strict")
    assert status == 405 and doc["error"].startswith("method_not_allowed: ")
    # Counted like MQTT refusals (per code), and the agent still answers both paths.
    after = http.counters()
    assert errors_of(after, "non_finite") - errors_of(before, "non_finite") == 4
    assert errors_of(after, "too_deep") - errors_of(before, "too_deep") == 1
    assert errors_of(after, "payload_too_large") - errors_of(before, "payload_too_large") == 1
    assert errors_of(after, "origin_refused") - errors_of(before, "origin_refused") == 1
    status, doc, _ = http.request("POST", url, _rows_body(rows))
    assert status == 200 and len(doc["outputs"][0]["data"]) == 2
    assert "predictions" in mqtt_batch(probe, rows)
    assert http.agent.alive()
    assert math.isfinite(sum(doc["outputs"][1]["data"]))
    assert http.agent.stop() == 0  # a clean stop with the HTTP server running


def test_a_taken_port_stops_the_start_with_one_clear_line(broker, tmp_path: Path, keys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=DEVICE,
            state_dir=tmp_path / "state",
            extra=["--trusted-key", str(keys[1]), "--http", f"127.0.0.1:{port}"],
        ).start()
        assert agent.proc is not None
        assert agent.proc.wait(30) == 1
        agent.stop()
    log = agent.log_path.read_text()
    assert f"http_listen 127.0.0.1:{port}: cannot listen: Address already in use" in log
    assert "Traceback" not in log
