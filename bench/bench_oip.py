"""The Open Inference Protocol endpoint beside the MQTT path, in the same run.

Set-up: bench_agent.py's 32-feature classifier (v1/v2 A/B 50/50, drift, capture, feedback
window on: the agent's defaults), two agent processes pinned to core 1 one after the other:
``plain`` (no ``--http``) and ``http`` (``--http 127.0.0.1:PORT``). Clients, the broker and
this script share core 0.

  rss         VmRSS of each agent after deployment and after the same warm-up; the
              difference is what ``--http`` costs (the http agent's warm-up also ran
              its HTTP path, so its threads and buffers are counted).
  closed loop the same load shape on both paths of the http agent: C requests in flight
              (C keep-alive connections over HTTP; C outstanding QoS 1 requests with an
              MQTT 5 response topic over MQTT), one row each, for --seconds; throughput
              and latency percentiles as seen by the client (Python on both sides, so
              the client's own cost is alike).

    .venv/bin/python bench/bench_oip.py --quick     # ~1.5 min
    .venv/bin/python bench/bench_oip.py             # ~3 min
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt

from bench_agent import N_FEATURES, Model, deploy_ab, train_models
from common import (
    LOAD_CPU,
    SERVER_CPU,
    Client,
    cpu_seconds,
    machine,
    percentile,
    pin,
    publish_with_response,
    rss_kib,
    start_broker,
)
from edgeloop_agent.mqttlink import no_delay
from edgeloop_control.infra.mosquitto import free_port

VENV_BIN = Path(sys.executable).parent


def start_agent(
    port: int, work: Path, models: list[Model], setup: Client, name: str, http: str | None
) -> subprocess.Popen[bytes]:
    device = f"oip-{name}"
    state = work / f"{name}-state"
    state.mkdir(exist_ok=True)
    config = work / f"{name}.toml"
    text = (
        f'device_id = "{device}"\nbroker = "mqtt://127.0.0.1:{port}"\n'
        f'state_dir = "{state}"\nlog_level = "WARNING"\nallow_unsigned = true\n'
    )
    if http is not None:
        text += f'http_listen = "{http}"\n'
    config.write_text(text)
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), str(VENV_BIN / "edgeloop-agent"), "-c", str(config)],
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    status = deploy_ab(setup, device, models)
    try:
        setup.wait_json(status, lambda s: s.get("revision") == 1 and s.get("online"), 60)
    except TimeoutError:
        raise RuntimeError(f"agent {name} did not deploy: {log.read_text()[-2000:]}") from None
    return proc


class Rows:
    def __init__(self, names: list[str], seed: int = 1) -> None:
        rng = random.Random(seed)
        self.names = names
        self.pool = [[round(rng.gauss(0, 1), 4) for _ in names] for _ in range(256)]

    def mqtt(self, i: int, prefix: str) -> bytes:
        feats = dict(zip(self.names, self.pool[i % 256], strict=True))
        doc = {"id": f"{prefix}{i}", "key": f"user-{i % 10_000}", "features": feats}
        return json.dumps(doc, separators=(",", ":")).encode()

    def oip(self, i: int) -> bytes:
        inputs = [
            {"name": n, "shape": [1], "datatype": "FP32", "data": [v]}
            for n, v in zip(self.names, self.pool[i % 256], strict=True)
        ]
        doc = {"id": f"h{i}", "parameters": {"key": f"user-{i % 10_000}"}, "inputs": inputs}
        return json.dumps(doc, separators=(",", ":")).encode()


def summarize(lat_s: list[float], errors: int, wall: float) -> dict[str, Any]:
    lat = sorted(lat_s)
    return {
        "requests": len(lat),
        "errors": errors,
        "rate": len(lat) / wall if wall > 0 else float("nan"),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
    }


def http_loop(port: int, rows: Rows, conc: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        bad = 0
        headers = {"Content-Type": "application/json"}
        while time.perf_counter() < deadline:
            body = rows.oip(next(counter))
            t0 = time.perf_counter()
            conn.request("POST", "/v2/models/bench32/infer", body, headers)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            bad += resp.status != 200
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(lat, errors[0], time.perf_counter() - t0)


def mqtt_loop(port: int, device: str, rows: Rows, conc: int, seconds: float) -> dict[str, Any]:
    topic = f"edgeloop/{device}/predict"
    reply = f"bench/oip/{os.getpid()}/replies"
    sent: dict[str, float] = {}
    lat: list[float] = []
    errors = [0]
    counter = iter(range(10**9))
    deadline = [0.0]
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"oip-bench-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_socket_open = no_delay
    subscribed = threading.Event()

    def send() -> None:
        i = next(counter)
        rid = f"m{i}"
        sent[rid] = time.perf_counter()
        publish_with_response(client, topic, rows.mqtt(i, "m"), reply)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        doc = json.loads(msg.payload)
        t0 = sent.pop(doc.get("id") or "", None)
        if t0 is None:
            return
        lat.append(now - t0)
        errors[0] += "error" in doc
        if now < deadline[0]:
            send()
        elif not sent:
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    client.subscribe(reply, qos=1)
    subscribed.wait(10)
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    for _ in range(conc):
        send()
    done.wait(seconds + 30)
    wall = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return summarize(lat, errors[0], wall)


def warm(port: int, device: str, rows: Rows, http_port: int | None, n: int) -> None:
    mqtt_loop(port, device, rows, 4, n / 1000)
    if http_port is not None:
        http_loop(http_port, rows, 4, n / 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, help="per closed-loop phase (default 15, quick 6)")
    ap.add_argument("--concurrency", type=int, action="append", help="in flight (default 1, 8)")
    ap.add_argument("--algo", default="hgb", choices=["hgb", "rf", "logreg"])
    args = ap.parse_args()
    seconds = args.seconds or (6.0 if args.quick else 15.0)
    concs = args.concurrency or [1, 8]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-oip-"))
    print(f"training 2 x {args.algo} on {N_FEATURES} features ...", flush=True)
    models = train_models(args.algo, 3000)
    rows = Rows(models[0].feature_names)
    pin(os.getpid(), LOAD_CPU)
    broker = start_broker(work)
    setup = Client(broker.port, "oip-bench-setup")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        http_port = free_port()
        plain = start_agent(broker.port, work, models, setup, "plain", None)
        procs.append(plain)
        withhttp = start_agent(broker.port, work, models, setup, "http", f"127.0.0.1:{http_port}")
        procs.append(withhttp)
        rss0 = {"plain": rss_kib(plain.pid), "http": rss_kib(withhttp.pid)}
        warm(broker.port, "oip-plain", rows, None, 3000)
        warm(broker.port, "oip-http", rows, http_port, 3000)
        rss1 = {"plain": rss_kib(plain.pid), "http": rss_kib(withhttp.pid)}
        plain.send_signal(signal.SIGTERM)  # the loops below measure the http agent alone
        plain.wait(30)
        results: dict[str, Any] = {}
        pid = withhttp.pid
        for conc in concs:
            c0 = cpu_seconds(pid)
            m = mqtt_loop(broker.port, "oip-http", rows, conc, seconds)
            c1 = cpu_seconds(pid)
            h = http_loop(http_port, rows, conc, seconds)
            c2 = cpu_seconds(pid)
            # The agent's own CPU per answered request: its cost, whatever bounded the rate.
            if None not in (c0, c1, c2):
                m["cpu_us"] = (c1 - c0) / max(m["requests"], 1) * 1e6
                h["cpu_us"] = (c2 - c1) / max(h["requests"], 1) * 1e6
            results[conc] = {"mqtt": m, "http": h}
        rss2 = rss_kib(withhttp.pid)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        setup.close()
        broker.stop()

    info = machine()
    print(f"\nmachine: {info}")
    print(f"model: 2 x {args.algo}, {N_FEATURES} features, A/B 50/50, agent pinned to core 1")
    print("\nRSS (MiB)            plain   --http   diff")
    for label, snap in (("after deploy", rss0), ("after warm-up", rss1)):
        a, b = (snap["plain"] or 0) / 1024, (snap["http"] or 0) / 1024
        print(f"  {label:<17} {a:7.1f}  {b:7.1f}  {b - a:+6.1f}")
    print(f"  http agent after the loops: {(rss2 or 0) / 1024:.1f}")
    print(
        f"\nclosed loop, {seconds:.0f} s per phase, one row per request "
        "(client-side latency, Python clients on core 0)"
    )
    print(
        "  in flight  path   req/s    p50 ms   p99 ms  errors  agent CPU us/req"
        "   http/mqtt rate  p99 ratio  CPU ratio"
    )
    for conc, r in results.items():
        m, h = r["mqtt"], r["http"]
        for name, x in (("mqtt", m), ("http", h)):
            extra = ""
            if name == "http":
                extra = f"   {h['rate'] / m['rate']:13.2f}  {h['p99_ms'] / m['p99_ms']:9.2f}"
                if "cpu_us" in h:
                    extra += f"  {h['cpu_us'] / m['cpu_us']:9.2f}"
            print(
                f"  {conc:9d}  {name:<5} {x['rate']:7.0f}  {x['p50_ms']:7.2f}  {x['p99_ms']:7.2f}"
                f"  {x['errors']:6d}  {x.get('cpu_us', float('nan')):16.0f}{extra}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
