"""Scale measurement: an A/B experiment across N simulated devices with a known effect.

A fresh workspace with ``sensor@v1`` and ``sensor@v2``; a private Mosquitto; ``edgeloop
serve``; ``edgeloop deploy sensor@v1`` to every device; ``bench/fleetsim.py`` devices until
all report v1; then ``edgeloop ab start sensor@v1 sensor@v2 --manual`` on every device. The
simulator routes each request with the experiment's allocation and makes the challenger's
predictions right 85 % of the time against the champion's 80 %. Measured: time from start
to the experiment's decision, and what it decided.

    .venv/bin/python bench/scale_ab.py --devices 1000 --interval 10
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
    deploy_all,
    make_workspace,
    start_daemon,
    synced,
)

from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.policies.experiments import ExperimentManager  # noqa: E402
from edgeloop_control.registry import Registry  # noqa: E402


def experiment_status(ws: Any, exp_id: str) -> dict[str, Any]:
    db = ControlDB(ws.state_db)
    try:
        return ExperimentManager(ws, db, None).status(exp_id)[0]
    finally:
        db.close()


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.integration.models import sensor_model

    n = args.devices
    ws = make_workspace(work / "ws")
    v2 = sensor_model("v2", seed=1).data
    Registry.for_workspace(ws).register("sensor", v2, {"algorithm": "logreg"})
    broker = PrivateBroker(work / "broker").start()
    daemon = start_daemon(ws, broker.url, work / "control.log")
    stop_file = work / "stop"
    result: dict[str, Any] = {"devices": n, "interval_s": args.interval}
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
        cmd = ["ab", "start", "sensor@v1", "sensor@v2", "--manual", "--json"]
        for d in devices:
            cmd += ["--device", d]
        env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url}
        t0 = time.time()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "edgeloop"), *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        exp_id = json.loads(out.stdout)["id"]
        result["start_cli_s"] = round(time.time() - t0, 2)
        info: dict[str, Any] = {}
        deadline = time.monotonic() + args.max_s
        while time.monotonic() < deadline:
            info = experiment_status(ws, exp_id)
            if info.get("decision") or (info.get("evaluation") or {}).get("winner"):
                break
            time.sleep(2)
        result.update(
            time_to_decision_s=round(time.time() - t0, 1),
            state=info.get("state"),
            decision=info.get("decision"),
            evaluation={
                k: v
                for k, v in (info.get("evaluation") or {}).items()
                if not isinstance(v, (list, dict)) or k in ("winner", "arms")
            },
        )
        stop_file.touch()
        sim.join(timeout=120)
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
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--request-rate", type=float, default=1.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    raise_fd_limit(args.devices + 1024)
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        result = measure(args, Path(tmp))
    line = json.dumps(result, default=str)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
