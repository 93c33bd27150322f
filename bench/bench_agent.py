"""The agent's speed and memory budget, each figure beside two baselines measured in the same run.

Set-up (the product issue's): a 32-feature classifier trained by the product's own pipeline
(HistGradientBoosting by default) on synthetic data, deployed twice (v1, v2) as an A/B
experiment with weights 50/50; requests carry routing keys; drift monitoring, the feedback
window and 5 % sampled capture to the outbox are on (the agent's defaults). The server under
test (agent or baseline) is pinned to core 1; Mosquitto, the load (``mosquitto_pub -l``) and
the reply capture (``mosquitto_sub``) share core 0. All requests are QoS 1 with an MQTT 5
response topic; every reply is counted.

Baselines (bench/baselines.py): echo = bare paho subscribe/json.loads/publish (the transport
ceiling); sklearn = the same scikit-learn pipeline in process, one message at a time.

Phases, for each server:
  saturation  a burst of requests as fast as mosquitto_pub sends them; throughput =
              replies / (last reply - first send); "mid" is the reply rate between the 10th
              and 90th percentile of reply times (the sustained part of the burst);
  latency     a paced open-loop Python publisher at --latency-rate; latency = reply receive
              time (mosquitto_sub) - send time (just before publish), plus the agent's "ms";
  sustained   (agent) --requests requests paced at --rate; zero loss is checked, VmRSS is
              sampled every 0.5 s: steady state and growth over the run.

    .venv/bin/python bench/bench_agent.py            # full run (~6 min)
    .venv/bin/python bench/bench_agent.py --quick    # smoke run (~1 min)
    .venv/bin/python bench/bench_agent.py --requests 1000000   # memory growth over 1M requests
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    LOAD_CPU,
    SERVER_CPU,
    Client,
    CpuMeter,
    Publishers,
    ReplySink,
    Requests,
    RssSampler,
    cpu_seconds,
    machine,
    percentile,
    pin,
    publish_with_response,
    rss_kib,
    start_broker,
)

BENCH_DIR = Path(__file__).resolve().parent
BROKER_PID = [0]  # set once the broker runs
VENV_BIN = Path(sys.executable).parent
DEVICE = "bench"
N_FEATURES = 32


# -- model -------------------------------------------------------------------------------------


@dataclass
class Model:
    name: str
    version: str
    onnx: bytes
    pipeline: Any
    feature_names: list[str]

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.onnx).hexdigest()


def train_models(algo: str, rows: int) -> list[Model]:
    """Two versions of a 32-feature binary classifier (different seeds and data)."""
    import pandas as pd

    from edgeloop_control.training import TrainConfig, train

    models = []
    for seed, version in ((0, "v1"), (1, "v2")):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(rows, N_FEATURES))
        logit = X[:, 0] + X[:, 1] * X[:, 2] - X[:, 3] + 0.5 * np.sin(3 * X[:, 4])
        y = (logit + rng.normal(scale=0.5, size=rows) > 0).astype(int)
        names = [f"f{i}" for i in range(N_FEATURES)]
        frame = pd.DataFrame(X, columns=names)
        frame["y"] = y
        result = train(frame, TrainConfig(target="y", algo=algo, seed=seed))
        models.append(Model("bench32", version, result.onnx_bytes, result.pipeline, names))
    return models


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    topic: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        """Abort the run when the server died: every later figure would be meaningless."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log else ""
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_baseline(kind: str, port: int, work: Path, model_path: Path | None) -> Server:
    topic = f"bench/{kind}/predict"
    cmd = [sys.executable, str(BENCH_DIR / "baselines.py"), kind, "--port", str(port)]
    cmd += ["--topic", topic]
    if model_path is not None:
        cmd += ["--model", str(model_path)]
    log = work / f"{kind}.log"
    proc = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), *cmd],
        stdout=subprocess.PIPE,
        stderr=open(log, "wb"),  # noqa: SIM115 - closed with the process
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"baseline {kind} did not start: {log.read_text()[-2000:]}")
    return Server(kind, topic, proc, log)


