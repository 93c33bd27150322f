"""The shipped broker configuration, attacked.

A real Mosquitto runs packaging/mosquitto-edgeloop.conf (ports and file paths moved,
nothing else) with packaging/edgeloop.acl copied verbatim, a password file made by
mosquitto_passwd and TLS certificates made here. A real agent serves over TLS; a
hostile app, a hostile device, a device id that collides with a reserved topic level
and a curious app try what the ACL forbids. Mosquitto 2.0 answers a refused QoS 1
publish with PUBACK 0x87 (Not authorized) and grants every subscription (SUBACK
0x01) but checks each delivery, so each refusal is asserted twice: on the reason
code where there is one, and by a privileged observer (the control user, reading
``edgeloop/#``) or the subscriber itself seeing that nothing landed.

Then the agent against broken TLS: an untrusted CA, a certificate for another host
name, a self-signed one. Each is one clear log line, not one per retry, and the
agent keeps retrying until the broker is fixed.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.config import AgentConfig
from edgeloop_agent.wire.network import tls_options
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import AgentProcess
from tests.pki import CertificateAuthority, self_signed
from tests.shipped_broker import SHIPPED_ACL, ShippedBroker, password

NOT_AUTHORIZED = 0x87
DEVICES = ["d1", "d2"]
APPS = ["app-dashboard", "app-mallory"]
USERS = ["edgeloop-control", *DEVICES, *APPS, "models"]


def app_section(name: str) -> str:
    """The shipped app-dashboard section, copied for another app as the ACL says."""
    text = SHIPPED_ACL.read_text()
    section = text[text.index("user app-dashboard") :]
    return "\n" + section.replace("app-dashboard", name)


class Client:
    """A paho MQTT 5 client over TLS that records PUBACK reason codes and messages."""

    def __init__(
        self, broker: ShippedBroker, user: str | None, pw: str | None = None, *, ok: bool = True
    ) -> None:
        self.user = user
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(**tls_options(str(broker.ca.cert)))
        if user is not None:
            self.client.username_pw_set(user, password(user) if pw is None else pw)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self._acked = threading.Condition()
        self._connack = threading.Event()
        self.reason: Any = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.on_publish = self._on_publish
        self.client.connect("localhost", broker.tls_port, keepalive=30)
        self.client.loop_start()
        assert self._connack.wait(10), f"no CONNACK for {user}"
        if ok:
            assert self.accepted, f"{user} refused: {self.reason}"

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self._connack.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = reason.value
            self._acked.notify_all()

    def publish(
        self,
        topic: str,
        payload: bytes | dict[str, Any],
        *,
        retain: bool = False,
        response_topic: str | None = None,
    ) -> int:
        """Publish with QoS 1; the PUBACK's reason code."""
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.pubacks, 30), topic
            return self.pubacks[info.mid]

    def subscribe(self, *filters: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(f, 1) for f in filters])
        assert done.wait(10)

    def drain(self, seconds: float) -> list[mqtt.MQTTMessage]:
        out: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                out.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                break
        return out

    def reply(self, topic: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            msg = self.messages.get(timeout=remaining)
            if msg.topic == topic:
                return json.loads(msg.payload)
        raise TimeoutError(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[ShippedBroker]:
    broker = ShippedBroker(tmp_path / "broker", USERS)
    broker.write_config()
    acl = broker.workdir / "edgeloop.acl"
    broker.write_config = lambda: broker.config_path  # type: ignore[method-assign]
    acl.write_text(acl.read_text() + app_section("app-mallory"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def start_agent(agents: list[AgentProcess], broker: ShippedBroker, tmp_path: Path, **kw: Any):
    agent = AgentProcess(
        broker_url=broker.tls_url("d1"),
        device_id="d1",
        state_dir=tmp_path / "state-d1",
        extra=["--ca-file", str(broker.ca.cert), *kw.get("extra", [])],
    )
    agents.append(agent.start())
    return agent


def test_shipped_acl_refuses_hostile_and_curious_clients(site, agents, tmp_path: Path):
    clients: list[Client] = []

    def login(user: str | None, pw: str | None = None, *, ok: bool = True) -> Client:
        clients.append(Client(site, user, pw, ok=ok))
        return clients[-1]

    try:
        assert not login(None, ok=False).accepted  # allow_anonymous false
        assert not login("d1", "wrong", ok=False).accepted

        control = login("edgeloop-control")
        control.subscribe("edgeloop/#")
        agent = start_agent(agents, site, tmp_path, extra=["--telemetry-interval", "0.5"])
        v1 = sensor_model("v1")
        assert control.publish("edgeloop/models/sensor/v1", v1.data, retain=True) == 0
        desired = {"revision": 1, "models": [v1.entry()]}
        assert control.publish("edgeloop/d1/desired", desired, retain=True) == 0
        deadline = time.monotonic() + 30
        while True:  # the agent, over TLS with --ca-file, deploys what the control node set
            msg = control.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.topic == "edgeloop/d1/status" and json.loads(msg.payload).get("revision") == 1:
                break

        # The curious app is the legitimate dashboard, looking at everything it can.
        dashboard = login("app-dashboard")
        dashboard.subscribe("#", "$SYS/#", "edgeloop/models/#", "edgeloop/d1/desired")
        mallory = login("app-mallory")
        d2 = login("d2")
        reserved = login("models")
        features = sample_features(1)[0]

        # A request the dashboard sends answers on its own reply topic.
        mine = f"edgeloop/d1/replies/app-dashboard/{uuid.uuid4().hex}"
        request = {"id": "ok-1", "features": features}
        assert dashboard.publish("edgeloop/d1/predict", request, response_topic=mine) == 0
        assert "prediction" in dashboard.reply(mine)

        # -- the hostile app ----------------------------------------------------------
        mallory.subscribe(
            "edgeloop/models/#",
            "edgeloop/d1/predict",
            "edgeloop/d1/desired",
            "edgeloop/d1/telemetry",
            "edgeloop/+/replies/app-dashboard/#",
        )
        refused = {
            "edgeloop/d1/desired": True,
            "edgeloop/d1/status": True,
            "edgeloop/d1/telemetry": True,
            "edgeloop/models/sensor/v2": True,
            mine: False,  # a forged reply straight into the dashboard's reply topic
            "edgeloop/app-mallory/status": False,  # posing as a device of its own name
        }
        for topic, retain in refused.items():
            assert mallory.publish(topic, b"FORGED by mallory", retain=retain) == NOT_AUTHORIZED
        # ...and through the agent: a request whose reply is to land on d1's desired.
        forged = {"id": "FORGED-desired", "features": features}
        rt = "edgeloop/d1/desired"
        assert mallory.publish("edgeloop/d1/predict", forged, response_topic=rt) == 0
        # A legitimate request of mallory's own is served: the ACL is not refusing all.
        own = "edgeloop/d1/replies/app-mallory/1"
        mallory.subscribe(own)
        ok = {"id": "mallory-ok", "features": features}
        assert mallory.publish("edgeloop/d1/predict", ok, response_topic=own) == 0
        assert mallory.reply(own)["id"] == "mallory-ok"

        # -- the hostile device -------------------------------------------------------
        d2.subscribe("edgeloop/d1/#", "edgeloop/+/replies/#", "edgeloop/+/telemetry")
        for topic in [
            "edgeloop/d2/desired",  # its own desired state: only the control node sets it
            "edgeloop/d1/desired",
            "edgeloop/d1/status",
            "edgeloop/d1/predict",
            "edgeloop/d1/replies/app-dashboard/x",
            "edgeloop/models/sensor/v2",
        ]:
            assert d2.publish(topic, b"FORGED by d2", retain=True) == NOT_AUTHORIZED, topic
        assert d2.publish("edgeloop/d2/status", {"device": "d2", "online": True}) == 0

        # -- a broker user named after a reserved topic level ---------------------------
        # The pattern edgeloop/%u/replies/# would let "models" write edgeloop/models/...
        reserved.subscribe("#")
        for topic in ["edgeloop/models/replies/v1", "edgeloop/models/status"]:
            assert reserved.publish(topic, b"FORGED by models", retain=True) == NOT_AUTHORIZED

        # Traffic d2, mallory and the curious dashboard must not see, while they look.
        second = f"edgeloop/d1/replies/app-dashboard/{uuid.uuid4().hex}"
        request = {"id": "ok-2", "features": features}
        assert dashboard.publish("edgeloop/d1/predict", request, response_topic=second) == 0
        seen = control.drain(2.0)

        # The observer saw no forged message land anywhere (mallory's request itself
        # on d1/predict is allowed; its reply must not reach d1/desired).
        landed = [m for m in seen if b"FORGED" in m.payload]
        assert [m.topic for m in landed if m.topic != "edgeloop/d1/predictions"] == [
            "edgeloop/d1/predict"
        ]
        # The agent refused the reply topic itself: the error went to its default topic.
        for m in landed:
            if m.topic == "edgeloop/d1/predictions":
                assert json.loads(m.payload)["error"]["code"] == "reply_to_refused"
        seen_topics = {m.topic for m in seen}
        assert "edgeloop/d1/telemetry" in seen_topics  # it does see what flows
        assert second in seen_topics
        assert "edgeloop/d2/status" in seen_topics

        # Mallory read nothing: no artifact, no request (so no reply topic to aim at),
        # no desired state, no telemetry, none of the dashboard's replies.
        assert [m.topic for m in mallory.drain(0.5) if m.topic != own] == []
        # d2 read nothing of d1's, nor anyone's replies or telemetry.
        assert [m.topic for m in d2.drain(0.1)] == []
        # "models" got nothing at all, the retained artifact included.
        assert [m.topic for m in reserved.drain(0.1)] == []
        # The curious dashboard saw only statuses and its own replies: no artifact, no
        # desired state, no requests, no telemetry, no $SYS.
        curious = {m.topic for m in dashboard.drain(0.1)}
        assert "edgeloop/d2/status" in curious and second in curious
        allowed = re.compile(r"edgeloop/[^/]+/(status|replies/app-dashboard/.+)")
        assert [t for t in curious if not allowed.fullmatch(t)] == []

        # d1's desired state is still the control node's, and the agent still serves.
        probe = login("edgeloop-control")
        probe.subscribe("edgeloop/d1/desired")
        assert probe.reply("edgeloop/d1/desired") == desired
        third = f"edgeloop/d1/replies/app-dashboard/{uuid.uuid4().hex}"
        request = {"id": "ok-3", "features": features}
        assert dashboard.publish("edgeloop/d1/predict", request, response_topic=third) == 0
        assert dashboard.reply(third)["id"] == "ok-3"
        assert agent.alive()
        assert "Traceback" not in agent.log()
    finally:
        for c in clients:
            c.close()


# The largest artifact an agent with default settings accepts.
AGENT_MAX_ARTIFACT = AgentConfig().max_artifact_bytes


def test_user_names_the_patterns_must_never_see(tmp_path: Path):
    """Mosquitto refuses every pattern to a user name with '+' or '#', but not one with
    '/': such a name escapes its subtree. Device ids therefore only come through
    check_device_id, which refuses all three (and the reserved levels)."""
    from edgeloop_agent.wire.names import InvalidName, check_device_id

    forger, wild = "d1/replies/app-dashboard", "d+1"
    for name in (forger, wild, "d#1", "models"):
        with pytest.raises(InvalidName):
            check_device_id(name)
    users = ["edgeloop-control", "app-dashboard", "d2", forger, wild]
    with ShippedBroker(tmp_path / "broker", users) as broker:
        control = Client(broker, "edgeloop-control")
        dashboard = Client(broker, "app-dashboard")
        bad = Client(broker, forger)
        plus = Client(broker, wild)
        device = Client(broker, "d2")
        try:
            assert control.publish("edgeloop/models/m/v1", b"onnx", retain=True) in (0, 0x10)
            dashboard.subscribe("edgeloop/+/replies/app-dashboard/#")
            # edgeloop/%u/status with this %u lies inside the dashboard's replies.
            topic = f"edgeloop/{forger}/status"
            assert bad.publish(topic, {"id": "forged", "prediction": 1}) == 0
            assert [m.topic for m in dashboard.drain(1.0)] == [topic]
            # A '+' in the name: Mosquitto applies no pattern to that user at all, not
            # even the one without %u that gives every device the artifacts.
            plus.subscribe("edgeloop/models/#")
            device.subscribe("edgeloop/models/#")
            assert [m.topic for m in device.drain(1.0)] == ["edgeloop/models/m/v1"]
            assert plus.drain(0.1) == []
        finally:
            for c in (control, dashboard, bad, plus, device):
                c.close()


def test_a_new_device_needs_only_mosquitto_passwd_and_a_reload(tmp_path: Path):
    import signal

    with ShippedBroker(tmp_path / "broker", ["edgeloop-control"]) as broker:
        assert not Client(broker, "d9", ok=False).accepted
        passwd = broker.workdir / "edgeloop.passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), "d9", password("d9")],
            check=True,
            capture_output=True,
        )
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` sends
        deadline = time.monotonic() + 10
        while not (device := Client(broker, "d9", ok=False)).accepted:
            device.close()
            assert time.monotonic() < deadline, broker.log()
            time.sleep(0.2)
        try:  # the device patterns apply at once: no ACL edit for a device
            assert device.publish("edgeloop/d9/status", b"{}") in (0x00, 0x10)
            assert device.publish("edgeloop/d9/desired", b"{}") == NOT_AUTHORIZED
        finally:
            device.close()


def test_message_size_limit_sits_above_the_agents_artifact_limit(tmp_path: Path):
    conf = (SHIPPED_ACL.parent / "mosquitto-edgeloop.conf").read_text()
    limit = int(re.search(r"^message_size_limit (\d+)$", conf, re.M).group(1))
    agent_limit = AGENT_MAX_ARTIFACT
    # Headroom: a slightly oversized artifact reaches the agent, which names the problem.
    assert agent_limit * 1.1 < limit <= 256 * 1024 * 1024
    with ShippedBroker(tmp_path / "broker", ["edgeloop-control"]) as broker:
        control = Client(broker, "edgeloop-control")
        big = Client(broker, "edgeloop-control")
        try:
            # The largest artifact an agent with default settings accepts gets through
            # (0x10: accepted, no subscriber yet)...
            code = control.publish("edgeloop/models/big/v1", bytes(agent_limit), retain=True)
            assert code in (0x00, 0x10)
            # ...one over the broker's limit does not. (Mosquitto 2.0.11 answers it
            # with PUBACK 0x95 to mosquitto_pub; paho 2.2 takes that for a protocol
            # error and reconnects, resending it: the control node must not send one.)
            big.client.publish("edgeloop/models/big/v2", bytes(limit + 1), qos=1, retain=True)
            time.sleep(3)
            big.close()
            control.subscribe("edgeloop/models/big/#")
            got = [control.messages.get(timeout=60), *control.drain(2.0)]  # 32 MiB over TLS
            assert [(m.topic, len(m.payload)) for m in got] == [
                ("edgeloop/models/big/v1", agent_limit)
            ]
            assert broker.proc is not None and broker.proc.poll() is None
        finally:
            control.close()


def test_private_broker_uses_the_shipped_delivery_settings():
    """The tests' and the demo's broker must behave like the operators' one."""
    from edgeloop_control.infra.mosquitto import BROKER_SETTINGS

    def settings(text: str) -> dict[str, str]:
        lines = (ln.split(None, 1) for ln in text.splitlines() if ln and ln[0] != "#")
        return {k: v for k, v in lines}

    shipped = settings((SHIPPED_ACL.parent / "mosquitto-edgeloop.conf").read_text())
    private = settings(BROKER_SETTINGS)
    delivery = [
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "message_size_limit",
        "set_tcp_nodelay",
        "persistence",
        "autosave_interval",
        "persistent_client_expiration",
    ]
    assert {k: private.get(k) for k in delivery} == {k: shipped[k] for k in delivery}


def test_control_client_names_the_tls_failure(tmp_path: Path):
    from edgeloop_control.infra.mqtt import BrokerError, ControlClient

    other = CertificateAuthority(tmp_path / "other", "some other CA")
    with ShippedBroker(tmp_path / "broker", ["edgeloop-control"]) as broker:
        url = broker.tls_url("edgeloop-control")
        with pytest.raises(BrokerError) as err:
            ControlClient(f"{url}?ca_file={other.cert}").connect(timeout=5)
        assert str(err.value) == (
            f"cannot reach the broker at mqtts://localhost:{broker.tls_port}: "
            # Mosquitto sends its CA along with its certificate: a chain ending in a CA
            # the client does not trust.
            "TLS certificate verify failed: self-signed certificate in certificate chain "
            f"(the broker's certificate is not signed by a CA in CA file {other.cert})"
        )
        # With the broker's CA in the URL the same client gets in and publishes.
        client = ControlClient(f"{url}?ca_file={broker.ca.cert}").connect(timeout=5)
        try:
            client.publish("edgeloop/d1/desired", b"{}", retain=True)
        finally:
            client.close()


# -- TLS failures, as the agent reports them -----------------------------------------------


def bad_server(kind: str, pki: Path, ca: CertificateAuthority):
    if kind == "untrusted CA":
        return CertificateAuthority(pki / "other", "some other CA").server("b", ["localhost"])
    if kind == "wrong host name":
        return ca.server("wrong-host", ["broker.example"])
    return self_signed(pki, "self", ["localhost"])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("untrusted CA", "unable to get local issuer certificate"),
        ("wrong host name", "Hostname mismatch, certificate is not valid for 'localhost'"),
        ("self signed", "self-signed certificate"),
    ],
)
def test_agent_names_each_tls_failure_once_and_keeps_retrying(
    kind: str, reason: str, agents, tmp_path: Path
):
    ca = CertificateAuthority(tmp_path / "pki")
    server = bad_server(kind, tmp_path / "pki", ca)
    broker = ShippedBroker(tmp_path / "broker", ["d1"], ca=ca, server=server).start()
    try:
        agent = start_agent(agents, broker, tmp_path, extra=["--log-level", "DEBUG"])
        url = f"mqtts://localhost:{broker.tls_port}"
        # Wait for three failed handshakes (paho retries a first connection after 3 s,
        # then 4 s, ...): the first is said with its reason, then one line per back-off
        # step, not per attempt.
        deadline = time.monotonic() + 40
        while "(3 attempts in" not in agent.log():
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.2)
        lines = [ln for ln in agent.log().splitlines() if "connect to" in ln and "DEBUG" not in ln]
        assert len(lines) == 3, agent.log()
        assert "ERROR" in lines[0] and f"cannot connect to {url}: TLS certificate" in lines[0]
        assert lines[0].endswith("; retrying in 3 s"), lines[0]
        assert all(f"cannot connect to {url} yet: TLS certificate" in ln for ln in lines[1:])
        assert all("ERROR" in ln and reason in ln for ln in lines)
        assert "pw-d1" not in agent.log()  # the password never reaches the log
        assert agent.alive()

        if kind != "untrusted CA":
            return  # the recovery is the same for all three; once is enough
        # Fixed on the broker's side: the agent, still retrying, gets in.
        broker.stop()
        broker.server = ca.server("good", ["localhost"])
        broker.start()
        deadline = time.monotonic() + 30
        while f"connected to {url} after" not in agent.log():
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.2)
        assert agent.alive()
    finally:
        broker.stop()
