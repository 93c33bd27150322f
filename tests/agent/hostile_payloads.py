"""Hypothesis strategies for what a hostile app can send to an agent's predict and
feedback topics, and a harness that sends them to a real agent through a real
broker and checks what comes back. Used by tests/integration/test_hostile_requests.py
(a few hundred examples) and bench/fuzz_agent_requests.py (tens of thousands).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.wire.names import utf8_problem
from edgeloop_agent.wire.network import BrokerAddress

PREFIX = "edgeloop"
OTHER = "d2"  # a device that exists only as a target

# Topics a reply must never land on; `{d}` is the device under test.
PRODUCT_LEAVES = ("predict", "feedback", "desired", "status", "telemetry", "samples", "labels")


def product_topics(device: str) -> list[str]:
    out = [f"{PREFIX}/{d}/{leaf}" for d in (device, OTHER) for leaf in PRODUCT_LEAVES]
    return [*out, f"{PREFIX}/{device}/events", f"{PREFIX}/models/m/v2", f"{PREFIX}/models/x"]


def reply_topics(device: str, *, mqtt5: bool) -> st.SearchStrategy[str]:
    """Reply topics an app might name: good, forbidden and malformed ones."""
    good = [
        f"{PREFIX}/{device}/replies/app/r1",
        f"{PREFIX}/{device}/predictions",
        "apps/replies",
        "x",
        "/",
    ]
    bad = [
        *product_topics(device),
        f"{PREFIX}/{OTHER}/replies/app",
        f"{PREFIX}/{OTHER}/predictions",
        PREFIX,
        f"{PREFIX}/",
        "$fz/bar",
        "$fz",
        "a/+/b",
        "a/#",
        "#",
        "+",
    ]
    # A Response Topic property is UTF-8 on the wire: no surrogates from a client.
    alphabet = st.characters(
        exclude_categories=("Cs",) if mqtt5 else (), min_codepoint=0, max_codepoint=0x10FFFF
    )
    return st.one_of(
        st.sampled_from(good + bad),
        st.text(alphabet=alphabet, min_size=1, max_size=40),
        st.sampled_from(["a\x01b", "r\x07", "\x7f", "x\u0085", "a\ufffe", "a\x00b"]),
        st.text(min_size=1, max_size=8).map(lambda s: f"{PREFIX}/{device}/{s}"),
        st.text(min_size=1, max_size=8).map(lambda s: f"{PREFIX}/{s}/predict"),
    ).filter(lambda t: not mqtt5 or _broker_forwards(t))


def _broker_forwards(topic: str) -> bool:
    """Mosquitto disconnects a client whose Response Topic breaks the MQTT 5 UTF-8
    rules (control characters, non-characters): such a topic never reaches the
    agent, and the sender would be stuck resending it. Wildcards it forwards."""
    if utf8_problem(topic) is not None:
        return False
    return not topic.startswith("$") or topic.startswith("$fz")


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)

# The demo sensor model's inputs (edgeloop_control.demo.sensors.FEATURES).
FEATURES = (
    "bearing_temp_c",
    "vibration_mm_s",
    "pressure_bar",
    "flow_m3_h",
    "current_a",
    "speed_rpm",
    "ambient_c",
    "humidity_pct",
)


def features_values() -> st.SearchStrategy[Any]:
    number = st.one_of(st.floats(-1e3, 1e3), st.integers(-1000, 1000))
    good = st.fixed_dictionaries({f: number for f in FEATURES})
    return st.one_of(
        good,
        st.lists(number, min_size=0, max_size=8),
        st.dictionaries(st.sampled_from(FEATURES), json_values, max_size=7),
        json_values,
    )


@dataclass
class Case:
    """One message to send: raw payload, optional MQTT 5 response topic, and the id
    a reply must carry (None when the payload has no usable id)."""

    payload: bytes
    response_topic: str | None = None
    expect_id: str | None = None


_ids = itertools.count()


def _unique_id() -> str:
    return f"fz-{next(_ids)}"


@st.composite
def request_cases(draw: Any, device: str, kind: str) -> Case:
    """A predict (``kind='predict'``) or feedback (``'feedback'``) message."""
    response = draw(st.none() | reply_topics(device, mqtt5=True))
    shape = draw(st.sampled_from(["object", "object", "object", "raw", "deep", "encoding"]))
    if shape == "raw":
        raw = draw(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
        return Case(raw, response)
    if shape == "deep":
        depth = draw(st.integers(30, 3000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"id":"x","features":[']))
        return Case((opener * depth).encode(), response)
    body: dict[str, Any] = {}
    use_id = draw(st.booleans() | st.just(True))
    if use_id:
        body["id"] = _unique_id()
    elif draw(st.booleans()):
        body["id"] = draw(json_values)
    if kind == "predict":
        which = draw(st.sampled_from(["features", "rows", "none"]))
        if which == "features":
            body["features"] = draw(features_values())
        elif which == "rows":
            body["rows"] = draw(st.lists(features_values(), max_size=4) | json_values)
        if draw(st.booleans()):
            body["key"] = draw(st.text(max_size=10) | json_values)
    else:
        if draw(st.booleans()):
            body["label"] = draw(st.integers(0, 1) | json_values)
    if draw(st.booleans()):
        body["reply_to"] = draw(reply_topics(device, mqtt5=False) | json_values)
    if draw(st.integers(0, 9)) == 0:
        body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
        use_id = use_id and isinstance(body.get("id"), str) and body["id"].startswith("fz-")
    text = json.dumps(body)  # NaN/Infinity appear as Python writes them
    if shape == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"]))
        try:
            return Case(text.encode(codec), response)
        except UnicodeEncodeError:
            return Case(text.encode(), response, body["id"] if use_id else None)
    return Case(text.encode(), response, body["id"] if use_id else None)


def _own_report(body: Any) -> bool:
    """The agent's own status document or outbox envelope (not a forged reply)."""
    if not isinstance(body, dict):
        return False
    if "online" in body and "device" in body and "id" not in body:
        return True
    return "kind" in body and "device_id" in body