def _knows_allow_unsigned(source: Path | None) -> bool:
    if source is None:
        return True
    config = source / "edgeloop_agent" / "config.py"
    return config.exists() and "allow_unsigned" in config.read_text()


def start_agent(
    port: int,
    work: Path,
    models: list[Model],
    setup: Client,
    *,
    name: str = "agent",
    source: Path | None = None,
) -> Server:
    """The real ``edgeloop-agent``; with ``source`` (another checkout's ``agent/src``) first on
    its path, to measure a before/after in the same run."""
    device = DEVICE if name == "agent" else f"{DEVICE}-{name}"
    state = work / f"{name}-state"
    state.mkdir(exist_ok=True)
    config = work / f"{name}.toml"
    config.write_text(
        f'device_id = "{device}"\nbroker = "mqtt://127.0.0.1:{port}"\n'
        f'state_dir = "{state}"\nlog_level = "WARNING"\n'
        # Agents since signed desired state refuse unsigned documents unless told;
        # the benchmark measures serving, not the update path. Older checkouts do
        # not know the setting (and would refuse an unknown key).
        + ("allow_unsigned = true\n" if _knows_allow_unsigned(source) else "")
    )
    log = work / f"{name}.log"
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), str(VENV_BIN / "edgeloop-agent"), "-c", str(config)],
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        env=env,
    )
    status = deploy_ab(setup, device, models)
    try:
        setup.wait_json(status, lambda s: s.get("revision") == 1 and s.get("online"), 60)
    except TimeoutError:
        raise RuntimeError(f"agent did not deploy: {log.read_text()[-2000:]}") from None
    return Server(name, f"edgeloop/{device}/predict", proc, log)


def deploy_ab(setup: Any, device: str, models: list[Model]) -> str:
    """Publish ``models`` (retained) and an unsigned revision-1 desired state serving them
    50/50 to ``device``; the device's status topic, subscribed, to wait on."""
    status = f"edgeloop/{device}/status"
    setup.subscribe(status)
    for m in models:
        setup.publish(f"edgeloop/models/{m.name}/{m.version}", m.onnx, retain=True)
    desired = {
        "revision": 1,
        "models": [
            {
                "name": m.name,
                "version": m.version,
                "sha256": m.sha256,
                "size": len(m.onnx),
                "signature": None,
                "role": "serve",
                "weight": 50,
            }
            for m in models
        ],
    }
    setup.publish(f"edgeloop/{device}/desired", json.dumps(desired).encode(), retain=True)
    return status


# -- phases ---------------------------------------------------------------------------------------


def check_replies(sink: ReplySink, prefix: str, n: int) -> dict[str, Any]:
    """Count replies, errors and distinct ids; reply receive times (ns) by request index."""
    recv = np.full(n, -1, dtype=np.int64)
    ms: list[float] = []
    errors, dupes, total, other = 0, 0, 0, 0
    for t_ns, payload in sink.records():
        total += 1
        doc = json.loads(payload)
        if "error" in doc:
            errors += 1
        rid = doc.get("id") or ""
        if not rid.startswith(prefix):
            other += 1
            continue
        i = int(rid[len(prefix) :].split("-", 1)[0])
        if recv[i] >= 0:
            dupes += 1
        else:
            recv[i] = t_ns
        if "ms" in doc:
            ms.append(doc["ms"])
    answered = int((recv >= 0).sum())
    return {
        "sent": n,
        "replies": total,
        "answered": answered,
        "lost": n - answered,
        "errors": errors,
        "duplicates": dupes,
        "foreign": other,
        "recv": recv,
        "agent_ms": ms,
    }


_PHASE = [0]


def phase_id(server: Server, kind: str) -> str:
    """A fresh reply topic per phase and round: a straggler from an earlier round can
    never be counted in a later one."""
    _PHASE[0] += 1
    server.check_alive()
    return f"{kind}{_PHASE[0]}"


