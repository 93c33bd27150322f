"""Curves for docs/scale.md from the JSON lines of ``bench/scale_ingest.py``.

    .venv/bin/python bench/scale_plot.py results.jsonl --out docs/img/scale_ingest.png

Cost per device against fleet size (log x): daemon CPU per device, ingest lag p99, daemon
and broker RSS, CLI time to answer. matplotlib is a dev-only convenience here; if it is
missing the script prints the table instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return sorted(rows, key=lambda r: r["devices"])


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| devices | interval | msgs/s | lag p50 | lag p99 | daemon CPU | CPU/msg | daemon RSS "
        "| broker CPU | broker RSS | control DB/day | fleet | drift | events | report |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    out = []
    for r in rows:
        cli = r.get("cli_s", {})
        cpu_pct = 100 * r["daemon_cpu_s"] / r["sim_wall_s"]
        out.append(
            f"| {r['devices']:,} | {r['interval_s']:g} s | {r['ingest_rate_per_s']:.0f} "
            f"| {1000 * r['lag_p50_s']:.0f} ms | {1000 * r['lag_p99_s']:.0f} ms "
            f"| {cpu_pct:.0f} % | {r['daemon_cpu_ms_per_msg']:.2f} ms "
            f"| {r['daemon_peak_rss_mb']:.0f} MB "
            f"| {100 * r['broker_cpu_s'] / r['sim_wall_s']:.1f} % "
            f"| {r['broker_peak_rss_mb']:.0f} MB "
            f"| {r.get('control_db_mb_per_day', 0):,.0f} MB "
            f"| {cli.get('fleet', 0):.1f} s | {cli.get('drift', 0):.1f} s "
            f"| {cli.get('events', 0):.1f} s | {cli.get('report', 0):.1f} s |"
        )
    return head + "\n".join(out)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["devices"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    ax.plot(n, [1000 * r["daemon_cpu_s"] / r["sim_wall_s"] / r["devices"] for r in rows], "o-")
    ax.plot(n, [1000 * r["broker_cpu_s"] / r["sim_wall_s"] / r["devices"] for r in rows], "s-")
    ax.set_title("CPU per device (ms of CPU per s)")
    ax.legend(["control daemon", "mosquitto"])
    ax = axes[0][1]
    ax.plot(n, [r["lag_p50_s"] for r in rows], "o-", label="p50")
    ax.plot(n, [r["lag_p99_s"] for r in rows], "s-", label="p99")
    ax.axhline(5.0, color="red", ls=":", label="target p99")
    ax.set_yscale("log")
    ax.set_title("ingest lag, device send -> DB (s)")
    ax.legend()
    ax = axes[1][0]
    ax.plot(n, [r["daemon_peak_rss_mb"] for r in rows], "o-", label="control daemon")
    ax.plot(n, [r["broker_peak_rss_mb"] for r in rows], "s-", label="mosquitto")
    ax.set_title("peak RSS (MB)")
    ax.legend()
    ax = axes[1][1]
    for name in ("fleet", "drift", "events", "report", "startup (--help)"):
        ax.plot(n, [r.get("cli_s", {}).get(name) for r in rows], "o-", label=name)
    ax.axhline(1.0, color="red", ls=":", label="target fleet")
    ax.set_title("CLI time to answer (s)")
    ax.legend(fontsize=8)
    for a in axes.flat:
        a.set_xscale("log")
        a.set_xlabel("simulated devices")
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = load(args.results)
    print(table(rows))
    if args.out:
        try:
            plot(rows, args.out)
        except ImportError:
            print("matplotlib is not installed: table only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