# -- harness -------------------------------------------------------------------


@dataclass
class Outcome:
    sent: dict[str, int] = field(default_factory=lambda: {"predict": 0, "feedback": 0})
    canaries_sent: int = 0
    canaries_answered: int = 0
    expected: dict[str, str] = field(default_factory=dict)  # id -> kind
    answered: set[str] = field(default_factory=set)
    forbidden: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # the agent's own, live
    seen_on_inputs: dict[str, int] = field(default_factory=dict)


class Harness:
    """An app (paho, MQTT 5) that sends fuzz cases and canaries, and a watcher
    subscribed to every topic, which records where the agent published."""

    def __init__(self, url: str, device: str, features: dict[str, float]) -> None:
        self.device = device
        self.features = features
        self.predict = f"{PREFIX}/{device}/predict"
        self.feedback = f"{PREFIX}/{device}/feedback"
        self.canary_topic = f"{PREFIX}/{device}/replies/canary"
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._canary_seen = threading.Condition(self._lock)
        self._forbidden = set(product_topics(device)) - {self.predict, self.feedback}
        addr = BrokerAddress.parse(url)
        self.watcher = self._client(addr, "fz-watcher")
        self.watcher.on_message = self._watch
        for topic in ("#", "$fz/#", "$fz"):
            self.watcher.subscribe(topic, qos=1)
        self.app = self._client(addr, "fz-app")
        time.sleep(0.5)  # subscriptions land before the first case

    @staticmethod
    def _client(addr: BrokerAddress, cid: str) -> mqtt.Client:
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5,
        )
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.connect(addr.host, addr.port, keepalive=30)
        c.loop_start()
        return c

    def _watch(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # retained state delivered on subscribe, not a new publication
        topic = msg.topic
        with self._lock:
            out = self.outcome
            if topic in (self.predict, self.feedback):
                out.seen_on_inputs[topic] = out.seen_on_inputs.get(topic, 0) + 1
                return
            try:
                body = json.loads(msg.payload)
            except ValueError:
                body = None
            if (
                topic in self._forbidden
                or topic.startswith("$")
                or topic.startswith(f"{PREFIX}/{OTHER}/")
            ):
                if topic.startswith(f"{PREFIX}/{self.device}/") and _own_report(body):
                    if topic.endswith("/status"):
                        out.statuses.append(body)
                    return
                out.forbidden.append((topic, msg.payload[:200]))
                return
            rid = body.get("id") if isinstance(body, dict) else None
            if not isinstance(rid, str):
                return
            if topic == self.canary_topic and rid.startswith("canary-"):
                out.canaries_answered += 1
                self._canary_seen.notify_all()
            elif rid in out.expected:
                out.answered.add(rid)

    def reconnects(self) -> int:
        """Times the agent came back online (or was reported lost) while watched."""
        with self._lock:
            return len(self.outcome.statuses)

    def send(self, case: Case, kind: str) -> None:
        props = None
        if case.response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = case.response_topic
            props.CorrelationData = b"fz"
        topic = self.predict if kind == "predict" else self.feedback
        with self._lock:
            self.outcome.sent[kind] += 1
            # A valid feedback is answered only when it cannot be joined: only
            # predict requests must always get a reply.
            if case.expect_id is not None and kind == "predict":
                self.outcome.expected[case.expect_id] = kind
        self.app.publish(topic, case.payload, qos=1, properties=props)

    def canary(self) -> None:
        """A valid request from the same app: it must always be answered."""
        with self._lock:
            n = self.outcome.canaries_sent
            self.outcome.canaries_sent += 1
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.canary_topic
        body = {"id": f"canary-{n}", "features": self.features}
        self.app.publish(self.predict, json.dumps(body), qos=1, properties=props)

    def wait_canaries(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.outcome.canaries_answered < self.outcome.canaries_sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._canary_seen.wait(left)
        return True

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every tracked request is answered (or the time is up)."""
        deadline = time.monotonic() + timeout
        self.canary()
        self.wait_canaries(timeout)
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.outcome.answered) >= len(self.outcome.expected):
                    return
            time.sleep(0.1)

    def unanswered(self) -> list[str]:
        with self._lock:
            return sorted(set(self.outcome.expected) - self.outcome.answered)

    def close(self) -> None:
        for c in (self.app, self.watcher):
            c.disconnect()
            c.loop_stop()
