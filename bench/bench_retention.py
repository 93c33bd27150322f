"""Database size over 30 simulated days, with and without retention, in the same run.

N devices send a telemetry report every ``--telemetry-s`` (one variant: counts, a latency
histogram the agent's own ``LatencyHistogram`` recorded, assignment counts, concept-drift
state) and a drift window every ``--window-s`` (a real document from the agent's
``DriftMonitor`` over the demo's 8 sensor features, ~3 KB). Every report is stored through
``fleet.ingest.handle_report`` into database A (no retention); each simulated hour's new rows
are copied into database B, where ``RetentionJob`` then runs with the simulated clock, as
the daemon's hourly run would. De-duplication ids are dated on the simulated clock too.

Printed per simulated day: both file sizes (after a WAL checkpoint) and B/A; then the
hourly runs' time and longest transaction, and a catch-up run (retention first enabled on
A's whole month). Writes one JSON line to ``--out`` if given.

    .venv/bin/python bench/bench_retention.py --devices 10 --days 30
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig  # noqa: E402
from edgeloop_agent.telemetry import json_safe  # noqa: E402
from edgeloop_agent.wire.histogram import LatencyHistogram  # noqa: E402
from edgeloop_agent.wire.profile import build_reference_profile  # noqa: E402
from edgeloop_control.demo.sensors import FEATURES, SensorShift, generate  # noqa: E402
from edgeloop_control.fleet.ingest import handle_report  # noqa: E402
from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.policies.retention.config import RetentionConfig  # noqa: E402
from edgeloop_control.policies.retention.job import RetentionJob, RetentionRun  # noqa: E402

DAY = 86400.0
HOUR = 3600.0
VARIANT = "sensor@v1"
COPIED = ("variant_stats", "variant_keys", "drift_windows", "concept_drift", "seen_messages")


def window_pool(n: int) -> list[dict[str, Any]]:
    """Real drift-window documents from the agent's monitor (a shift in the later ones)."""
    profile = build_reference_profile(
        generate(2000, seed=1)[list(FEATURES)].to_numpy(float), list(FEATURES), None
    )
    monitor = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 200)))
    docs: list[dict[str, Any]] = []
    i = 0
    while len(docs) < n:
        shift = SensorShift.replaced_vibration_sensor() if i % 4 == 3 else None
        live = generate(400, seed=10 + i, shift=shift)[list(FEATURES)].to_numpy(float)
        docs += [json_safe(r.to_dict()) for r in monitor.update(live)]
        i += 1
    return docs[:n]


