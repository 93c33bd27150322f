"""Hostile predict and feedback messages against a real agent and a real Mosquitto.

Each test here reproduces an item of issue 8 ("requests and feedback from hostile
apps") that the agent got wrong: a reply topic that got the agent disconnected for
good, a bad message that silently dropped its micro-batch neighbours, replies
published wherever a request asked, and JSON the parser choked on. The last test
runs a small hypothesis fuzz suite; bench/fuzz_agent_requests.py runs a long one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.agent.hostile_payloads import Harness, request_cases
from tests.integration.models import Artifact, sample_features, sensor_model
from tests.integration.test_agent_e2e import publish_deployment, wait_status
from tests.integration.test_systemd import AuthProbe, site_broker  # noqa: F401 - a fixture
from tests.integration.test_systemd import drain as drain_for
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "d1"
PREDICT = f"edgeloop/{DEVICE}/predict"
FEEDBACK = f"edgeloop/{DEVICE}/feedback"
PREDICTIONS = f"edgeloop/{DEVICE}/predictions"
ERRORS = f"edgeloop/{DEVICE}/errors"
REPLIES = f"edgeloop/{DEVICE}/replies/app"


@dataclass
class Env:
    broker: PrivateBroker
    agent: AgentProcess
    model: Artifact
    root: Path


def start(root: Path, *, config: str | None = None) -> tuple[PrivateBroker, AgentProcess]:
    broker = PrivateBroker(root / "broker").start()
    extra = ["--telemetry-interval", "1", "--capture-rate", "0"]
    if config is not None:
        path = root / "agent.toml"
        path.write_text(config)
        extra += ["--config", str(path)]
    agent = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=root / "state", extra=extra
    ).start()
    return broker, agent


def deploy(broker: PrivateBroker, model: Artifact) -> None:
    probe = Probe(broker.url)
    try:
        probe.subscribe(f"edgeloop/{DEVICE}/status")
        publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
        wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    finally:
        probe.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One broker and one serving agent for the whole module: every test sends
    requests only, and each must leave the agent serving for the next."""
    root = tmp_path_factory.mktemp("hostile")
    broker, agent = start(root)
    try:
        model = sensor_model("v1")
        deploy(broker, model)
        yield Env(broker, agent, model, root)
    finally:
        agent.kill()
        broker.stop()


@pytest.fixture
def app(env: Env) -> Iterator[Probe]:
    """An app subscribed to every topic (so it also sees replies that went astray)."""
    p = Probe(env.broker.url)
    p.subscribe("#")
    p.subscribe("$foo/#")
    try:
        yield p
    finally:
        p.close()


def features() -> dict[str, float]:
    return sample_features(1)[0]


def replies_on(app: Probe, topic: str, quiet: float = 1.5) -> list[dict]:
    """Every message on ``topic`` until nothing arrives for ``quiet`` seconds."""
    out = []
    while True:
        try:
            msg = app.next(quiet, topic=topic)
        except (TimeoutError, Exception):
            return out
        out.append(json.loads(msg.payload))


def drain(app: Probe, quiet: float = 1.0) -> list[mqtt.MQTTMessage]:
    out = []
    while True:
        try:
            out.append(app.messages.get(timeout=quiet))
        except Exception:
            return out