def saturation(server: Server, port: int, work: Path, feature_names: list[str], n: int) -> dict:
    tag = phase_id(server, "sat")
    reply_topic = f"bench/{server.name}/{tag}"
    sink = ReplySink(port, reply_topic, work / f"{server.name}-{tag}.txt")
    time.sleep(0.3)  # the subscription must land before the first reply
    pubs = Publishers(port, server.topic, reply_topic, k=2).start()
    requests = Requests(feature_names, prefix="s")
    cpu0 = cpu_seconds(server.pid)
    meter = CpuMeter({"broker": BROKER_PID[0]})
    t_send = time.time_ns()
    w0 = time.perf_counter()
    pubs.feed(requests, n, rate=None)
    pubs.close()
    sink.wait(n, timeout=max(120.0, n / 500), idle=30.0)
    wall = time.perf_counter() - w0
    cpu1 = cpu_seconds(server.pid)
    load = meter.stop()
    sink.close()
    res = check_replies(sink, "s", n)
    res.pop("agent_ms")
    recv = np.sort(res.pop("recv"))
    res.update(load)
    return finish_saturation(res, recv, t_send, cpu0, cpu1, wall)


def finish_saturation(
    res: dict, recv: np.ndarray, t_send: int, cpu0: float | None, cpu1: float | None, wall: float
) -> dict:
    recv = recv[recv >= 0]
    if recv.size >= 10:
        res["rate"] = recv.size / ((recv[-1] - t_send) / 1e9)
        lo, hi = recv[int(0.1 * recv.size)], recv[int(0.9 * recv.size) - 1]
        res["rate_mid"] = (int(0.9 * recv.size) - int(0.1 * recv.size)) / max((hi - lo) / 1e9, 1e-9)
    else:
        res["rate"] = res["rate_mid"] = float("nan")
    if cpu0 is not None and cpu1 is not None:
        res["cpu"] = (cpu1 - cpu0) / wall
        # CPU per answered request: the server's own cost, whatever bounded the wall clock.
        if recv.size:
            res["cpu_us"] = (cpu1 - cpu0) / recv.size * 1e6
            res["cpu_capacity"] = 1e6 / res["cpu_us"] if res["cpu_us"] > 0 else None
    return res


def latency(server: Server, port: int, work: Path, feature_names: list[str], rate: float,
            seconds: float) -> dict:  # fmt: skip
    import paho.mqtt.client as mqtt

    tag = phase_id(server, "lat")
    reply_topic = f"bench/{server.name}/{tag}"
    sink = ReplySink(port, reply_topic, work / f"{server.name}-{tag}.txt")
    client = Client(port, f"pacer-{server.name}")
    time.sleep(0.3)
    n = int(rate * seconds)
    requests = Requests(feature_names, prefix="L")
    send_ns = np.zeros(n, dtype=np.int64)
    pub: mqtt.Client = client.client
    t0 = time.perf_counter()
    for i in range(n):
        payload = requests.line(i)
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send_ns[i] = time.time_ns()
        publish_with_response(pub, server.topic, payload, reply_topic)
    sink.wait(n, timeout=max(30.0, seconds * 3), idle=30.0)
    offered = n / (time.perf_counter() - t0)
    client.close()
    sink.close()
    res = check_replies(sink, "L", n)
    recv = res.pop("recv")
    ok = recv >= 0
    res["lat_ms"] = (recv[ok] - send_ns[ok]) / 1e6
    res["offered_rate"] = offered
    return res


def merge_latency(parts: list[dict]) -> dict:
    """One summary of several latency rounds (their samples pooled)."""
    lat = np.sort(np.concatenate([p["lat_ms"] for p in parts])).tolist()
    agent_ms = sorted(x for p in parts for x in p["agent_ms"])
    res: dict[str, Any] = {k: sum(p[k] for p in parts) for k in ("sent", "answered", "lost")}
    res["errors"] = sum(p["errors"] for p in parts)
    res["offered_rate"] = statistics.mean(p["offered_rate"] for p in parts)
    for q in (50, 99, 99.9):
        res[f"p{q:g}"] = percentile(lat, q)
        res[f"agent_p{q:g}"] = percentile(agent_ms, q) if agent_ms else None
    res["max"] = lat[-1] if lat else float("nan")
    res["rounds_p99"] = [round(percentile(sorted(p["lat_ms"].tolist()), 99), 3) for p in parts]
    return res


