"""The agent end to end: a real Mosquitto, real agent processes, real models."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop_agent.protocol import DEFAULT_MAX_PAYLOAD
from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.integration.models import Artifact, sample_features, sensor_model, strict_model
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "pump-1"


def publish_deployment(
    probe: Probe, device: str, revision: int, entries: list[tuple[Artifact, dict]]
) -> None:
    for artifact, _ in entries:
        probe.publish(
            f"edgeloop/models/{artifact.name}/{artifact.version}", artifact.data, retain=True
        )
    doc = {"revision": revision, "models": [entry for _, entry in entries]}
    probe.publish(f"edgeloop/{device}/desired", doc, retain=True)


def wait_status(probe: Probe, device: str, predicate, timeout: float = 30.0) -> dict:
    topic = f"edgeloop/{device}/status"
    return probe.wait_for(topic, predicate, timeout)


def start_agent(agents, broker, tmp_path: Path, device: str = DEVICE, extra=None) -> AgentProcess:
    agent = AgentProcess(
        broker_url=broker.url, device_id=device, state_dir=tmp_path / f"state-{device}", extra=extra
    ).start()
    agents.append(agent)
    return agent


@pytest.fixture
def serving(broker: PrivateBroker, probe: Probe, agents, tmp_path: Path):
    """An agent serving sensor@v1, and a probe subscribed to its status and replies."""
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe(f"edgeloop/{DEVICE}/predictions")
    probe.subscribe("replies/#")
    agent = start_agent(agents, broker, tmp_path)
    v1 = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    return agent, v1


def request(probe: Probe, payload, *, response_topic: str = "replies/x", timeout: float = 10.0):
    corr = f"c-{time.monotonic_ns()}".encode()
    probe.publish(
        f"edgeloop/{DEVICE}/predict", payload, response_topic=response_topic, correlation=corr
    )
    while True:
        msg = probe.next(timeout, topic=response_topic)
        if msg.properties.CorrelationData == corr:
            return json.loads(msg.payload)


def test_predict_with_mqtt5_response_topic_and_correlation(serving, probe):
    _, v1 = serving
    features = sample_features(1)[0]
    reply = request(probe, {"id": "r1", "features": features})
    assert reply["id"] == "r1"
    assert reply["model"] == "sensor" and reply["version"] == "v1"
    assert reply["variant"] == "sensor@v1"
    assert reply["prediction"] in (0, 1)
    probs = reply["probabilities"]
    assert set(probs) == {"0", "1"} and math.isclose(sum(probs.values()), 1.0, abs_tol=1e-5)
    assert reply["prediction"] == int(max(probs, key=probs.get))
    assert reply["ms"] >= 0

    # The list form in model order gives the same answer.
    reply_list = request(probe, {"id": "r2", "features": [features[f] for f in v1.features]})
    assert reply_list["probabilities"] == probs


def test_predictions_match_the_control_side_onnx_evaluation(serving, probe):
    import pandas as pd

    from edgeloop_control.training import OnnxPredictor

    _, v1 = serving
    rows = sample_features(20, seed=5)
    reply = request(probe, {"id": "batch", "rows": rows})
    assert len(reply["predictions"]) == 20
    expected = OnnxPredictor(v1.data).predict(pd.DataFrame(rows))
    for i, pred in enumerate(reply["predictions"]):
        assert pred["prediction"] == int(expected.label[i])
        assert pred["probabilities"]["1"] == pytest.approx(
            float(expected.probabilities[i][1]), abs=1e-6
        )


def test_reply_to_for_mqtt311_and_default_topic(serving, broker):
    v311 = Probe(broker.url, protocol=mqtt.MQTTv311)
    try:
        v311.subscribe("legacy/replies")
        v311.subscribe(f"edgeloop/{DEVICE}/predictions")
        features = sample_features(1)[0]
        v311.publish(
            f"edgeloop/{DEVICE}/predict",
            {"id": "old", "features": features, "reply_to": "legacy/replies"},
        )
        reply = json.loads(v311.next(10, topic="legacy/replies").payload)
        assert reply["id"] == "old" and "prediction" in reply
        v311.publish(f"edgeloop/{DEVICE}/predict", {"id": "plain", "features": features})
        reply = json.loads(v311.next(10, topic=f"edgeloop/{DEVICE}/predictions").payload)
        assert reply["id"] == "plain" and "prediction" in reply
    finally:
        v311.close()


def _mosquitto_request(broker, args_pub: list[str], args_sub: list[str], topic: str) -> dict:
    port = str(broker.port)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", port, "-t", topic, "-C", "1", "-W", "15", *args_sub],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the subscription land before the request goes out
    subprocess.run(["mosquitto_pub", "-p", port, "-q", "1", *args_pub], check=True, timeout=15)
    out, _ = sub.communicate(timeout=20)
    assert sub.returncode == 0, "mosquitto_sub got no reply"
    return json.loads(out)


def test_mosquitto_command_line_clients_v311_and_v5(serving, broker):
    features = sample_features(1)[0]
    body = json.dumps({"id": "cli-311", "features": features, "reply_to": "cli/311"})
    reply = _mosquitto_request(
        broker,
        ["-V", "mqttv311", "-t", f"edgeloop/{DEVICE}/predict", "-m", body],
        ["-V", "mqttv311"],
        "cli/311",
    )
    assert reply["id"] == "cli-311" and reply["prediction"] in (0, 1)

    body = json.dumps({"id": "cli-5", "features": features})
    reply = _mosquitto_request(
        broker,
        [
            "-V",
            "mqttv5",
            "-t",
            f"edgeloop/{DEVICE}/predict",
            "-m",
            body,
            "-D",
            "publish",
            "response-topic",
            "cli/v5",
            "-D",
            "publish",
            "correlation-data",
            "abc",
        ],
        ["-V", "mqttv5"],
        "cli/v5",
    )
    assert reply["id"] == "cli-5" and reply["prediction"] in (0, 1)


BAD_REQUESTS = [
    (b"this is not json", None, "invalid_json"),
    (b"\xff\xfe\x00", None, "invalid_encoding"),  # a UTF-16 byte-order mark
    (b"[1, 2, 3]", None, "not_an_object"),
    (b'"just a string"', None, "not_an_object"),
    ({"features": {"a": 1}}, None, "missing_id"),
    ({"id": 42, "features": {}}, None, "invalid_id"),
    ({"id": "no-features"}, "no-features", "missing_features"),
    ({"id": "bad-form", "features": "temp=3"}, "bad-form", "invalid_features"),
    ({"id": "bad-key", "features": {}, "key": 7}, "bad-key", "invalid_key"),
    ({"id": "bad-rows", "rows": []}, "bad-rows", "invalid_features"),
]


@pytest.mark.parametrize(("payload", "rid", "code"), BAD_REQUESTS)
def test_malformed_requests_get_error_replies(serving, probe, payload, rid, code):
    reply = request(probe, payload)
    assert reply["id"] == rid
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]
    # ... and the agent keeps serving.
    ok = request(probe, {"id": "after", "features": sample_features(1)[0]})
    assert "prediction" in ok


def test_feature_level_errors_name_the_offender(serving, probe):
    agent, v1 = serving
    good = sample_features(1)[0]
    cases = []
    missing = dict(good)
    del missing["vibration_mm_s"]
    cases.append(({"id": "m", "features": missing}, "missing_feature", "vibration_mm_s"))
    cases.append(({"id": "u", "features": {**good, "colour": 3}}, "unknown_feature", "colour"))
    cases.append(({"id": "c", "features": [1.0, 2.0]}, "wrong_feature_count", "expects 8"))
    cases.append(
        ({"id": "s", "features": {**good, "pressure_bar": "high"}}, "non_numeric", "pressure_bar")
    )
    cases.append(
        ({"id": "b", "features": {**good, "pressure_bar": True}}, "non_numeric", "pressure_bar")
    )
    cases.append(({"id": "o", "features": {**good, "flow_m3_h": 1e300}}, "non_finite", "flow_m3_h"))
    cases.append(
        ({"id": "r", "rows": [good, {**good, "speed_rpm": "x"}]}, "non_numeric", "rows[1]")
    )
    for payload, code, needle in cases:
        reply = request(probe, payload)
        assert reply["id"] == payload["id"]
        assert reply["error"]["code"] == code, reply
        assert needle in reply["error"]["message"], reply
    # Infinity as Python's json writes it: never accepted.
    body = json.dumps({"id": "inf", "features": {**good, "ambient_c": float("inf")}})
    reply = request(probe, body)
    assert reply["error"]["code"] == "non_finite" and "ambient_c" in reply["error"]["message"]
    # This pipeline imputes, so its metadata declares missing values legal.
    assert v1.data and request(probe, {"id": "null", "features": {**good, "current_a": None}})[
        "prediction"
    ] in (0, 1)
    body = json.dumps({"id": "nan", "features": {**good, "current_a": float("nan")}})
    assert "prediction" in request(probe, body)
    assert agent.alive()


def test_nan_refused_by_a_model_without_imputation(broker, probe, agents, tmp_path):
    probe.subscribe("edgeloop/strict-1/status")
    probe.subscribe("replies/#")
    start_agent(agents, broker, tmp_path, device="strict-1")
    model = strict_model()
    publish_deployment(probe, "strict-1", 1, [(model, model.entry())])
    wait_status(probe, "strict-1", lambda s: s.get("revision") == 1)
    for rid, value in (("nan", float("nan")), ("null", None), ("inf", float("-inf"))):
        body = json.dumps({"id": rid, "features": {"a": 1.0, "b": value, "c": 0.5}})
        probe.publish("edgeloop/strict-1/predict", body, response_topic="replies/strict")
        reply = json.loads(probe.next(10, topic="replies/strict").payload)
        assert reply["id"] == rid and reply["error"]["code"] == "non_finite", reply
        assert '"b"' in reply["error"]["message"]


def test_oversized_payload_is_refused(serving, probe):
    big = {"id": "huge", "features": sample_features(1)[0], "pad": "x" * DEFAULT_MAX_PAYLOAD}
    reply = request(probe, big)
    assert reply["error"]["code"] == "payload_too_large"
    assert str(DEFAULT_MAX_PAYLOAD) in reply["error"]["message"]
    assert "prediction" in request(probe, {"id": "ok", "features": sample_features(1)[0]})


def test_no_model_loaded_yet(broker, probe, agents, tmp_path):
    probe.subscribe("replies/#")
    probe.subscribe("edgeloop/fresh/status")
    start_agent(agents, broker, tmp_path, device="fresh")
    status = wait_status(probe, "fresh", lambda s: s.get("online"))
    assert status["state"] == "no_model" and status["models"] == []
    corr = b"n1"
    probe.publish(
        "edgeloop/fresh/predict",
        {"id": "early", "features": [1]},
        response_topic="replies/n",
        correlation=corr,
    )
    reply = json.loads(probe.next(10, topic="replies/n").payload)
    assert reply == {
        "id": "early",
        "error": {"code": "no_model", "message": "no model is loaded on this device yet"},
    }


def test_tampered_artifact_is_refused_and_old_model_keeps_serving(serving, probe):
    agent, _v1 = serving
    v2 = sensor_model("v2", algo="rf")
    tampered = bytearray(v2.data)
    tampered[len(tampered) // 2] ^= 0xFF
    probe.publish("edgeloop/models/sensor/v2", bytes(tampered), retain=True)
    probe.publish(
        f"edgeloop/{DEVICE}/desired", {"revision": 2, "models": [v2.entry()]}, retain=True
    )
    status = wait_status(probe, DEVICE, lambda s: s.get("error") is not None)
    assert status["error"]["code"] == "artifact_sha256_mismatch"
    assert status["revision"] == 1 and status["models"][0]["version"] == "v1"
    reply = request(probe, {"id": "still", "features": sample_features(1)[0]})
    assert reply["version"] == "v1"
    # The tampered bytes never reached the state directory.
    assert not list((agent.state_dir / "models").glob("sensor@v2-*"))


def test_model_that_fails_to_load_is_reported(serving, probe):
    _, v1 = serving
    junk = Artifact("sensor", "v9", b"\x08\x07definitely not an onnx model", v1.features)
    publish_deployment(probe, DEVICE, 2, [(junk, junk.entry())])
    status = wait_status(probe, DEVICE, lambda s: s.get("error") is not None)
    assert status["error"]["code"] == "model_load_failed"
    assert request(probe, {"id": "x", "features": sample_features(1)[0]})["version"] == "v1"


def test_invalid_desired_state_is_reported(serving, probe):
    probe.publish(f"edgeloop/{DEVICE}/desired", b"{not json", retain=True)
    status = wait_status(probe, DEVICE, lambda s: s.get("error") is not None)
    assert status["error"]["code"] == "invalid_desired_state"
    probe.publish(
        f"edgeloop/{DEVICE}/desired", {"revision": 3, "models": [{"name": "sensor"}]}, retain=True
    )
    status = wait_status(
        probe,
        DEVICE,
        lambda s: "models[0].version" in ((s.get("error") or {}).get("message") or ""),
    )
    assert status["revision"] == 1
    assert request(probe, {"id": "x", "features": sample_features(1)[0]})["version"] == "v1"


def test_swap_to_new_version_without_failing_requests(serving, probe):
    _, _v1 = serving
    v2 = sensor_model("v2", algo="rf")
    features = sample_features(1)[0]
    # Fire requests continuously while the swap happens; every one must succeed.
    ids = [f"s{i}" for i in range(300)]
    publish_deployment(probe, DEVICE, 2, [(v2, v2.entry())])
    for rid in ids:
        probe.publish(
            f"edgeloop/{DEVICE}/predict",
            {"id": rid, "features": features},
            response_topic="replies/swap",
        )
        time.sleep(0.005)
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(ids) and time.monotonic() < deadline:
        msg = probe.next(30, topic="replies/swap")
        body = json.loads(msg.payload)
        seen[body["id"]] = body
    assert set(seen) == set(ids)
    assert all("prediction" in r for r in seen.values()), [
        r for r in seen.values() if "error" in r
    ][:3]
    versions = [seen[rid]["version"] for rid in ids]
    assert versions[-1] == "v2"
    # Once switched, it stays switched: replies are in order, so no v1 after the first v2.
    first_v2 = versions.index("v2")
    assert all(v == "v2" for v in versions[first_v2:])


def test_restart_serves_last_good_model_and_loses_no_request(
    serving, probe, broker, agents, tmp_path
):
    agent, _v1 = serving
    assert agent.stop() == 0
    status = wait_status(probe, DEVICE, lambda s: s.get("online") is False)
    assert status["reason"] == "stopped"
    # Requests sent while the agent is down wait in its persistent session.
    features = sample_features(1)[0]
    ids = [f"down-{i}" for i in range(50)]
    for rid in ids:
        probe.publish(
            f"edgeloop/{DEVICE}/predict",
            {"id": rid, "features": features},
            response_topic="replies/down",
        )
    # The broker is gone when the agent comes back: it must still load v1 from disk.
    broker.stop()
    restarted = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=agent.state_dir
    ).start()
    agents.append(restarted)
    deadline = time.monotonic() + 20
    while "restored deployment revision 1" not in restarted.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "restored deployment revision 1" in restarted.log()
    broker.start()
    fresh = Probe(broker.url)
    try:
        fresh.subscribe("replies/down")
        # The probe's own session was lost with the broker restart? No: Mosquitto
        # persisted it, but a fresh subscriber is simplest to reason about.
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < len(ids) and time.monotonic() < deadline:
            try:
                body = json.loads(fresh.next(5, topic="replies/down").payload)
            except Exception:
                break
            got[body["id"]] = body
        assert set(got) == set(ids)
        assert all(r["version"] == "v1" for r in got.values())
    finally:
        fresh.close()


def test_agent_process_stays_lean(serving):
    agent, _ = serving
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    for heavy in ("sklearn", "pandas", "pyarrow", "scipy", "skl2onnx", "mlflow", "dvc"):
        assert f"/{heavy}/" not in maps, f"the agent loaded {heavy}"
    # And the import list, from the process's own view.
    environ = Path(f"/proc/{agent.pid}/cmdline").read_bytes()
    assert b"edgeloop-agent" in environ
