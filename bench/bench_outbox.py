"""Outbox throughput: puts/s and peek+ack/s, each beside a baseline measured in the same run.

Baseline: the naive durable queue, plain sqlite3 with SQLite's defaults (rollback journal,
synchronous=FULL), one transaction per message, for writing and for deleting.

    .venv/bin/python bench/bench_outbox.py [--n 20000] [--dir /path/on/the/device/disk]

Use a --dir on the storage the agent will really use: fsync cost is what separates the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable

from edgeloop_agent.outbox import Outbox


def _payload(i: int) -> dict:
    # A typical periodic report, about 300 bytes of JSON.
    return {
        "seq": i,
        "variant": "v2",
        "requests": 1200 + i % 17,
        "errors": {"timeout": i % 3},
        "latency": {"p50": 0.0031, "p95": 0.0122, "p99": 0.0411},
        "drift": {"psi": [0.01, 0.02, 0.004, 0.11], "alarm": False},
        "pad": "x" * 120,
    }


def _rate(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _baseline_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, "
        "topic TEXT, body BLOB)"
    )
    return conn


def bench(n: int, n_base: int, workdir: str) -> list[tuple[str, float, float]]:
    bodies = [json.dumps(_payload(i)).encode() for i in range(max(n, n_base))]
    base_put_rate, base_drain_rate = _bench_baseline(n_base, bodies, workdir)
    payloads = [_payload(i) for i in range(n)]
    return [
        *_bench_default(n, payloads, workdir, base_put_rate, base_drain_rate),
        _bench_full(n_base, payloads, workdir, base_put_rate),
        _bench_capped(n, payloads, workdir, base_put_rate),
    ]


def _bench_baseline(n_base: int, bodies: list[bytes], workdir: str) -> tuple[float, float]:
    """Put and drain rates of the naive queue: one FULL-sync transaction per message."""
    base = _baseline_db(os.path.join(workdir, "baseline.db"))

    def base_put() -> None:
        for i in range(n_base):
            base.execute("BEGIN")
            base.execute(
                "INSERT INTO q (id, topic, body) VALUES (?, ?, ?)", (f"b:{i}", "t", bodies[i])
            )
            base.execute("COMMIT")

    base_put_rate = _rate(n_base, base_put)

    def base_drain() -> None:
        for _ in range(n_base):
            base.execute("BEGIN")
            seq, _body = base.execute("SELECT seq, body FROM q ORDER BY seq LIMIT 1").fetchone()
            base.execute("DELETE FROM q WHERE seq=?", (seq,))
            base.execute("COMMIT")

    base_drain_rate = _rate(n_base, base_drain)
    base.close()
    return base_put_rate, base_drain_rate


def _bench_default(
    n: int, payloads: list[dict], workdir: str, base_put_rate: float, base_drain_rate: float
) -> list[tuple[str, float, float]]:
    """The outbox at its default durability (WAL, synchronous=NORMAL)."""
    rows = []
    ob = Outbox(os.path.join(workdir, "outbox.db"), max_bytes=1 << 30, device_id="bench")

    def ob_put() -> None:
        for p in payloads:
            ob.put("edgeloop/bench/report", p, "report")

    rows.append(("put, 1 commit/msg (WAL, NORMAL)", _rate(n, ob_put), base_put_rate))

    def ob_drain() -> None:
        while True:
            batch = [m.id for m in ob.peek(100)]
            if not batch:
                return
            ob.mark_inflight(batch)
            ob.ack(batch)

    rows.append(("peek+mark+ack, batches of 100", _rate(n, ob_drain), base_drain_rate))

    def ob_put_many() -> None:
        for start in range(0, n, 100):
            ob.put_many(
                [("edgeloop/bench/report", p, "report") for p in payloads[start : start + 100]]
            )

    rows.append(("put_many, 100 msgs/commit", _rate(n, ob_put_many), base_put_rate))
    ob.close()
    return rows


def _bench_full(
    n_base: int, payloads: list[dict], workdir: str, base_put_rate: float
) -> tuple[str, float, float]:
    """The outbox at power-cut durability (WAL, synchronous=FULL)."""
    full = Outbox(
        os.path.join(workdir, "outbox_full.db"),
        max_bytes=1 << 30,
        device_id="bench",
        synchronous="FULL",
    )

    def full_put() -> None:
        for p in payloads[:n_base]:
            full.put("edgeloop/bench/report", p, "report")

    row = ("put, 1 commit/msg (WAL, FULL)", _rate(n_base, full_put), base_put_rate)
    full.close()
    return row


def _bench_capped(
    n: int, payloads: list[dict], workdir: str, base_put_rate: float
) -> tuple[str, float, float]:
    """The outbox at capacity: every put also evicts the oldest sample."""
    capped = Outbox(os.path.join(workdir, "outbox_cap.db"), max_bytes=1_000_000, device_id="bench")
    for start in range(0, 6000, 100):
        capped.put_many([("t", p, "sample") for p in payloads[start % n : start % n + 100]])

    def capped_put() -> None:
        for p in payloads:
            capped.put("t", p, "sample")

    row = ("put at capacity (evicting oldest)", _rate(n, capped_put), base_put_rate)
    capped.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="messages per outbox measurement")
    ap.add_argument(
        "--n-base", type=int, default=2_000, help="messages per fsync-bound measurement"
    )
    ap.add_argument("--dir", default=None, help="directory for the databases (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        rows = bench(args.n, args.n_base, workdir)
    where = args.dir or tempfile.gettempdir()
    print(f"outbox bench: n={args.n}, fsync-bound n={args.n_base}, dir={where}")
    print(f"{'measurement':38} {'msg/s':>10} {'baseline msg/s':>15} {'ratio':>8}")
    for name, rate, base in rows:
        print(f"{name:38} {rate:10.0f} {base:15.0f} {rate / base:7.1f}x")


if __name__ == "__main__":
    main()
