"""What TLS costs a request: sequential round trips through the SHIPPED broker config.

One real agent serves a small signed-off model (logistic regression from the test
suite's sensor data); an app sends requests one at a time (QoS 1, MQTT 5 response
topic) and waits for each reply, first over the plain loopback listener, then over
the TLS listener (the agent reconnected with mqtts:// and --ca-file). Printed: round
trip p50/p99 for each, and the agent's resident memory on each link.

    .venv/bin/python bench/bench_tls.py --requests 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.models import sample_features, sensor_model  # noqa: E402
from tests.mqtt_helpers import AgentProcess  # noqa: E402
from tests.shipped_broker import ShippedBroker, password  # noqa: E402

from edgeloop_agent.mqttlink import no_delay  # noqa: E402
from edgeloop_agent.wire.network import tls_options  # noqa: E402


class App:
    def __init__(self, broker: ShippedBroker, user: str, *, tls: bool) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password(user))
        if tls:
            self.client.tls_set(**tls_options(str(broker.ca.cert)))
        self.client.on_socket_open = no_delay
        self.got: dict[str, Any] = {}
        self.cond = threading.Condition()
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_connect = lambda *a: ready.set()
        host, port = ("localhost", broker.tls_port) if tls else ("127.0.0.1", broker.port)
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got[msg.topic] = msg.payload
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(broker: ShippedBroker, work: Path, *, tls: bool, n: int) -> dict[str, float]:
    url = broker.tls_url("d1") if tls else broker.plain_url("d1")
    extra = ["--ca-file", str(broker.ca.cert)] if tls else []
    agent = AgentProcess(
        broker_url=url, device_id="d1", state_dir=work / "state", extra=extra
    ).start()
    app = App(broker, "app-dashboard", tls=tls)
    control = App(broker, "edgeloop-control", tls=False)
    try:
        control.subscribe("edgeloop/d1/status")
        deadline = time.monotonic() + 60
        while True:
            with control.cond:
                control.cond.wait(0.5)
                raw = control.got.get("edgeloop/d1/status")
            if raw and json.loads(raw).get("revision") == 1 and json.loads(raw).get("online"):
                break
            assert time.monotonic() < deadline, "agent never served revision 1"
        topic = f"edgeloop/d1/replies/app-dashboard/{uuid.uuid4().hex}"
        app.subscribe(topic)
        features = sample_features(1)[0]
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        times = []
        for i in range(n + 50):
            body = json.dumps({"id": f"r{i}", "features": features})
            start = time.perf_counter()
            app.client.publish("edgeloop/d1/predict", body, qos=1, properties=props)
            with app.cond:
                assert app.cond.wait_for(lambda: topic in app.got, 10), f"no reply to r{i}"
                app.got.pop(topic)
            if i >= 50:  # warm-up excluded
                times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return {
            "p50_ms": statistics.median(times),
            "p99_ms": times[int(len(times) * 0.99) - 1],
            "agent_rss_mib": rss_mib(agent.pid),
        }
    finally:
        app.close()
        control.close()
        agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        users = ["edgeloop-control", "d1", "app-dashboard"]
        with ShippedBroker(work / "broker", users) as broker:
            model = sensor_model("v1")
            publisher = App(broker, "edgeloop-control", tls=False)
            publisher.client.publish(
                "edgeloop/models/sensor/v1", model.data, qos=1, retain=True
            ).wait_for_publish(10)
            desired = json.dumps({"revision": 1, "models": [model.entry()]})
            publisher.client.publish(
                "edgeloop/d1/desired", desired, qos=1, retain=True
            ).wait_for_publish(10)
            publisher.close()
            for tls in (False, True):
                fig = run(broker, work / ("tls" if tls else "plain"), tls=tls, n=args.requests)
                name = "mqtts (TLS)" if tls else "mqtt (plain)"
                print(
                    f"{name:13} {args.requests} sequential round trips: "
                    f"p50 {fig['p50_ms']:.2f} ms, p99 {fig['p99_ms']:.2f} ms, "
                    f"agent RSS {fig['agent_rss_mib']:.0f} MiB",
                    flush=True,
                )


if __name__ == "__main__":
    main()