def is_reply(payload: bytes) -> bool:
    """A reply or error reply from the agent (not a request, status or telemetry)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and ("model" in body or "error" in body)
        and "online" not in body
        and "kind" not in body
    )


def assert_serving(app: Probe, rid: str) -> None:
    """A valid request is answered on an allowed topic: the agent is still up and
    connected."""
    app.publish(PREDICT, {"id": rid, "features": features()}, response_topic=REPLIES)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        msg = app.next(deadline - time.monotonic(), topic=REPLIES)
        body = json.loads(msg.payload)
        if body.get("id") == rid:
            assert "prediction" in body, body
            return
    raise AssertionError(f"no reply to {rid}")


def test_control_character_in_reply_to_gets_an_error_and_the_agent_stays_online(env, app):
    for i, bad in enumerate(["r\x01", "r\x07", "a\x00b", "x\x7f"]):
        app.publish(PREDICT, {"id": f"ctl-{i}", "features": features(), "reply_to": bad})
        err = app.next_json(10, topic=PREDICTIONS)
        assert err["id"] == f"ctl-{i}"
        assert err["error"]["code"] == "invalid_reply_to", err
        assert "control character" in err["error"]["message"] or "U+0000" in err["error"]["message"]
    # The same for feedback: the error goes to the errors topic.
    app.publish(FEEDBACK, {"id": "fb-ctl", "label": 1, "reply_to": "r\x01"})
    err = app.next_json(10, topic=ERRORS)
    assert err["id"] == "fb-ctl" and err["error"]["code"] == "invalid_reply_to"
    # No disconnect/reconnect loop: the status never flipped, the agent serves.
    statuses = [m for m in drain(app) if m.topic == f"edgeloop/{DEVICE}/status"]
    assert statuses == []
    assert_serving(app, "after-ctl")
    assert env.agent.alive()


@pytest.mark.parametrize("where", ["reply_to", "response_topic"])
def test_one_bad_reply_topic_never_costs_its_micro_batch_neighbours(env, app, where):
    """A lone surrogate in reply_to, or '+'/'#' in an MQTT 5 Response Topic (which
    Mosquitto forwards), arrive in the same micro-batch as 40 valid requests from
    another client: each valid one gets its reply, the bad one its error."""
    other = Probe(env.broker.url)
    try:
        other.subscribe("other/replies")
        bad = {"id": "bad", "features": features()}
        bad_topics = ["a/\ud800"] if where == "reply_to" else ["a/+/b", "a/#"]
        client = other.client
        for n, topic in enumerate(bad_topics):
            props = None
            body = dict(bad, id=f"bad-{n}")
            if where == "reply_to":
                body["reply_to"] = topic
            else:
                props = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
                props.ResponseTopic = topic
            # Queued without waiting, with the valid ones right behind: one burst.
            client.publish(PREDICT, json.dumps(body), qos=1, properties=props)
            for i in range(40):
                props = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
                props.ResponseTopic = "other/replies"
                ok = {"id": f"ok-{n}-{i}", "features": features()}
                client.publish(PREDICT, json.dumps(ok), qos=1, properties=props)
        got = other.collect(40 * len(bad_topics), timeout=20)
        assert sorted(r["id"] for r in got) == sorted(
            f"ok-{n}-{i}" for n in range(len(bad_topics)) for i in range(40)
        )
        assert all("prediction" in r for r in got)
        errors = [json.loads(app.next(10, topic=PREDICTIONS).payload) for _ in bad_topics]
        assert {e["id"] for e in errors} == {f"bad-{n}" for n in range(len(bad_topics))}
        assert {e["error"]["code"] for e in errors} == {"invalid_reply_to"}
    finally:
        other.close()
    assert_serving(app, f"after-batch-{where}")


FORBIDDEN = [
    f"edgeloop/{DEVICE}/predict",
    f"edgeloop/{DEVICE}/feedback",
    f"edgeloop/{DEVICE}/desired",
    f"edgeloop/{DEVICE}/status",
    f"edgeloop/{DEVICE}/telemetry",
    "edgeloop/d2/predict",
    "edgeloop/d2/desired",
    "edgeloop/d2/feedback",
    "edgeloop/d2/status",
    "edgeloop/d2/replies/other-app",
    "edgeloop/models/m/v2",
    "$foo/bar",
]


@pytest.mark.parametrize("kind", ["predict", "feedback"])
@pytest.mark.parametrize("where", ["reply_to", "response_topic"])
def test_replies_never_land_on_the_products_own_topics(env, app, kind, where):
    topic_in = PREDICT if kind == "predict" else FEEDBACK
    default = PREDICTIONS if kind == "predict" else ERRORS
    for i, target in enumerate(FORBIDDEN):
        rid = f"{kind}-{where}-{i}"
        body: dict = {"id": rid}
        if kind == "predict":
            body["features"] = features()
        else:
            body["label"] = 1
        if where == "reply_to":
            body["reply_to"] = target
            app.publish(topic_in, body)
        else:
            app.publish(topic_in, body, response_topic=target, correlation=rid.encode())
        err = app.next_json(10, topic=default)
        assert err["id"] == rid, err
        assert err["error"]["code"] == "reply_to_refused", err
    seen = drain(app)
    for target in FORBIDDEN:
        forged = [m.payload for m in seen if m.topic == target and is_reply(m.payload)]
        assert forged == [], (target, forged)
    assert_serving(app, f"after-forbidden-{kind}-{where}")


def test_allowed_reply_topics_still_work(env, app):
    cases = [(REPLIES + "/r1", True), ("apps/legacy/replies", False), (PREDICTIONS, False)]
    for i, (topic, mqtt5) in enumerate(cases):
        body = {"id": f"allowed-{i}", "features": features()}
        if mqtt5:
            app.publish(PREDICT, body, response_topic=topic, correlation=b"c1")
        else:
            app.publish(PREDICT, dict(body, reply_to=topic))
        msg = app.next(10, topic=topic)
        reply = json.loads(msg.payload)
        assert reply["id"] == f"allowed-{i}" and "prediction" in reply
        if mqtt5:
            assert msg.properties.CorrelationData == b"c1"


@pytest.mark.parametrize("kind", ["predict", "feedback"])
def test_deep_nesting_and_foreign_encodings_get_clear_errors(env, app, kind):
    topic_in = PREDICT if kind == "predict" else FEEDBACK
    default = PREDICTIONS if kind == "predict" else ERRORS
    valid = {"id": "enc", "features": features()} if kind == "predict" else {"id": "e", "label": 1}
    text = json.dumps(valid)
    cases = [
        (b"[" * 1000 + b"]" * 1000, "too_deep"),
        (b'{"id":"deep","features":' + b"[" * 5000, "too_deep"),
        (b'{"a":' * 2000, "too_deep"),
        (text.encode("utf-16"), "invalid_encoding"),
        (text.encode("utf-16-le"), "invalid_encoding"),
        (text.encode("utf-32"), "invalid_encoding"),
        (text.encode("utf-8-sig"), "invalid_encoding"),
        (b'{"id":"\xed\xa0\x80","label":1}', "invalid_encoding"),  # an encoded surrogate
        (b'{"id":"\xff"}', "invalid_encoding"),
    ]
    for payload, code in cases:
        app.publish(topic_in, payload)
        err = app.next_json(10, topic=default)
        assert err["error"]["code"] == code, (payload[:40], err)
    assert_serving(app, f"after-encodings-{kind}")


def test_refusals_are_counted_by_code_in_telemetry(env, app):
    app.publish(PREDICT, {"id": "count-1", "features": features(), "reply_to": "edgeloop/d2/x"})
    app.next_json(10, topic=PREDICTIONS)
    app.publish(PREDICT, b"[" * 1000)
    app.next_json(10, topic=PREDICTIONS)
    deadline = time.monotonic() + 20
    seen: set[str] = set()
    while time.monotonic() < deadline and not {"reply_to_refused", "too_deep"} <= seen:
        msg = app.next(20, topic=f"edgeloop/{DEVICE}/telemetry")
        for code in ("reply_to_refused", "too_deep"):
            if f'"{code}"'.encode() in msg.payload:
                seen.add(code)
    assert {"reply_to_refused", "too_deep"} <= seen


@pytest.mark.parametrize("kind", ["predict", "feedback"])
def test_fuzzed_requests_never_crash_lose_or_misroute(env, kind):
    """A few hundred hypothesis-generated messages, interleaved with valid canary
    requests; nothing crashes, every canary and every request with a usable id is
    answered, nothing is published on a product topic, the agent never reconnects."""
    harness = Harness(env.broker.url, DEVICE, features())
    try:

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=request_cases(DEVICE, kind))
        def one(case) -> None:
            harness.send(case, kind)
            if harness.outcome.sent[kind] % 10 == 0:
                harness.canary()

        one()
        harness.settle(timeout=30)
        out = harness.outcome
        assert harness.wait_canaries(10), (out.canaries_sent, out.canaries_answered)
        assert harness.unanswered() == []
        assert out.forbidden == []
        assert harness.reconnects() == 0, out.statuses
        sent_in = out.sent[kind]
        assert out.seen_on_inputs.get(PREDICT if kind == "predict" else FEEDBACK) == (
            sent_in + (out.canaries_sent if kind == "predict" else 0)
        )
    finally:
        harness.close()
    assert env.agent.alive()


def test_reply_policy_from_the_agent_config(tmp_path):
    """Operators narrow the policy in the agent's TOML; a bad policy stops the agent
    at start with one clear error."""
    config = (
        'reply_topics = ["{prefix}/{device}/predictions", "{prefix}/{device}/errors", '
        '"{prefix}/shared/+/replies"]\nreply_outside_prefix = false\n'
        # This test publishes hand-made desired state (the signed path has its own).
        "allow_unsigned = true\n"
    )
    broker, agent = start(tmp_path, config=config)
    try:
        deploy(broker, sensor_model("v1"))
        app = Probe(broker.url)
        try:
            app.subscribe("#")
            app.publish(PREDICT, {"id": "p1", "features": features(), "reply_to": "apps/x"})
            err = app.next_json(10, topic=PREDICTIONS)
            assert err["error"]["code"] == "reply_to_refused"
            assert "reply_outside_prefix" in err["error"]["message"]
            # The shipped default subtree is not in this operator's list.
            app.publish(PREDICT, {"id": "p2", "features": features()}, response_topic=REPLIES)
            assert app.next_json(10, topic=PREDICTIONS)["error"]["code"] == "reply_to_refused"
            app.publish(
                PREDICT,
                {"id": "p3", "features": features()},
                response_topic="edgeloop/shared/a1/replies",
            )
            reply = app.next_json(10, topic="edgeloop/shared/a1/replies")
            assert reply["id"] == "p3" and "prediction" in reply
        finally:
            app.close()
    finally:
        agent.kill()
        broker.stop()

    bad = tmp_path / "bad.toml"
    for text, needle in [
        ('reply_topics = ["{prefix}/{device}/a#"]\n', "'#' must be a whole level"),
        ('reply_topics = ["replies/#"]\n', "must lie under the topic prefix"),
        ('reply_topics = ["{prefix}/{nope}"]\n', "placeholders"),
        ("reply_topics = 3\n", "reply_topics must be a list"),
    ]:
        bad.write_text(text)
        proc = AgentProcess(
            broker_url="mqtt://127.0.0.1:1",
            device_id=DEVICE,
            state_dir=tmp_path / "bad-state",
            extra=["--config", str(bad)],
        ).start()
        assert proc.proc is not None
        assert proc.proc.wait(30) == 2
        proc.stop()
        assert needle in proc.log(), proc.log()


def test_under_the_shipped_acl_an_app_cannot_make_a_device_write_its_own_topics(
    site_broker,  # noqa: F811 - the fixture imported from test_systemd
    agents,
    tmp_path,
):
    """The issue's reproduction: an app that may only write edgeloop/+/predict made
    pump-1 publish on its own desired, status and telemetry (the ACL lets a device
    write its whole subtree). Now each such request gets an error on the device's
    predictions topic and nothing else is published."""
    port = site_broker.port
    control = AuthProbe(port, "edgeloop-control", "pw-edgeloop-control")
    app = AuthProbe(port, "app-dashboard", "pw-app-dashboard")
    try:
        agent = AgentProcess(
            broker_url=f"mqtt://pump-1:pw-pump-1@127.0.0.1:{port}",
            device_id="pump-1",
            state_dir=tmp_path / "state",
        )
        agents.append(agent.start())
        control.subscribe("edgeloop/pump-1/status")
        v1 = sensor_model("v1")
        publish_deployment(control, "pump-1", 1, [(v1, v1.entry())])
        control.wait_for("edgeloop/pump-1/status", lambda s: s.get("revision") == 1, 30)
        control.subscribe("edgeloop/pump-1/#")
        drain_for(control, 1.0)  # retained status/desired

        targets = ["desired", "status", "telemetry", "samples", "feedback", "predict"]
        for leaf in targets:
            body = {"id": f"acl-{leaf}", "features": features()}
            app.publish("edgeloop/pump-1/predict", body, response_topic=f"edgeloop/pump-1/{leaf}")
            app.publish(
                "edgeloop/pump-1/predict",
                dict(body, id=f"acl311-{leaf}", reply_to=f"edgeloop/pump-1/{leaf}"),
            )
        seen = drain_for(control, 3.0)
        errors = [json.loads(m.payload) for m in seen if m.topic == "edgeloop/pump-1/predictions"]
        assert sorted(e["id"] for e in errors) == sorted(
            f"{p}-{leaf}" for p in ("acl", "acl311") for leaf in targets
        )
        assert {e["error"]["code"] for e in errors} == {"reply_to_refused"}
        for m in seen:
            if m.topic.rsplit("/", 1)[-1] in targets:
                assert not is_reply(m.payload), (m.topic, m.payload)
        # The route the ACL gives apps still works.
        reply_topic = "edgeloop/pump-1/replies/app-dashboard/1"
        app.subscribe(reply_topic)
        app.publish(
            "edgeloop/pump-1/predict",
            {"id": "ok", "features": features()},
            response_topic=reply_topic,
        )
        assert json.loads(app.next(10, topic=reply_topic).payload)["id"] == "ok"
    finally:
        control.close()
        app.close()
