"""The agent's resident memory beside another agent (today's, ``--before``) in the same run.

Issue 13's targets: <= 80 MB steady at 5,000 req/s with two models, <= 90 MB after a
60,000-request burst, <= 2 MB growth over 1,000,000 requests, no loss, no throughput
regression. Same set-up as ``bench_agent.py`` (two 32-feature HGB models A/B 50/50, drift,
feedback window and 5 % capture on; agents pinned to core 1, broker and load on core 0),
with both agents started side by side and measured one after the other, phase by phase:

  idle      VmRSS after deployment and a 2,000-request warm-up;
  sustained ``--requests`` at ``--rate`` (default 300,000 at 5,000/s, 60 s): steady state
            (median VmRSS over the second half), growth (last tenth minus the second tenth),
            replies, loss, duplicates, agent CPU per request;
  burst     ``--burst`` requests (60,000) as fast as two ``mosquitto_pub -l`` send them:
            throughput, loss, CPU per request, peak VmRSS during the burst, VmRSS 3 s after.

    .venv/bin/python bench/bench_memory.py --before /work/before-mem/agent/src
    .venv/bin/python bench/bench_memory.py --before OTHER/agent/src --requests 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_agent as ba
from common import LOAD_CPU, Client, RssSampler, machine, pin, rss_kib, start_broker


def vm_hwm_kib(pid: int) -> int | None:
    """The process's peak resident set so far (VmHWM)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of a process, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def burst(server: ba.Server, port: int, work: Path, names: list[str], n: int) -> dict[str, Any]:
    sampler = RssSampler(server.pid, 0.2).start()
    cpu0 = thread_cpu(server.pid)
    res = ba.saturation(server, port, work, names, n)
    cpu1 = thread_cpu(server.pid)
    answered = max(res.get("answered", 0), 1)
    # Per thread, in creation order (main, then the agent's threads as they start).
    res["thread_us"] = [
        round((cpu1[t] - cpu0.get(t, 0.0)) / answered * 1e6, 1) for t in sorted(cpu1)
    ]
    time.sleep(3.0)
    samples = sampler.stop()
    res["peak_mb"] = max(k for _, k in samples) / 1024 if samples else None
    res["after_mb"] = (rss_kib(server.pid) or 0) / 1024
    return res


