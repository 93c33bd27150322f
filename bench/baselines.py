"""The two baseline servers every agent figure is printed beside (run as subprocesses).

echo     the transport ceiling: a bare paho-mqtt client that subscribes (QoS 1), ``json.loads``
         each request and publishes a small JSON reply from ``on_message``. No model, no
         validation, no telemetry: nothing a Python MQTT server can do costs less per message.
sklearn  the naive agent: the same trained scikit-learn pipeline in process, one message at a
         time: ``json.loads`` -> one-row DataFrame -> ``predict_proba`` -> JSON reply.

Both reply the way the agent does (MQTT 5 response topic, correlation data echoed, QoS 1) and
print ``ready`` on stdout once their subscription is acknowledged. They acknowledge a request
only once the broker has acknowledged its reply (QoS 1 end to end).

Why a burst must stay under ~65,000 requests for the echo: it handles each message in paho's
network thread, so the PUBACKs for its replies wait in the TCP stream behind the unread part of
the burst; past 65,535 outstanding replies paho's 16-bit message ids run out and ``publish``
returns an error instead of sending (measured: 23,022 of a 100,000 burst). The agent reads
into its queue at wire speed, so its PUBACKs are never stuck behind the backlog.
"""

from __future__ import annotations

import argparse
import json
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.mqttlink import no_delay

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def echo_handler() -> Handler:
    def handle(req: dict[str, Any]) -> dict[str, Any]:
        return {"id": req.get("id"), "echo": True}

    return handle


def sklearn_handler(model_path: str) -> Handler:
    import numpy as np
    import pandas as pd

    with open(model_path, "rb") as fh:
        saved = pickle.load(fh)
    pipeline, names = saved["pipeline"], saved["feature_names"]
    classes = [c.item() if hasattr(c, "item") else c for c in pipeline.classes_]
    keys = [str(c) for c in classes]

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        frame = pd.DataFrame([req["features"]], columns=names)
        probs = pipeline.predict_proba(frame)[0]
        return {
            "id": req["id"],
            "prediction": classes[int(np.argmax(probs))],
            "probabilities": dict(zip(keys, probs.tolist(), strict=True)),
        }

    return handle


def serve(port: int, topic: str, handle: Handler) -> None:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"baseline-{topic.replace('/', '-')}",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_socket_open = no_delay

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        print("ready", flush=True)

    waiting: dict[int, tuple[int, int]] = {}  # reply mid -> (request mid, qos)

    def on_publish(c: mqtt.Client, _u: Any, mid: int, *_: Any) -> None:
        request = waiting.pop(mid, None)
        if request is not None:
            c.ack(*request)

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        req = json.loads(msg.payload)
        reply = json.dumps(handle(req), separators=(",", ":")).encode()
        props = Properties(PacketTypes.PUBLISH)
        response = getattr(msg.properties, "ResponseTopic", None)
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is not None:
            props.CorrelationData = corr
        info = c.publish(response or f"{topic}/replies", reply, qos=1, properties=props)
        waiting[info.mid] = (msg.mid, msg.qos)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kind", choices=["echo", "sklearn"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--model", help="pickle of {'pipeline', 'feature_names'} (sklearn)")
    args = ap.parse_args()
    if args.kind == "echo":
        handler = echo_handler()
    else:
        if not args.model:
            ap.error("sklearn needs --model")
        handler = sklearn_handler(args.model)
    serve(args.port, args.topic, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
