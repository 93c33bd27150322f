"""Start-up time of the `edgeloop` CLI: wall time of `edgeloop --help` and a few
`edgeloop X --help`, beside `python -c pass` measured in the same run (the interpreter's own
start-up, the floor no command can go below), as a ratio.

The last row imports and builds every command first, as `edgeloop --help` did before
cli/lazy.py: the same run's figure for the old way.

Each command runs ``--repeat`` times, alternating with the baseline so that load from other
processes on the box hits both alike; the median and the minimum are printed. Target:
`edgeloop --help` under 0.8 s (docs/performance.md).

    .venv/bin/python bench/bench_cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    [],
    ["models"],
    ["fleet"],
    ["ab"],
    ["rollout"],
    ["train"],
]
TARGET_S = 0.8
# What `edgeloop --help` cost before cli/lazy.py: every command module imported and built.
EAGER = (
    "import sys\n"
    "from edgeloop_control.cli import app, lazy\n"
    "for name in lazy.COMMANDS: lazy.load(name)\n"
    "sys.argv = ['edgeloop', '--help']\n"
    "app()\n"
)


def _edgeloop() -> str:
    beside = Path(sys.executable).with_name("edgeloop")
    found = str(beside) if beside.exists() else shutil.which("edgeloop")
    if not found:
        sys.exit("edgeloop is not installed in this environment (make setup)")
    return found


def _wall(argv: list[str], cpu: list[float] | None = None) -> float:
    """Wall time of one run; its CPU time (user + system) is appended to ``cpu``. On a
    shared box the wall time includes waiting for a core; the CPU time does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    edgeloop = _edgeloop()
    baseline: list[float] = []
    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    _wall([edgeloop, "--help"])  # warm the page cache and .pyc files once
    for _ in range(args.repeat):
        for cmd in COMMANDS:
            baseline.append(_wall([sys.executable, "-c", "pass"], cpu.setdefault("pass", [])))
            name = " ".join(["edgeloop", *cmd, "--help"])
            timings.setdefault(name, []).append(
                _wall([edgeloop, *cmd, "--help"], cpu.setdefault(name, []))
            )
        name = "--help, every module imported"
        timings.setdefault(name, []).append(
            _wall([sys.executable, "-c", EAGER], cpu.setdefault(name, []))
        )
    base = statistics.median(baseline)
    rows = [
        {
            "command": name,
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "ratio_to_python": statistics.median(ts) / base,
            "cpu_median_s": statistics.median(cpu[name]),
        }
        for name, ts in timings.items()
    ]
    if args.json:
        print(json.dumps({"python_pass_median_s": base, "rows": rows}, indent=2))
        return
    print(
        f"baseline `python -c pass`: median {base:.3f} s, min {min(baseline):.3f} s, "
        f"CPU {statistics.median(cpu['pass']):.3f} s"
    )
    print(f"{'command':34} {'median s':>9} {'min s':>7} {'x python':>9} {'CPU s':>7}")
    for r in rows:
        print(
            f"{r['command']:34} {r['median_s']:9.3f} {r['min_s']:7.3f} "
            f"{r['ratio_to_python']:9.1f} {r['cpu_median_s']:7.3f}"
        )
    top = rows[0]
    verdict = "meets" if top["median_s"] < TARGET_S else "MISSES"
    print(f"`edgeloop --help` {verdict} the {TARGET_S} s target (median {top['median_s']:.3f} s)")


if __name__ == "__main__":
    main()