def merge_saturation(parts: list[dict]) -> dict:
    """Median of the rounds' rates (the same statistic for every server), summed counts,
    CPU per request over all rounds."""
    res: dict[str, Any] = {k: sum(p[k] for p in parts) for k in ("sent", "answered", "lost")}
    res["errors"] = sum(p["errors"] for p in parts)
    for key in ("rate", "rate_mid", "cpu", "broker_cpu", "core0_busy", "core1_busy"):
        vals = [p[key] for p in parts if p.get(key) is not None]
        res[key] = statistics.median(vals) if vals else None
    us = [p["cpu_us"] for p in parts if p.get("cpu_us")]
    if us:
        res["cpu_us"] = statistics.median(us)
        res["cpu_capacity"] = 1e6 / res["cpu_us"]
    res["rounds_rate"] = [round(p["rate"]) for p in parts if p.get("rate") == p.get("rate")]
    return res


def sustained(server: Server, port: int, work: Path, feature_names: list[str], rate: float,
              n: int) -> dict:  # fmt: skip
    tag = phase_id(server, "sus")
    reply_topic = f"bench/{server.name}/{tag}"
    sink = ReplySink(port, reply_topic, work / f"{server.name}-{tag}.txt")
    time.sleep(0.3)
    pubs = Publishers(port, server.topic, reply_topic, k=2).start()
    sampler = RssSampler(server.pid, 0.5).start()
    requests = Requests(feature_names, prefix="u")
    cpu0 = cpu_seconds(server.pid)
    meter = CpuMeter({"broker": BROKER_PID[0]})
    t_send = time.time_ns()
    w0 = time.perf_counter()
    feed_s = pubs.feed(requests, n, rate=rate)
    pubs.close()
    sink.wait(n, timeout=120.0, idle=30.0)
    wall = time.perf_counter() - w0
    cpu1 = cpu_seconds(server.pid)
    load = meter.stop()
    time.sleep(1.0)
    samples = sampler.stop()
    sink.close()
    res = check_replies(sink, "u", n)
    res.pop("agent_ms")
    recv = res.pop("recv")
    ok = recv >= 0
    scheduled = t_send + (np.arange(n) / rate * 1e9).astype(np.int64)
    lag_ms = np.sort((recv[ok] - scheduled[ok]) / 1e6)
    res["offered_rate"] = n / feed_s
    res.update(finish_saturation({}, np.sort(recv), t_send, cpu0, cpu1, wall))
    res.update(load)
    res["lag_p99"] = percentile(lag_ms.tolist(), 99)
    res["lag_max"] = float(lag_ms[-1]) if lag_ms.size else float("nan")
    res["rss"] = summarize_rss(samples, w0, w0 + feed_s)
    return res


def summarize_rss(samples: list[tuple[float, int]], start: float, end: float) -> dict[str, Any]:
    """Steady state = median VmRSS over the second half of the load; growth = the last tenth
    of the load minus the first tenth after the warm-up tenth (so the feedback window, drift
    windows and outbox have filled once)."""
    during = [(t, k) for t, k in samples if start <= t <= end]
    if len(during) < 10:
        return {"steady_mb": None, "growth_mb": None, "peak_mb": None, "timeline": []}
    span = end - start

    def window(a: float, b: float) -> list[int]:
        return [k for t, k in during if start + a * span <= t <= start + b * span]

    steady = statistics.median(window(0.5, 1.0))
    early = statistics.median(window(0.1, 0.2) or [during[0][1]])
    late = statistics.median(window(0.9, 1.0) or [during[-1][1]])
    marks = [during[int(i * (len(during) - 1) / 10)] for i in range(11)]
    return {
        "steady_mb": steady / 1024,
        "growth_mb": (late - early) / 1024,
        "peak_mb": max(k for _, k in samples) / 1024,
        "timeline": [(round(t - start, 1), round(k / 1024, 1)) for t, k in marks],
    }