def measure(servers: dict[str, ba.Server], port: int, work: Path, names: list[str],
            args: Any) -> None:  # fmt: skip
    for s in servers.values():
        ba.warm_up(s, port, work, names, 2000)
        time.sleep(1.0)
        s.results["idle_mb"] = (rss_kib(s.pid) or 0) / 1024
    for s in servers.values():
        print(f"[{s.name}] sustained: {args.requests:,} at {args.rate:,.0f}/s", flush=True)
        s.results["sus"] = ba.sustained(s, port, work, names, args.rate, args.requests)
        sus = s.results["sus"]
        print(f"[{s.name}]   lost {sus['lost']}, steady {ba.fmt(sus['rss']['steady_mb'], '.1f')}"
              f" MB, growth {ba.fmt(sus['rss']['growth_mb'], '+.2f')} MB", flush=True)  # fmt: skip
        time.sleep(1.0)
    for rnd in range(args.rounds):
        for s in servers.values():
            r = burst(s, port, work, names, args.burst)
            s.results.setdefault("bursts", []).append(r)
            print(f"[round {rnd + 1}] {s.name} burst: {ba.fmt(r['rate'])} req/s, lost "
                  f"{r['lost']}, peak {ba.fmt(r['peak_mb'], '.1f')} MB, after "
                  f"{ba.fmt(r['after_mb'], '.1f')} MB", flush=True)  # fmt: skip
            time.sleep(1.0)
    for s in servers.values():
        s.results["hwm_mb"] = (vm_hwm_kib(s.pid) or 0) / 1024


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None and v == v)
    return values[len(values) // 2] if values else None


def report(servers: dict[str, ba.Server], args: Any) -> None:
    after, before = servers["agent"].results, servers["before"].results

    def burst_stat(res: dict[str, Any], key: str) -> float | None:
        return _median([b.get(key) for b in res.get("bursts", [])])

    rows: list[tuple[str, str, Any, Any, str]] = [
        ("RSS idle, two models, after warm-up (MB)", "", after["idle_mb"], before["idle_mb"],
         ".1f"),
        ("RSS steady at the sustained rate (MB)", "<=80", after["sus"]["rss"]["steady_mb"],
         before["sus"]["rss"]["steady_mb"], ".1f"),
        ("RSS growth over the sustained run (MB)", "<=2", after["sus"]["rss"]["growth_mb"],
         before["sus"]["rss"]["growth_mb"], "+.2f"),
        ("  sustained reply rate (req/s)", "", after["sus"].get("rate"),
         before["sus"].get("rate"), ",.0f"),
        ("  sustained agent CPU per request (us)", "", after["sus"].get("cpu_us"),
         before["sus"].get("cpu_us"), ".1f"),
        ("  sustained lost / duplicates", "0", f"{after['sus']['lost']} / "
         f"{after['sus']['duplicates']}", f"{before['sus']['lost']} / "
         f"{before['sus']['duplicates']}", ""),
        ("burst throughput, median (req/s)", "", burst_stat(after, "rate"),
         burst_stat(before, "rate"), ",.0f"),
        ("  burst CPU per request, median (us)", "", burst_stat(after, "cpu_us"),
         burst_stat(before, "cpu_us"), ".1f"),
        ("  burst lost (all rounds)", "0", sum(b["lost"] for b in after["bursts"]),
         sum(b["lost"] for b in before["bursts"]), ""),
        ("RSS peak during the bursts (MB)", "", max(b["peak_mb"] for b in after["bursts"]),
         max(b["peak_mb"] for b in before["bursts"]), ".1f"),
        ("RSS 3 s after the last burst (MB)", "<=90", after["bursts"][-1]["after_mb"],
         before["bursts"][-1]["after_mb"], ".1f"),
        ("VmHWM at the end (MB)", "", after["hwm_mb"], before["hwm_mb"], ".1f"),
    ]  # fmt: skip
    print()
    print(f"== agent memory: this checkout vs --before {args.before} ==")
    print(f"sustained {args.requests:,} at {args.rate:,.0f}/s; bursts {args.burst:,} x "
          f"{args.rounds}; agent env {args.agent_env or '-'}")  # fmt: skip
    print(f"{'figure':44} {'target':>7} {'agent':>10} {'before':>10} {'ratio':>7}")
    print("-" * 82)
    for label, target, a, b, spec in rows:
        if spec:
            r = ba.ratio(a, b)
            a, b = ba.fmt(a, spec), ba.fmt(b, spec)
        else:
            r = "-"
        print(f"{label:44} {target:>7} {a!s:>10} {b!s:>10} {r:>7}")
    for name, res in (("agent", after), ("before", before)):
        tl = res["sus"]["rss"]["timeline"]
        print(f"  {name} RSS timeline (s, MB): " + ", ".join(f"{t}:{m}" for t, m in tl))
        print(f"  {name} burst rates by round: {[round(b['rate']) for b in res['bursts']]}")
        print(f"  {name} CPU us per request by thread (creation order), last burst: "
              f"{res['bursts'][-1]['thread_us']}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, metavar="AGENT_SRC")
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--burst", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for this checkout's agent only (an experiment)")  # fmt: skip
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    print({k: info[k] for k in list(info)[:6]}, flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgeloop-benchmem-"))
    models = ba.train_models("hgb", 5000)
    pin(os.getpid(), LOAD_CPU)
    broker = start_broker(work)
    assert broker.proc is not None
    ba.BROKER_PID[0] = broker.proc.pid
    setup = Client(broker.port, "bench-setup")
    servers: dict[str, ba.Server] = {}
    names = models[0].feature_names
    try:
        servers["before"] = ba.start_agent(
            broker.port, work, models, setup, name="before", source=args.before.resolve()
        )
        saved = dict(os.environ)
        os.environ.update(dict(kv.split("=", 1) for kv in args.agent_env))
        try:
            servers["agent"] = ba.start_agent(broker.port, work, models, setup)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        measure(servers, broker.port, work, names, args)
    finally:
        for server in servers.values():
            server.stop()
        setup.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(servers, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