def latency_pool(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        hist = LatencyHistogram()
        for _ in range(rng.randint(50, 600)):
            hist.record(rng.lognormvariate(-6.5, 0.6))
        out.append(hist.to_dict())
    return out


class Fleet:
    def __init__(self, devices: int, telemetry_s: float, window_s: float, seed: int = 3) -> None:
        self.devices = [f"dev-{i:05d}" for i in range(devices)]
        self.telemetry_s, self.window_s = telemetry_s, window_s
        self.rng = random.Random(seed)
        self.latencies = latency_pool(64, self.rng)
        self.windows = window_pool(64)
        self.seq = 0

    def hour(self, db: ControlDB, start: float) -> int:
        """Every report of the hour starting at ``start``, stored in ``db``; how many."""
        rng, n = self.rng, 0
        t = start
        while t < start + HOUR:
            self.seq += 1
            window_due = int(t) % int(self.window_s) == 0
            for device in self.devices:
                requests = rng.randint(0, 600)
                window = None
                if window_due:
                    window = {
                        **rng.choice(self.windows),
                        "variant": VARIANT,
                        "version": "v1",
                        "window": {"kind": "time", "start": t - self.window_s, "end": t,
                                   "n_rows": 200},
                    }  # fmt: skip
                rid = f"{device}:boot:{self.seq}"
                payload = {
                    "report_id": rid, "device": device, "ts": t, "revision": 1,
                    "interval_s": self.telemetry_s,
                    "variants": {VARIANT: {"name": "sensor", "version": "v1", "role": "serve"}},
                    "metrics": {"variants": {VARIANT: {
                        "requests": requests, "predictions": requests,
                        "errors": {"bad_input": rng.randint(0, 3)},
                        "classification": {"n": requests // 4, "correct": requests // 5},
                        "latency": rng.choice(self.latencies),
                        "assigned": {"keyed": requests, "unkeyed": 0},
                    }}},
                    "drift": [window] if window else [],
                    "concept_drift": {VARIANT: {"n": requests // 4, "error_rate": 0.2,
                                                "drift": False, "detections": 0}},
                    "outbox": {"depth": 0, "dropped": 0},
                    "process": {"rss_bytes": 70 * 2**20, "cpu_percent": 2.0},
                }  # fmt: skip
                envelope = {"id": rid, "device_id": device, "kind": "report", "ts": t,
                            "payload": payload}  # fmt: skip
                assert handle_report(db, envelope, device)
                n += 1
            t += self.telemetry_s
        return n


def copy_new_rows(a: ControlDB, b: ControlDB, marks: dict[str, int], sim_now: float) -> None:
    """A's rows added since the last call, into B (same rowids); dedup ids on the sim clock
    (``first_sighting`` dates them on the real one)."""
    a.conn.execute(
        "UPDATE seen_messages SET ts = ? WHERE rowid > ?", (sim_now, marks["seen_messages"])
    )
    b.conn.execute("ATTACH DATABASE ? AS a", (str(a.path),))
    try:
        with b.transaction() as conn:
            for table in COPIED:
                cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
                conn.execute(
                    f"INSERT INTO main.{table}(rowid, {cols}) "
                    f"SELECT rowid, {cols} FROM a.{table} WHERE rowid > ?",
                    (marks[table],),
                )
                top = conn.execute(f"SELECT MAX(rowid) FROM a.{table}").fetchone()[0]
                marks[table] = int(top or 0)
    finally:
        b.conn.execute("DETACH DATABASE a")
    # The copy's pages are checkpointed here, as the daemon's ingest commits checkpoint their
    # own: otherwise the retention run's first commit would pay for them.
    b.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def size_mb(db: ControlDB) -> float:
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{db.path}-wal")
    return (db.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def table_mb(db: ControlDB) -> dict[str, float]:
    """MB per table, its indexes included (SQLite's dbstat; empty if it was built without)."""
    try:
        rows = db.conn.execute(
            "SELECT COALESCE(m.tbl_name, d.name) AS t, SUM(d.pgsize) AS b FROM dbstat d "
            "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY t ORDER BY b DESC"
        ).fetchall()
    except Exception:
        return {}
    return {str(r["t"]): round(r["b"] / 1e6, 2) for r in rows if r["b"] >= 10_000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--telemetry-s", type=float, default=60.0)
    ap.add_argument("--window-s", type=float, default=600.0)
    ap.add_argument("--raw-days", type=float, default=7.0)
    ap.add_argument("--batch-rows", type=int, default=RetentionConfig.batch_rows)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    fleet = Fleet(args.devices, args.telemetry_s, args.window_s)
    config = RetentionConfig(raw_days=args.raw_days, batch_rows=args.batch_rows)
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        a, b = ControlDB(Path(tmp) / "a.sqlite"), ControlDB(Path(tmp) / "b.sqlite")
        job = RetentionJob(b, config)
        marks = dict.fromkeys(COPIED, 0)
        start = (time.time() // DAY - args.days) * DAY
        runs: list[RetentionRun] = []
        days: list[dict[str, float]] = []
        reports = 0
        t_ingest = 0.0
        print(f"{args.devices} devices, telemetry every {args.telemetry_s:g} s, a drift window "
              f"every {args.window_s:g} s, raw_days {args.raw_days:g}, batch_rows "
              f"{args.batch_rows}")  # fmt: skip
        print(f"{'day':>4} {'no retention MB':>16} {'retention MB':>13} {'ratio':>6}")
        for day in range(args.days):
            for hour in range(24):
                t = start + day * DAY + hour * HOUR
                t0 = time.perf_counter()
                reports += fleet.hour(a, t)
                t_ingest += time.perf_counter() - t0
                copy_new_rows(a, b, marks, t + HOUR)
                runs.append(job.run_once(t + HOUR))
            row = {"day": day + 1, "no_retention_mb": size_mb(a), "retention_mb": size_mb(b)}
            row["ratio"] = row["retention_mb"] / row["no_retention_mb"]
            days.append(row)
            print(f"{day + 1:>4} {row['no_retention_mb']:>16.1f} {row['retention_mb']:>13.1f} "
                  f"{row['ratio']:>6.3f}", flush=True)  # fmt: skip
        busy = sorted(r.busy_s for r in runs)
        steady = [r for r in runs if sum(r.folded.values())]
        tables = {"no_retention": table_mb(a), "retention": table_mb(b)}
        # Retention first enabled on a database with the whole month raw (A): the catch-up.
        catch_up = RetentionJob(a, config).run_once(start + args.days * DAY)
        after_catch_up = size_mb(a)
        result = {
            "devices": args.devices,
            "days": args.days,
            "telemetry_s": args.telemetry_s,
            "window_s": args.window_s,
            "raw_days": args.raw_days,
            "batch_rows": args.batch_rows,
            "reports": reports,
            "ingest_s_per_report": t_ingest / reports,
            "days_mb": days,
            "final_ratio": days[-1]["ratio"],
            "per_device_mb_no_retention": days[-1]["no_retention_mb"] / args.devices,
            "per_device_mb_retention": days[-1]["retention_mb"] / args.devices,
            "hourly_run_s_p50": busy[len(busy) // 2],
            "hourly_run_s_max": busy[-1],
            "hourly_longest_tx_ms": 1000 * max(r.longest_tx_s for r in runs),
            "hourly_rows_folded_per_run": sum(sum(r.folded.values()) for r in steady)
            / max(1, len(steady)),
            "hourly_longest_tx_ms_by_step": {
                step: 1000 * max(r.longest_by_step.get(step, 0.0) for r in runs)
                for step in sorted({k for r in runs for k in r.longest_by_step})
            },
            "catch_up_longest_tx_ms_by_step": {
                k: 1000 * v for k, v in sorted(catch_up.longest_by_step.items())
            },
            "table_mb": tables,
            "catch_up_s": catch_up.busy_s,
            "catch_up_rows_folded": sum(catch_up.folded.values()),
            "catch_up_longest_tx_ms": 1000 * catch_up.longest_tx_s,
            "catch_up_transactions": catch_up.transactions,
            "catch_up_mb_after": after_catch_up,
        }
        print(
            f"hourly run: p50 {result['hourly_run_s_p50'] * 1000:.0f} ms, max "
            f"{result['hourly_run_s_max'] * 1000:.0f} ms, longest transaction "
            f"{result['hourly_longest_tx_ms']:.1f} ms, "
            f"{result['hourly_rows_folded_per_run']:.0f} raw rows folded per run"
        )
        print(
            f"catch-up (retention enabled on the month-old database): "
            f"{catch_up.busy_s:.1f} s, {result['catch_up_rows_folded']:,} rows folded in "
            f"{catch_up.transactions} transactions, longest {result['catch_up_longest_tx_ms']:.1f}"
            f" ms; {days[-1]['no_retention_mb']:.1f} MB -> {after_catch_up:.1f} MB"
        )
        for what, sizes in tables.items():
            print(f"MB per table ({what.replace('_', ' ')}): "
                  + ", ".join(f"{t} {mb:.1f}" for t, mb in sizes.items()))  # fmt: skip
        for what in ("hourly", "catch_up"):
            by_step = result[f"{what}_longest_tx_ms_by_step"]
            print(
                f"longest transaction per step ({what.replace('_', '-')}): "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in by_step.items())
            )
        print(
            f"per device after {args.days} days: {result['per_device_mb_no_retention']:.2f} MB "
            f"without retention, {result['per_device_mb_retention']:.2f} MB with "
            f"(ratio {result['final_ratio']:.3f})"
        )
        a.close()
        b.close()
    if args.out:
        with args.out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
