"""Fuzz the agent's OIP v2 endpoint over real HTTP, for a bounded time.

A real Mosquitto and a real agent with ``--http`` serving bench_agent.py's 32-feature
model; bodies are valid OIP requests mutated at random (byte flips, truncation,
duplication, JSON-level swaps of types, shapes, datatypes and values, deep nesting,
NaN/Infinity). Every answer must be 200 with outputs or the protocol's error form
with an edgeloop code; the agent must stay alive and still answer a valid request
at the end.

    .venv/bin/python bench/fuzz_oip_http.py --seconds 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agent import train_models
from bench_oip import Rows, start_agent
from common import Client, rss_kib, start_broker
from edgeloop_control.infra.mosquitto import free_port

_VALUES: list[Any] = [None, True, 0, -1, 2**63, 1e308, "x", "", [], {}, [[1]], float("nan")]
_TYPES = ["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "FP8", "", None, 3]


def mutate_doc(doc: dict[str, Any], rng: random.Random) -> Any:
    inputs = doc["inputs"]
    k = rng.randrange(9)
    t = rng.choice(inputs)
    if k == 0:
        t["shape"] = rng.choice([[1, 1, 1], [-1], [0], [2], [1, 2], "1", None, [10**9]])
    elif k == 1:
        t["datatype"] = rng.choice(_TYPES)
    elif k == 2:
        t["data"] = [rng.choice(_VALUES)]
    elif k == 3:
        t["name"] = rng.choice(["", "zz", "features", None, 7, inputs[0]["name"]])
    elif k == 4:
        del inputs[rng.randrange(len(inputs))]
    elif k == 5:
        doc[rng.choice(["id", "parameters", "outputs", "inputs"])] = rng.choice(_VALUES)
    elif k == 6:
        doc["inputs"] = [{"name": "features", "shape": [1, 32], "datatype": "FP32",
                          "data": [rng.choice(_VALUES) for _ in range(32)]}]  # fmt: skip
    elif k == 7:
        depth = rng.randrange(1, 60)
        t["data"] = json.loads("[" * depth + "1" + "]" * depth)
    else:
        doc["parameters"] = {"key": rng.choice(_VALUES)}
    return doc


def mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    b = bytearray(body)
    k = rng.randrange(5)
    if k == 0 and b:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif k == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif k == 2:
        b = b"[" * rng.randrange(30, 3000) + b
    elif k == 3:
        b = body.decode().encode(rng.choice(["utf-16", "utf-32", "utf-8-sig"]))
    else:
        b = b.replace(b"0.", b"NaN", 1) if rng.random() < 0.5 else b.replace(b"0.", b"1e999", 1)
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="edgeloop-fuzz-oip-"))
    models = train_models("logreg", 2000)
    rows = Rows(models[0].feature_names)
    broker = start_broker(work)
    setup = Client(broker.port, "fuzz-oip-setup")
    port = free_port()
    proc = start_agent(broker.port, work, models, setup, "fuzz", f"127.0.0.1:{port}")
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    bad: list[str] = []
    n = 0
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + args.seconds
        rss0 = rss_kib(proc.pid)
        while time.monotonic() < deadline:
            doc = json.loads(rows.oip(n))
            if rng.random() < 0.6:
                body = json.dumps(mutate_doc(doc, rng)).encode()
            else:
                body = mutate_bytes(json.dumps(doc).encode(), rng)
            n += 1
            try:
                conn.request("POST", "/v2/models/bench32/infer", body)
                resp = conn.getresponse()
                raw = resp.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                statuses[-1] += 1
                continue
            statuses[resp.status] += 1
            answer = json.loads(raw)
            if resp.status == 200:
                if "outputs" not in answer:
                    bad.append(f"200 without outputs: {raw[:200]!r}")
            elif set(answer) != {"error"} or ": " not in answer["error"]:
                bad.append(f"{resp.status} not in the error form: {raw[:200]!r}")
            else:
                codes[answer["error"].split(":", 1)[0]] += 1
            if resp.getheader("Connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if proc.poll() is not None:
                bad.append(f"agent exited with {proc.returncode}")
                break
        conn.request("POST", "/v2/models/bench32/infer", rows.oip(0))
        final = conn.getresponse()
        final.read()
        rss1 = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        setup.close()
        broker.stop()
    print(f"{n} bodies in {args.seconds:.0f} s; statuses {dict(statuses)}")
    print(f"codes {dict(codes.most_common())}")
    print(f"valid request afterwards: {final.status}; agent RSS {rss0} -> {rss1} KiB")
    print(f"problems: {len(bad)}")
    for line in bad[:20]:
        print("  ", line)
    return 1 if bad or final.status != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
