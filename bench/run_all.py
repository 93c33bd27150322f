"""Run every ``bench/bench_*.py`` script in turn (``make bench``).

Each script prints its own figures beside baselines measured in the same run; this runner only
adds a header per script, passes ``--quick`` on to the scripts that take it, and exits non-zero
when one fails (after running the others).

    .venv/bin/python bench/run_all.py            # every script, full runs
    .venv/bin/python bench/run_all.py --quick    # smoke runs where a script has --quick
    .venv/bin/python bench/run_all.py agent drift   # only bench_agent.py and bench_drift.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def takes_quick(script: Path) -> bool:
    return "--quick" in script.read_text(encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to scripts that take it")
    ap.add_argument("only", nargs="*", help="script names without bench_ and .py")
    args = ap.parse_args()
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{name}.py" for name in args.only}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            ap.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.name in wanted]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script)]
        if args.quick and takes_quick(script):
            cmd.append("--quick")
        print(f"\n===== {script.name} ({' '.join(cmd[1:])}) =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        took = time.perf_counter() - t0
        print(f"===== {script.name}: exit {rc} in {took:.0f} s =====", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
