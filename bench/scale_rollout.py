"""Scale measurement: a gated staged rollout to N simulated devices, driven by the daemon.

A fresh workspace with ``sensor@v1`` and ``sensor@v2``; a private Mosquitto; ``edgeloop
serve``; ``edgeloop deploy sensor@v1`` to every device; ``bench/fleetsim.py`` devices
(telemetry every ``--interval`` s) until all of them report v1; then ``edgeloop rollout start
sensor@v2 --canary 1% --step S`` with the default gates, and the daemon drives it. Measured:
wall time, time per batch, broker CPU and RSS during the rollout, artifact bytes the devices
received.

    .venv/bin/python bench/scale_rollout.py --devices 1000 --interval 10 --step 33%
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleetsim import SimConfig, raise_fd_limit, run_fleet  # noqa: E402
from bench.scale_ingest import (  # noqa: E402
    PeakRss,
    deploy_all,
    edgeloop,
    make_workspace,
    proc_cpu_rss,
    start_daemon,
    synced,
)

from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.policies.rollout import RolloutManager  # noqa: E402
from edgeloop_control.registry import Registry  # noqa: E402


def rollout_status(ws: Any, rid: str) -> dict[str, Any]:
    db = ControlDB(ws.state_db)
    try:
        return RolloutManager(ws, db, None).status(rid)[0]
    finally:
        db.close()


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.integration.models import sensor_model

    n = args.devices
    ws = make_workspace(work / "ws")
    # Another seed: other bytes, so the rollout fans out a new artifact (an identical one
    # is reused by sha256 and never fetched, as the agent does).
    v2 = sensor_model("v2", seed=1).data
    Registry.for_workspace(ws).register("sensor", v2, {"algorithm": "logreg"})
    broker = PrivateBroker(work / "broker").start()
    daemon = start_daemon(ws, broker.url, work / "control.log")
    stop_file = work / "stop"
    result: dict[str, Any] = {"devices": n, "interval_s": args.interval, "step": args.step}
    sims: list[dict[str, Any]] = []
    try:
        devices = [f"sim-{i:05d}" for i in range(n)]
        deploy_all(ws, broker.url, devices, "sensor@v1")
        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=args.interval,
            request_rate=args.request_rate,
            trusted_keys=(str(ws.public_key_path),),
            stop_file=str(stop_file),
        )
        sim = threading.Thread(
            target=lambda: sims.extend(run_fleet(cfg, n, args.procs, args.max_s)), daemon=True
        )
        sim.start()
        deadline = time.monotonic() + 300
        while synced(ws, 1) < n and time.monotonic() < deadline:
            time.sleep(1)
        result["on_v1"] = synced(ws, 1)
        assert broker.proc is not None
        b_cpu0, _ = proc_cpu_rss(broker.proc.pid)
        d_cpu0, _ = proc_cpu_rss(daemon.pid)
        db = ControlDB(ws.state_db)
        v1_size = db.desired(devices[0])[1]["models"][0]["size"]  # type: ignore[index]
        db.close()
        b_peak, d_peak = PeakRss(broker.proc.pid), PeakRss(daemon.pid)
        env_args = ["rollout", "start", "sensor@v2", "--canary", "1%", "--step", args.step]
        env_args += ["--json"]
        t0 = time.time()
        out_path = work / "start.json"
        env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url}
        out = subprocess.run(
            [str(Path(sys.executable).parent / "edgeloop"), *env_args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out_path.write_text(out.stdout)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        started = json.loads(out.stdout)
        rid = started["id"] if isinstance(started, dict) else started[0]["id"]
        result["start_cli_s"] = round(time.time() - t0, 2)
        info: dict[str, Any] = {}
        deadline = time.monotonic() + args.max_s
        while time.monotonic() < deadline:
            info = rollout_status(ws, rid)
            if info["state"] not in ("running", "rolling_back"):
                break
            time.sleep(2)
        t_end = time.time()
        b_cpu1, b_rss1 = proc_cpu_rss(broker.proc.pid)
        d_cpu1, d_rss1 = proc_cpu_rss(daemon.pid)
        result.update(
            state=info.get("state"),
            failure=info.get("failure"),
            wall_s=round(t_end - t0, 1),
            devices_loaded=info.get("devices_loaded"),
            batches=[
                {
                    "n": len(b["devices"]),
                    "kind": b["kind"],
                    "state": b["state"],
                    "publish_s": round((b["published_at"] or 0) - (b["started_at"] or 0), 1),
                    "took_s": round(
                        (b["passed_at"] or b["failed_at"] or t_end) - (b["started_at"] or t0), 1
                    ),
                }
                for b in info.get("batches", [])
            ],
            broker_cpu_s=round(b_cpu1 - b_cpu0, 2),
            broker_peak_rss_mb=round(b_peak.stop(), 1),
            broker_rss_mb=round(b_rss1, 1),
            daemon_cpu_s=round(d_cpu1 - d_cpu0, 2),
            daemon_peak_rss_mb=round(d_peak.stop(), 1),
            daemon_rss_mb=round(d_rss1, 1),
            fleet_cli_s=round(edgeloop(ws, broker.url, "fleet"), 2),
        )
        stop_file.touch()
        sim.join(timeout=120)
        result["artifact_bytes_received"] = sum(s["artifact_bytes"] for s in sims)
        result["artifacts_fetched"] = sum(s["artifacts_fetched"] for s in sims)
        # What the rollout itself fanned out: all received minus the first deployment's.
        result["rollout_artifact_bytes"] = result["artifact_bytes_received"] - n * v1_size
        result["swaps"] = sum(s["swaps"] for s in sims)
    finally:
        stop_file.touch()
        daemon.terminate()
        daemon.wait(30)
        broker.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--step", default="33%")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--request-rate", type=float, default=1.0)
    ap.add_argument("--max-s", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    raise_fd_limit(args.devices + 1024)
    with tempfile.TemporaryDirectory(prefix="rollout-") as tmp:
        result = measure(args, Path(tmp))
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