# -- report ---------------------------------------------------------------------------------------


def fmt(x: Any, spec: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


def ratio(a: Any, b: Any) -> str:
    if not a or not b or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def report(info: dict, cfg: dict, servers: dict[str, Server]) -> None:
    agent = servers["agent"].results
    echo = servers.get("echo", Server("echo", "")).results
    skl = servers.get("sklearn", Server("sklearn", "")).results
    print()
    print("== edgeloop agent benchmark ==")
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(" ".join(f"{k}={v}" for k, v in cfg.items()))
    print()
    head = f"{'figure':40} {'target':>10} {'agent':>10} {'echo':>10} {'sklearn':>10}"
    print(head + f" {'vs echo':>8} {'vs skl':>8}")
    print("-" * len(head + " " * 18))

    def row(label: str, target: str, key: str, phase: str, spec: str = ",.0f") -> None:
        a = agent.get(phase, {}).get(key)
        e = echo.get(phase, {}).get(key)
        s = skl.get(phase, {}).get(key)
        print(f"{label:40} {target:>10} {fmt(a, spec):>10} {fmt(e, spec):>10} {fmt(s, spec):>10} "
              f"{ratio(a, e):>8} {ratio(a, s):>8}")  # fmt: skip

    row("saturation throughput (req/s)", ">=10,000", "rate", "sat")
    row("  mid-burst reply rate (req/s)", "", "rate_mid", "sat")
    row("  server CPU (cores)", "", "cpu", "sat", ".2f")
    row("  server CPU per request (us)", "", "cpu_us", "sat", ".1f")
    row("  => req/s at 100% of one core", ">=10,000", "cpu_capacity", "sat")
    row("  broker CPU (cores)", "", "broker_cpu", "sat", ".2f")
    row("  core 0 busy (load side)", "", "core0_busy", "sat", ".2f")
    row("  core 1 busy (server side)", "", "core1_busy", "sat", ".2f")
    row("  lost requests", "0", "lost", "sat", "d")
    row("latency p50 (ms) @ rate", "", "p50", "lat", ".3f")
    row("latency p99 (ms) @ rate", "<=2", "p99", "lat", ".3f")
    row("latency p99.9 (ms) @ rate", "", "p99.9", "lat", ".3f")
    row("  agent-side ms p99", "", "agent_p99", "lat", ".3f")
    row("  lost requests", "0", "lost", "lat", "d")
    row("RSS steady, idle after load (MB)", "", "rss_mb", "mem", ".1f")
    before = servers.get("before", Server("before", "")).results
    if before.get("sat"):
        b, a = before, agent
        print()
        print(f"before/after, same run: saturation {fmt(b['sat']['rate'])} -> "
              f"{fmt(a['sat']['rate'])} req/s ({ratio(a['sat']['rate'], b['sat']['rate'])}), "
              f"CPU per request {fmt(b['sat'].get('cpu_us'), '.1f')} -> "
              f"{fmt(a['sat'].get('cpu_us'), '.1f')} us, latency p99 "
              f"{fmt(b['lat']['p99'], '.3f')} -> {fmt(a['lat']['p99'], '.3f')} ms, agent-side "
              f"p99 {fmt(b['lat']['agent_p99'], '.3f')} -> {fmt(a['lat']['agent_p99'], '.3f')} ms, "
              f"RSS {fmt(b['mem']['rss_mb'], '.1f')} -> "
              f"{fmt(a['mem']['rss_mb'], '.1f')} MB")  # fmt: skip
    for name, res in (("before", before), ("agent", agent), ("echo", echo)):
        if res.get("sat"):
            print(f"  {name}: saturation by round {res['sat']['rounds_rate']} req/s, "
                  f"latency p99 by round {res['lat']['rounds_p99']} ms")  # fmt: skip
    sus = agent.get("sus")
    if sus:
        rss = sus["rss"]
        print()
        print(f"sustained: {sus['sent']:,} requests offered at {sus['offered_rate']:,.0f}/s: "
              f"answered {sus['answered']:,}, lost {sus['lost']}, errors {sus['errors']}, "
              f"duplicates {sus['duplicates']}, reply rate {fmt(sus['rate'])}/s, "
              f"agent CPU {fmt(sus.get('cpu'), '.2f')} cores, broker "
              f"{fmt(sus.get('broker_cpu'), '.2f')}, "
              f"core0 busy {fmt(sus.get('core0_busy'), '.2f')}, "
              f"core1 busy {fmt(sus.get('core1_busy'), '.2f')}, lag p99 {sus['lag_p99']:.1f} ms, "
              f"max {sus['lag_max']:.1f} ms")  # fmt: skip
        print(f"  RSS steady state {fmt(rss['steady_mb'], '.1f')} MB (target <= 80), "
              f"growth {fmt(rss['growth_mb'], '+.2f')} MB (target <= 2), "
              f"peak {fmt(rss['peak_mb'], '.1f')} MB; echo steady "
              f"{fmt(echo.get('mem', {}).get('rss_mb'), '.1f')} MB, sklearn "
              f"{fmt(skl.get('mem', {}).get('rss_mb'), '.1f')} MB")  # fmt: skip
        print("  RSS timeline (s, MB): " + ", ".join(f"{t}:{m}" for t, m in rss["timeline"]))
    print("drift update cost: see bench/bench_drift.py (target <= 2 us/feature/row)")


# -- main ---------------------------------------------------------------------------------------


def warm_up(server: Server, port: int, work: Path, names: list[str], n: int) -> None:
    sink = ReplySink(port, f"bench/{server.name}/warm", work / f"{server.name}-warm.txt")
    time.sleep(0.3)
    pubs = Publishers(port, server.topic, f"bench/{server.name}/warm", k=1).start()
    pubs.feed(Requests(names, prefix="w"), n, rate=2000.0)
    pubs.close()
    sink.wait(n, timeout=60)
    sink.close()


def run_all(servers: dict[str, Server], port: int, work: Path, names: list[str], args: Any,
            sat_n: int, skl_n: int) -> None:  # fmt: skip
    """Agent and echo alternate round by round, so a noisy neighbour hits both alike; the
    sklearn baseline goes last: at 1,000 req/s it falls behind and keeps its core busy."""
    fast = [s for name, s in servers.items() if name != "sklearn"]
    for s in servers.values():
        warm_up(s, port, work, names, args.warmup if s.name != "sklearn" else 200)
    sat: dict[str, list[dict]] = {s.name: [] for s in fast}
    lat: dict[str, list[dict]] = {s.name: [] for s in fast}
    for rnd in range(args.rounds):
        for s in fast:
            r = saturation(s, port, work, names, sat_n)
            s.check_alive()
            sat[s.name].append(r)
            print(f"[round {rnd + 1}] {s.name} saturation: {fmt(r['rate'])} req/s, "
                  f"lost {r['lost']}", flush=True)  # fmt: skip
            time.sleep(0.5)
    for rnd in range(args.rounds):
        for s in fast:
            r = latency(s, port, work, names, args.latency_rate, args.latency_seconds / args.rounds)
            s.check_alive()
            lat[s.name].append(r)
            p99 = percentile(sorted(r["lat_ms"].tolist()), 99)
            print(f"[round {rnd + 1}] {s.name} latency p99 {p99:.3f} ms, lost {r['lost']}",
                  flush=True)  # fmt: skip
    for s in fast:
        s.results["sat"] = merge_saturation(sat[s.name])
        s.results["lat"] = merge_latency(lat[s.name])
    agent = servers.get("agent")
    if agent is not None:
        print(f"[agent] sustained: {args.requests:,} requests at {args.rate:,.0f}/s", flush=True)
        agent.results["sus"] = sustained(agent, port, work, names, args.rate, args.requests)
        sus = agent.results["sus"]
        print(f"[agent]   lost {sus['lost']}, RSS {fmt(sus['rss']['steady_mb'], '.1f')} MB",
              flush=True)  # fmt: skip
    skl = servers.get("sklearn")
    if skl is not None:
        skl.results["sat"] = merge_saturation([saturation(skl, port, work, names, skl_n)])
        print(f"[sklearn] saturation: {fmt(skl.results['sat']['rate'])} req/s", flush=True)
        seconds = min(args.latency_seconds, 3.0)
        skl.results["lat"] = merge_latency(
            [latency(skl, port, work, names, args.latency_rate, seconds)]
        )
    time.sleep(1.0)
    for s in servers.values():
        s.results["mem"] = {"rss_mb": (rss_kib(s.pid) or 0) / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    ap.add_argument("--requests", type=int, help="sustained-run requests (memory growth)")
    ap.add_argument("--rate", type=float, default=10_000, help="sustained offered rate, req/s")
    ap.add_argument("--sat", type=int, help="saturation burst size for the agent and echo")
    ap.add_argument("--latency-rate", type=float, default=1000.0)
    ap.add_argument("--latency-seconds", type=float)
    ap.add_argument("--algo", default="hgb", choices=["hgb", "rf", "logreg"])
    ap.add_argument("--only", choices=["agent", "echo", "sklearn"], action="append",
                    help="run only these servers (repeatable); default all three")  # fmt: skip
    ap.add_argument("--rounds", type=int, help="alternating agent/echo rounds (default 3, quick 1)")
    ap.add_argument("--before", type=Path, metavar="AGENT_SRC",
                    help="also run the agent from another checkout's agent/src (e.g. a git "
                    "worktree of an older commit), alternating with this one")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    quick = args.quick
    args.requests = args.requests or (60_000 if quick else 600_000)
    args.latency_seconds = args.latency_seconds or (5.0 if quick else 20.0)
    args.warmup = 2000
    args.rounds = args.rounds or (1 if quick else 3)
    # 60,000: a bare paho echo loses replies past ~65,000 outstanding (16-bit message ids run
    # out while its PUBACKs queue behind the burst; see bench/baselines.py), which would make
    # the baseline's figure a loss count rather than a rate.
    sat_n = args.sat or (30_000 if quick else 60_000)
    skl_n = max(1000, sat_n // 40)
    only = args.only or ["agent", "echo", "sklearn"]

    # SIGTERM (timeout, a stopped job) runs the finally blocks: no orphaned servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    print(f"training 2 x {args.algo} on {N_FEATURES} features ...", flush=True)
    models = train_models(args.algo, 5000)
    model_path = work / "pipeline.pkl"
    with open(model_path, "wb") as fh:
        pickle.dump({"pipeline": models[0].pipeline, "feature_names": models[0].feature_names}, fh)
    pin(os.getpid(), LOAD_CPU)
    broker = start_broker(work)
    assert broker.proc is not None
    BROKER_PID[0] = broker.proc.pid
    setup = Client(broker.port, "bench-setup")
    servers: dict[str, Server] = {}
    names = models[0].feature_names
    try:
        if args.before is not None:
            servers["before"] = start_agent(
                broker.port, work, models, setup, name="before", source=args.before.resolve()
            )
        for kind in only:
            if kind == "agent":
                servers[kind] = start_agent(broker.port, work, models, setup)
            else:
                path = model_path if kind == "sklearn" else None
                servers[kind] = start_baseline(kind, broker.port, work, path)
        run_all(servers, broker.port, work, names, args, sat_n, skl_n)
    finally:
        for server in servers.values():
            server.stop()
        setup.close()
        broker.stop()
    cfg = {
        "model": f"{args.algo} x2 (A/B 50/50)",
        "features": N_FEATURES,
        "rounds": args.rounds,
        "sat_burst": sat_n,
        "sklearn_burst": skl_n,
        "latency_rate": args.latency_rate,
        "sustained": f"{args.requests}@{args.rate:g}/s",
        "work": work if args.keep else "(removed)",
    }
    servers.setdefault("agent", Server("agent", ""))
    report(info, cfg, servers)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
