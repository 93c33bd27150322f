"""The feedback window's memory and CPU, this agent beside another (``--before``), same run.

Each agent's ``FeedbackJoiner`` runs in its own fresh interpreter (``PYTHONPATH`` set to its
source), with the agent's settings (window 20,000, 10,000 remembered ids) and UUID request
ids, two variants and int classes as the serving path records them, 5 % with a sample id:

  memory    tracemalloc bytes held once the window and the evicted ids are full
            (``--n`` predictions, default 60,000), per prediction in the window;
  record    CPU per ``record`` (window full: each one also evicts), best of 3;
  join      CPU per matched ``join`` and per ``unknown`` one, best of 3.

    .venv/bin/python bench/bench_feedback.py --before /work/before-fb/agent/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import gc, json, sys, time, tracemalloc, uuid
from edgeloop_agent.feedback import FeedbackJoiner

window, remember, n = (int(a) for a in sys.argv[1:4])
def uid(i):
    return str(uuid.UUID(int=i * 7919 + 12345, version=4))

gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
j = FeedbackJoiner(task="classification", max_entries=window, remember=remember)
# Ids made as the serving path makes them (one new string a request), so what a window
# keeps of them is counted.
for i in range(n):
    j.record(uid(i), "v1" if i % 2 else "v2", i % 3, i / 5000, f"s-{i}" if i % 20 == 0 else None)
gc.collect()
held = tracemalloc.get_traced_memory()[0] - base
tracemalloc.stop()
assert len(j) == window, len(j)
ids = [uid(i) for i in range(n + 30_000)]

def best(fn, reps=3, after=None):
    out = []
    for _ in range(reps):
        t0 = time.process_time()
        k = fn()
        out.append((time.process_time() - t0) / k * 1e6)
        if after is not None:
            after()
    return min(out)

state = {"next": n}
def records():
    start = state["next"]
    for i in range(start, start + 5_000):
        j.record(ids[i], "v1" if i % 2 else "v2", i % 3, i / 5000)
    state["next"] = start + 5_000
    return 5_000

def joins():
    last = state["next"]
    k = 0
    for i in range(last - 2_000, last):
        k += j.join(ids[i], i % 3, last / 5000).status == "matched"
    return max(k, 1)

def refill():
    # untimed: the next round of joins finds as many live predictions
    last = state["next"]
    for i in range(last, last + 2_000):
        j.record(ids[i], "v1", i % 3, last / 5000)
    state["next"] = last + 2_000

def unknown():
    for i in range(5_000):
        j.join("never-" + str(i), 1, state["next"] / 5000)
    return 5_000

print(json.dumps({
    "held_bytes": held,
    "per_prediction": held / window,
    "record_us": best(records),
    "join_us": best(joins, after=refill),
    "unknown_us": best(unknown),
}))
"""


def run(src: Path, window: int, remember: int, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(window), str(remember), str(n)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        sys.exit(f"{src}: {out.stderr.strip().splitlines()[-1]}")
    res: dict[str, float] = json.loads(out.stdout)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, metavar="AGENT_SRC")
    ap.add_argument("--window", type=int, default=20_000)
    ap.add_argument("--remember", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=60_000)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent.parent / "agent" / "src"
    now = run(here, args.window, args.remember, args.n)
    before = run(args.before, args.window, args.remember, args.n)
    print(f"{'figure':34} {'this agent':>12} {'before':>12} {'ratio':>7}")
    for key, label in (
        ("held_bytes", "tracemalloc bytes held"),
        ("per_prediction", "  per prediction in the window"),
        ("record_us", "record, us (window full)"),
        ("join_us", "join matched, us"),
        ("unknown_us", "join unknown id, us"),
    ):
        a, b = now[key], before[key]
        print(f"{label:34} {a:12,.2f} {b:12,.2f} {a / b:6.2f}x")


if __name__ == "__main__":
    main()
