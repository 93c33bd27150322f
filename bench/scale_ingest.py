"""Scale measurement: a real control daemon and Mosquitto under N simulated devices.

For each fleet size: a fresh workspace with one registered model, a private Mosquitto,
``edgeloop serve``; ``edgeloop deploy`` to every device (signed desired state, one retained
artifact); then ``bench/fleetsim.py`` devices for ``--duration`` seconds. Measured:

* fan-out of the first deployment: time until every device reported the revision, broker
  CPU and RSS, artifact bytes the devices received;
* ingest: reports stored, lag from the device's send time (the report's ``ts``, set just
  before publishing) to the daemon's insert (``seen_messages.ts``, in the same transaction
  as the report's rows), p50/p99; daemon CPU per message and RSS; database growth,
  extrapolated to a day;
* time to answer of ``edgeloop fleet``, ``drift``, ``events`` and ``report`` afterwards.

    .venv/bin/python bench/scale_ingest.py --devices 100 1000 --interval 10 --duration 90

Writes one JSON object per fleet size to ``--out`` (JSON lines) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.infra.workspace import Workspace  # noqa: E402
from edgeloop_control.registry import Registry  # noqa: E402

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return cpu, rss


def run_delay_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat):
    how much of a lag is the box's load rather than our code."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class PeakRss:
    """Samples a process's RSS every 0.5 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, proc_cpu_rss(self.pid)[1])
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def make_workspace(root: Path) -> Workspace:
    from tests.integration.models import sensor_model

    ws = Workspace.init(root)
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[retrain]\nenabled = false\n")
    Registry.for_workspace(ws).register("sensor", sensor_model("v1").data, {"algorithm": "logreg"})
    return Workspace.open(ws.root)


def start_daemon(ws: Workspace, broker_url: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [EDGELOOP, "-w", str(ws.root), "--broker", broker_url, "serve", "--tick", "1"],
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and "control daemon connected" in log.read_text():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"edgeloop serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError("control daemon did not connect")


def edgeloop(ws: Workspace, broker_url: str, *args: str, timeout: float = 600) -> float:
    """Run one CLI command; return its wall time in seconds (it must succeed)."""
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker_url}
    t0 = time.monotonic()
    out = subprocess.run(
        [EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ws.root
    )
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"edgeloop {' '.join(args[:2])} failed: {out.stderr[-2000:]}")
    return elapsed


