"""How long `edgeloop fleet` takes at fleet scale (issue 10: ~4 s at 1,000 devices, target <= 1 s).

Set-up as ``bench/scale_ingest.py`` leaves a workspace, without the simulated fleet run: a
fresh workspace and a private Mosquitto; N devices registered, each with a desired-state
document, an online status (ingested and retained on the broker, as the agents leave it) and
``--reports`` telemetry reports with latency histograms, all through the real ingest
(``fleet/ingest.py``). Then, in the same run:

* ``edgeloop events --limit 1``: the baseline, the CLI's start-up plus a database query;
* ``edgeloop fleet`` (table) and ``edgeloop fleet --json``, wall time of the command;
* in-process: the database reads + row building, and the table rendering alone;
* with ``--compare-src DIR``: ``edgeloop fleet`` from an older source tree on the same
  database (the code before this change), for a before/after ratio.

Each command runs ``--repeat`` times; the median is reported, and its ratio to the baseline.

    .venv/bin/python bench/bench_fleet_view.py --devices 1000 [--compare-src /tmp/old]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeloop_agent.metrics import Metrics  # noqa: E402
from edgeloop_agent.telemetry import json_safe  # noqa: E402
from edgeloop_control.fleet.desired import plan_desired  # noqa: E402
from edgeloop_control.fleet.ingest import handle_report, handle_status  # noqa: E402
from edgeloop_control.fleet.inventory import register  # noqa: E402
from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.infra.mqtt import ControlClient  # noqa: E402
from edgeloop_control.infra.workspace import Workspace  # noqa: E402

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


class _Version:
    name, version, sha256, size, signature = "sensor", "v1", "0" * 64, 1000, None


def _status(device: str, now: float) -> dict[str, Any]:
    return {
        "online": True,
        "ts": now,
        "started_at": now - 600,
        "revision": 1,
        "models": [
            {"name": "sensor", "version": "v1", "variant": "sensor@v1", "role": "serve",
             "weight": 100.0}
        ],
    }  # fmt: skip


def _report(device: str, seq: int, now: float) -> dict[str, Any]:
    metrics = Metrics()
    for i in range(200):
        metrics.record_request("sensor@v1", 0.0005 * (1 + i % 20))
    snapshot = metrics.snapshot(reset=True)
    payload = {
        "report_id": f"{device}:b:{seq}", "device": device, "ts": now, "interval_s": 10.0,
        "revision": 1,
        "variants": {"sensor@v1": {"name": "sensor", "version": "v1", "role": "serve"}},
        "metrics": snapshot, "drift": [], "concept_drift": {},
        "outbox": {"depth": 0, "dropped": 0},
        "process": {"rss_bytes": 90 * 2**20, "cpu_percent": 3.0},
    }  # fmt: skip
    return json.loads(
        json.dumps({"id": payload["report_id"], "device_id": device, "kind": "report",
                    "ts": now, "payload": json_safe(payload)})
    )  # fmt: skip


def build(root: Path, broker: PrivateBroker, n: int, reports: int) -> Workspace:
    ws = Workspace.init(root / "ws")
    names = [f"pump-{i:05d}" for i in range(n)]
    db = ControlDB(ws.state_db)
    now = time.time()
    register(db, names, source="bench")
    for name in names:
        db.set_desired(name, {**plan_desired(None, [(_Version(), 100.0)], []), "device": name})
        handle_status(db, name, _status(name, now))
        for seq in range(reports):
            handle_report(db, _report(name, seq, now - (reports - seq) * 10), name)
    db.close()
    client = ControlClient(broker.url).connect()
    for name in names:
        client.publish(
            f"{ws.topic_prefix}/{name}/status", json.dumps(_status(name, now)).encode(), retain=True
        )
    client.close()
    return ws


def timed(
    ws: Workspace, broker_url: str, *args: str, pythonpath: str | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of one command. CPU (user + system of the child) is reported
    too: on a box shared with other work the wall time mostly measures the queue for a core."""
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker_url,
           "COLUMNS": "200"}  # fmt: skip
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"edgeloop {' '.join(args)} failed: {out.stderr[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu


def in_process(ws: Workspace) -> dict[str, float]:
    from rich.console import Console

    from edgeloop_control.cli import fleet as fleet_cli

    db = ControlDB(ws.state_db)
    t0 = time.perf_counter()
    desired = db.all_desired()
    inventory = {d["device"]: d for d in db.devices()}
    rows = fleet_cli.fleet_rows(desired, inventory, {})
    t1 = time.perf_counter()
    db.close()
    fleet_cli.console = Console(file=io.StringIO(), width=200)
    fleet_cli._print_fleet(rows, time.time())
    t2 = time.perf_counter()
    return {"rows_s": round(t1 - t0, 3), "render_s": round(t2 - t1, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=6, help="telemetry reports per device")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compare-src", help="a source tree (control/src, agent/src) to time `fleet` from too"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        broker = PrivateBroker(Path(tmp) / "broker").start()
        try:
            t0 = time.monotonic()
            ws = build(Path(tmp), broker, args.devices, args.reports)
            setup_s = time.monotonic() - t0
            commands: dict[str, tuple[tuple[str, ...], str | None]] = {
                "baseline": (("events", "--limit", "1"), None),
                "fleet": (("fleet",), None),
                "fleet_json": (("fleet", "--json"), None),
            }
            if args.compare_src:
                # The same command from an older source tree (e.g. `git archive 9e8548c
                # control/src agent/src | tar -x -C /tmp/old`), on the same database.
                src = Path(args.compare_src)
                path = f"{src / 'control' / 'src'}:{src / 'agent' / 'src'}"
                commands["fleet_compare"] = (("fleet",), path)
            wall: dict[str, list[float]] = {k: [] for k in commands}
            cpu: dict[str, list[float]] = {k: [] for k in commands}
            for _ in range(args.repeat):
                for key, (argv, pythonpath) in commands.items():
                    w, c = timed(ws, broker.url, *argv, pythonpath=pythonpath)
                    wall[key].append(w)
                    cpu[key].append(c)
            median = {k: statistics.median(v) for k, v in wall.items()}
            median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
            result = {
                "devices": args.devices,
                "reports_per_device": args.reports,
                "setup_s": round(setup_s, 1),
                "load_average_1m": os.getloadavg()[0],
                **{f"{k}_s": round(v, 3) for k, v in median.items()},
                **{f"{k}_cpu_s": round(v, 3) for k, v in median_cpu.items()},
                "fleet_vs_baseline": round(median["fleet"] / median["baseline"], 2),
                "fleet_json_vs_baseline": round(median["fleet_json"] / median["baseline"], 2),
                **(
                    {
                        "fleet_vs_compare": round(median["fleet"] / median["fleet_compare"], 2),
                        "fleet_cpu_vs_compare": round(
                            median_cpu["fleet"] / median_cpu["fleet_compare"], 2
                        ),
                    }
                    if "fleet_compare" in median
                    else {}
                ),
                **in_process(ws),
            }
        finally:
            broker.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
