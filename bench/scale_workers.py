"""Scale measurement: the ingest of one control daemon on SQLite vs workers on PostgreSQL.

For each configuration (``sqlite:1``, ``postgresql:1``, ``postgresql:2``, ...): a fresh
workspace, a private Mosquitto, a private PostgreSQL (Debian's, as the tests start it) when
the configuration asks for it, that many ``edgeloop serve`` processes (``--worker wN`` on
PostgreSQL); ``edgeloop deploy`` to every simulated device, then ``bench/fleetsim.py``
devices for ``--duration`` seconds. Measured per configuration: reports sent and stored,
ingest lag from the device's send to the commit (p50/p99), CPU of the workers and of
PostgreSQL per message, workers' RSS. Each figure is printed beside the first
configuration's (the baseline of the same run) as a ratio: the box is noisy.

    .venv/bin/python bench/scale_workers.py --devices 1000 --interval 2 --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleetsim import SimConfig, raise_fd_limit, run_fleet  # noqa: E402
from bench.scale_ingest import (  # noqa: E402
    EDGELOOP,
    count_reports,
    deploy_all,
    ingest_lags,
    make_workspace,
    percentile,
    proc_cpu_rss,
)
from tests.pgserver import PostgresServer  # noqa: E402

from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402


def postgres_cpu_s(server: PostgresServer) -> float:
    """CPU seconds of every process of the private PostgreSQL (postmaster and backends)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"postgres" not in cmd:
                continue
            environ_dir = (proc / "cwd").resolve()
        except OSError:
            continue
        if str(environ_dir).startswith(str(server.dir)):
            try:
                total += proc_cpu_rss(int(proc.name))[0]
            except OSError:
                continue
    return total


def start_workers(
    ws_root: Path, broker: str, n: int, postgres: bool, work: Path
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        log = work / f"worker-{i}.log"
        args = [EDGELOOP, "-w", str(ws_root), "--broker", broker, "serve", "--tick", "1"]
        if postgres:
            args += ["--worker", f"w{i}"]
        procs.append(
            subprocess.Popen(
                args,
                stdout=open(log, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    for i, proc in enumerate(procs):
        log = work / f"worker-{i}.log"
        deadline = time.monotonic() + 60
        while "connected to" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {i} did not connect: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    return procs


def measure(engine: str, n_workers: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pg = PostgresServer().start() if engine == "postgresql" else None
    if pg is not None:
        os.environ["EDGELOOP_CONTROL_DB"] = pg.new_database()
    else:
        os.environ.pop("EDGELOOP_CONTROL_DB", None)
    ws = make_workspace(work / "ws")
    broker = PrivateBroker(work / "broker").start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(ws.root, broker.url, n_workers, pg is not None, work)
        devices = [f"sim-{i:05d}" for i in range(args.devices)]
        deploy_all(ws, broker.url, devices, "sensor@v1")
        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=args.interval,
            request_rate=1.0,
            capture_rate=0.01,
            trusted_keys=(str(ws.public_key_path),),
        )
        cpu0 = sum(proc_cpu_rss(w.pid)[0] for w in workers)
        pg0 = postgres_cpu_s(pg) if pg else 0.0
        stored0 = count_reports(ws)
        t0 = time.monotonic()
        sims = run_fleet(cfg, args.devices, args.procs, args.duration)
        wall = time.monotonic() - t0
        sent = sum(s["reports"] for s in sims)
        deadline = time.monotonic() + 120
        while count_reports(ws) - stored0 < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        cpu1 = sum(proc_cpu_rss(w.pid)[0] for w in workers)
        pg1 = postgres_cpu_s(pg) if pg else 0.0
        messages = sent + sum(s["samples"] + s["labels"] + s["status"] for s in sims)
        lags = ingest_lags(ws)
        return {
            "config": f"{engine}:{n_workers}",
            "devices": args.devices,
            "interval_s": args.interval,
            "sim_wall_s": round(wall, 1),
            "reports_sent": sent,
            "reports_stored": count_reports(ws) - stored0,
            "messages_per_s": round(messages / wall, 1),
            "lag_p50_s": percentile(lags, 0.5),
            "lag_p99_s": percentile(lags, 0.99),
            "workers_cpu_ms_per_msg": round(1000 * (cpu1 - cpu0) / max(messages, 1), 3),
            "postgres_cpu_ms_per_msg": round(1000 * (pg1 - pg0) / max(messages, 1), 3),
            "workers_rss_mb": [round(proc_cpu_rss(w.pid)[1], 1) for w in workers],
        }
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        broker.stop()
        if pg is not None:
            pg.stop()
        os.environ.pop("EDGELOOP_CONTROL_DB", None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["sqlite:1", "postgresql:1", "postgresql:2"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    raise_fd_limit(args.devices + 1000)
    results = []
    for config in args.configs:
        engine, _, count = config.partition(":")
        with tempfile.TemporaryDirectory(prefix="workers-") as tmp:
            results.append(measure(engine, int(count or 1), args, Path(tmp)))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]
    print(f"\nbaseline: {base['config']}")
    keys = ("messages_per_s", "lag_p50_s", "lag_p99_s", "workers_cpu_ms_per_msg")
    for r in results:
        cells = []
        for k in keys:
            value, ref = r[k], base[k]
            ratio = f"{value / ref:.2f}x" if value is not None and ref else "-"
            cells.append(f"{k} {value} ({ratio})")
        print(f"{r['config']:>14}: stored {r['reports_stored']}/{r['reports_sent']}; "
              + "; ".join(cells) + f"; postgres {r['postgres_cpu_ms_per_msg']} ms/msg")  # fmt: skip
    if args.out:
        with open(args.out, "a") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