def deploy_all(ws: Workspace, broker_url: str, devices: list[str], ref: str) -> float:
    args = ["deploy", ref, "--new-device"]  # provisioning: not connected yet
    for d in devices:
        args += ["--device", d]
    return edgeloop(ws, broker_url, *args)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def db_sizes(ws: Workspace) -> dict[str, int]:
    """Bytes of data, not of files: the WAL holds pages until a checkpoint, so the file
    sizes jump; page_count (seen through the WAL) minus free pages is what is stored."""
    db = ControlDB(ws.state_db)
    try:
        c = db.conn
        page = c.execute("PRAGMA page_size").fetchone()[0]
        used = (
            c.execute("PRAGMA page_count").fetchone()[0]
            - c.execute("PRAGMA freelist_count").fetchone()[0]
        )
        rows = {
            t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("variant_stats", "drift_windows", "seen_messages", "events", "devices")
        }
        doc_bytes = c.execute("SELECT coalesce(sum(length(doc)), 0) FROM drift_windows").fetchone()[
            0
        ]
    finally:
        db.close()
    return {
        "control_db": used * page,
        "feature_store": dir_bytes(ws.feature_store_dir),
        "drift_doc_bytes": doc_bytes,
        **{f"rows_{t}": n for t, n in rows.items()},
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ingest_lags(ws: Workspace) -> list[float]:
    db = ControlDB(ws.control_db)
    try:
        rows = db.conn.execute(
            "SELECT s.ts - v.ts FROM seen_messages s JOIN "
            "(SELECT report_id, min(ts) AS ts FROM variant_stats GROUP BY report_id) v "
            "ON v.report_id = s.msg_id"
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


def count_reports(ws: Workspace) -> int:
    db = ControlDB(ws.control_db)
    try:
        return int(db.conn.execute("SELECT count(*) FROM seen_messages").fetchone()[0])
    finally:
        db.close()


def synced(ws: Workspace, revision: int) -> int:
    db = ControlDB(ws.control_db)
    try:
        return sum(1 for d in db.devices() if d.get("reported_revision") == revision)
    finally:
        db.close()


def measure(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ws = make_workspace(work / "ws")
    broker = PrivateBroker(work / "broker").start()
    daemon = start_daemon(ws, broker.url, work / "control.log")
    result: dict[str, Any] = {
        "devices": n,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "procs": args.procs,
        "request_rate": args.request_rate,
        "capture_rate": args.capture_rate,
    }
    try:
        devices = [f"sim-{i:05d}" for i in range(n)]
        result["deploy_cli_s"] = round(deploy_all(ws, broker.url, devices, "sensor@v1"), 2)
        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=args.interval,
            request_rate=args.request_rate,
            capture_rate=args.capture_rate,
            drift_share=args.drift_share,
            churn_share=args.churn_share,
            fail_load_share=args.fail_load_share,
            drift_window_rows=args.drift_window_rows,
            trusted_keys=(str(ws.public_key_path),),
            connect_rate=args.connect_rate,
        )
        assert broker.proc is not None
        b_cpu0, _ = proc_cpu_rss(broker.proc.pid)
        d_cpu0, d_rss0 = proc_cpu_rss(daemon.pid)
        d_wait0 = run_delay_s(daemon.pid)
        d_peak = PeakRss(daemon.pid)
        b_peak = PeakRss(broker.proc.pid)
        reports0 = count_reports(ws)
        db0 = db_sizes(ws)
        t0 = time.monotonic()
        sims = run_fleet(cfg, n, args.procs, args.duration)
        wall = time.monotonic() - t0
        # Let the daemon finish what is queued (bounded), then read the figures.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now_reports = count_reports(ws)
            if now_reports != last:
                last, stable_since = now_reports, time.monotonic()
            elif time.monotonic() - stable_since > 3:
                break
            time.sleep(0.5)
        drain = time.monotonic() - t0 - wall
        d_cpu1, d_rss1 = proc_cpu_rss(daemon.pid)
        d_wait1 = run_delay_s(daemon.pid)
        b_cpu1, b_rss1 = proc_cpu_rss(broker.proc.pid)
        lags = ingest_lags(ws)
        reports = count_reports(ws) - reports0
        db1 = db_sizes(ws)
        grown = {k: db1[k] - db0[k] for k in db1}
        per_day = 86400 / wall
        sent = {k: sum(s.get(k, 0) for s in sims) for k in ("reports", "samples", "labels")}
        messages = sum(sent.values()) + sum(s["status"] for s in sims)
        result.update(
            sim_wall_s=round(wall, 1),
            drain_after_s=round(drain, 1),
            connected=sum(s["connected"] for s in sims),
            connect_failures=sum(s["connect_failures"] for s in sims),
            applied=sum(s["desired_applied"] for s in sims),
            swap_p50_s=percentile([s["swap_p50_s"] for s in sims if "swap_p50_s" in s], 0.5),
            swap_max_s=max((s.get("swap_max_s", 0) for s in sims), default=None),
            artifact_bytes_received=sum(s["artifact_bytes"] for s in sims),
            sent=sent,
            reports_stored=reports,
            ingest_rate_per_s=round(messages / wall, 1),
            lag_p50_s=percentile(lags, 0.5),
            lag_p99_s=percentile(lags, 0.99),
            lag_max_s=max(lags) if lags else None,
            daemon_cpu_s=round(d_cpu1 - d_cpu0, 2),
            daemon_run_delay_s=round(d_wait1 - d_wait0, 2),
            loadavg=os.getloadavg()[0],
            daemon_cpu_ms_per_msg=round(1000 * (d_cpu1 - d_cpu0) / max(messages, 1), 3),
            daemon_rss_mb=round(d_rss1, 1),
            daemon_rss_start_mb=round(d_rss0, 1),
            daemon_peak_rss_mb=round(d_peak.stop(), 1),
            broker_cpu_s=round(b_cpu1 - b_cpu0, 2),
            broker_rss_mb=round(b_rss1, 1),
            broker_peak_rss_mb=round(b_peak.stop(), 1),
            sim_cpu_s=round(sum(s["cpu_s"] for s in sims), 1),
            sim_rss_mb_per_proc=round(max(s["rss_mb"] for s in sims), 1),
            db_growth=grown,
            control_db_mb_per_day=round(grown["control_db"] * per_day / 1e6, 1),
            feature_store_mb_per_day=round(grown["feature_store"] * per_day / 1e6, 1),
            control_db_kb_per_device_day=round(grown["control_db"] * per_day / n / 1e3, 1),
        )
        # The CLI, answering from the database this fleet left behind.
        result["cli_s"] = {
            "startup (--help)": round(edgeloop(ws, broker.url, "--help"), 2),
            "fleet": round(edgeloop(ws, broker.url, "fleet"), 2),
            "fleet --timeout 0.5": round(edgeloop(ws, broker.url, "fleet", "--timeout", "0.5"), 2),
            "drift": round(edgeloop(ws, broker.url, "drift"), 2),
            "events": round(edgeloop(ws, broker.url, "events"), 2),
            "report": round(edgeloop(ws, broker.url, "report", "-o", str(work / "report.html")), 2),
        }
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        broker.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[100])
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--request-rate", type=float, default=1.0)
    ap.add_argument("--capture-rate", type=float, default=0.01)
    ap.add_argument("--drift-share", type=float, default=0.05)
    ap.add_argument("--churn-share", type=float, default=0.0)
    ap.add_argument("--fail-load-share", type=float, default=0.0)
    ap.add_argument("--connect-rate", type=float, default=300.0)
    # The agent's default is 1,000 rows; at 1 request/s that is one window per ~17 min,
    # so a short run would store none. 100 makes `edgeloop drift` have something to show.
    ap.add_argument("--drift-window-rows", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep each workspace under DIR/N")
    args = ap.parse_args()
    # Mosquitto inherits this limit from us: one descriptor per connection.
    fds = raise_fd_limit(max(args.devices) + 1024)
    print(f"RLIMIT_NOFILE {fds}", file=sys.stderr)
    for n in args.devices:
        if args.keep:
            result = measure(n, args, args.keep / str(n))
        else:
            with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as tmp:
                result = measure(n, args, Path(tmp))
        result["self_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
