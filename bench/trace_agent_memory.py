"""What a serving agent's Python heap gains from traffic: tracemalloc, idle vs steady state.

Same set-up as ``bench_memory.py`` (two 32-feature HGB models A/B 50/50, drift, feedback
window 20,000, 5 % capture). The agent runs with tracemalloc on (a ``sitecustomize`` on its
path starts it and dumps a snapshot when asked through a file), so it is slower than
usual: the load is paced at ``--rate`` (default 2,000/s). Snapshots: after deployment and a
2,000-request warm-up (idle), then after ``--requests`` more (steady: the feedback window,
drift windows and remembered ids full). Prints the top allocations gained, by line.

    .venv/bin/python bench/trace_agent_memory.py
    .venv/bin/python bench/trace_agent_memory.py --before /work/before-fb/agent/src
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_agent as ba
from common import LOAD_CPU, Client, pin, rss_kib, start_broker

SITECUSTOMIZE = r"""
import ctypes, json, os, threading, time, tracemalloc

if os.environ.get("EDGELOOP_TRACE_PYTHON") == "1":
    tracemalloc.start(1)
_ask = os.environ["EDGELOOP_TRACE_ASK"]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _pymalloc():
    # CPython's small-object allocator (its own mmapped arenas, outside malloc's figures):
    # sys._debugmallocstats() writes to C's stderr, so catch fd 2 for the call.
    import sys, tempfile
    keep, tmp = os.dup(2), tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(keep, 2)
        os.close(keep)
    tmp.seek(0)
    out = {}
    for line in tmp.read().decode(errors="replace").splitlines():
        for key, name in (("# arenas allocated current", "pymalloc_arenas"),
                          ("# bytes in allocated blocks", "pymalloc_used"),
                          ("# bytes in available blocks", "pymalloc_free")):
            if line.startswith(key):
                out[name] = int(line.split("=")[1].replace(",", "").strip())
    if "pymalloc_arenas" in out:
        out["pymalloc_arenas"] <<= 20  # 1 MiB arenas (CPython 3.10+): bytes mapped
    return out


def _native():
    # glibc's view of the malloc heap, SQLite's own count, the kernel's resident set.
    out = {}
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    mi = libc.mallinfo2()
    out.update({n: getattr(mi, n) for n, _ in _Mallinfo2._fields_})
    import sqlite3  # noqa: F401 - the agent has it loaded; find its library
    lib = next((line.split()[-1] for line in open("/proc/self/maps")
                if "libsqlite3" in line), None)
    if lib:
        sq = ctypes.CDLL(lib)
        sq.sqlite3_memory_used.restype = ctypes.c_int64
        out["sqlite_bytes"] = sq.sqlite3_memory_used()
    out.update(_pymalloc())
    for line in open("/proc/self/smaps_rollup"):
        k = line.split(":")[0]
        if k in ("Rss", "Anonymous"):
            out[k.lower() + "_bytes"] = int(line.split()[1]) * 1024
    return out

def _watch():
    n = 0
    while True:
        time.sleep(0.2)
        if os.path.exists(_ask):
            out = open(_ask).read().strip()
            os.unlink(_ask)
            with open(out + ".json", "w") as fh:
                json.dump(_native(), fh)
            if tracemalloc.is_tracing():
                tracemalloc.take_snapshot().dump(out + ".tmp")
                os.replace(out + ".tmp", out)
            else:
                os.replace(out + ".json", out + ".json.done")
                open(out, "w").close()

threading.Thread(target=_watch, daemon=True, name="trace-dump").start()
"""


def smaps(pid: int) -> dict[str, tuple[int, int]]:
    """Resident kB by mapping (start address and name: the heap grows at its end) from
    /proc/PID/smaps, with the mapping's size."""
    out: dict[str, tuple[int, int]] = {}
    key, size = "", 0
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                name = head[5] if len(head) > 5 else "[anon]"
                key, size = f"{head[0].split('-')[0]} {name}", (hi - lo) >> 10
            elif head[0] == "Rss:":
                out[key] = (int(head[1]), size)
    return out


def snapshot(ask: Path, out: Path) -> tuple[tracemalloc.Snapshot | None, dict[str, int]]:
    ask.write_text(str(out))
    deadline = time.time() + 120
    while not out.exists():
        if time.time() > deadline:
            raise TimeoutError("the agent did not dump its snapshot")
        time.sleep(0.2)
    done = Path(str(out) + ".json.done")
    native = json.loads((done if done.exists() else Path(str(out) + ".json")).read_text())
    snap = tracemalloc.Snapshot.load(str(out)) if out.stat().st_size else None
    return snap, native


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, metavar="AGENT_SRC", help="trace that agent instead")
    ap.add_argument("--requests", type=int, default=60_000)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--native-only",
        action="store_true",
        help="no tracemalloc (its own allocations skew the native figures): malloc and SQLite",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeloop-trace-"))
    trace_dir = work / "trace"
    trace_dir.mkdir()
    (trace_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ask = work / "ask"
    models = ba.train_models("hgb", 5000)
    pin(os.getpid(), LOAD_CPU)
    broker = start_broker(work)
    setup = Client(broker.port, "trace-setup")
    names = models[0].feature_names
    # On the agent's path (start_agent passes this environment on): the tracing
    # sitecustomize, then the other checkout's source if one is traced.
    path = [str(trace_dir)] + ([str(args.before.resolve())] if args.before else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    os.environ["EDGELOOP_TRACE_ASK"] = str(ask)
    os.environ["EDGELOOP_TRACE_PYTHON"] = "0" if args.native_only else "1"
    server = ba.start_agent(broker.port, work, models, setup)
    try:
        ba.warm_up(server, broker.port, work, names, 2000)
        time.sleep(1.0)
        idle, native_idle = snapshot(ask, work / "idle.snap")
        maps_idle = smaps(server.pid)
        rss_idle = (rss_kib(server.pid) or 0) / 1024
        sus = ba.sustained(server, broker.port, work, names, args.rate, args.requests)
        time.sleep(1.0)
        steady, native_steady = snapshot(ask, work / "steady.snap")
        maps_steady = smaps(server.pid)
        rss_steady = (rss_kib(server.pid) or 0) / 1024
    finally:
        server.stop()
        setup.close()
        broker.stop()
    print(f"agent {args.before or 'this checkout'}; {args.requests:,} at {args.rate:,.0f}/s, "
          f"lost {sus['lost']}; VmRSS {rss_idle:.1f} -> {rss_steady:.1f} MB")  # fmt: skip
    if idle is not None and steady is not None:
        total = [sum(st.size for st in s.statistics("filename")) for s in (idle, steady)]
        print(f"traced Python heap: idle {total[0] / 1e6:.2f} MB, steady {total[1] / 1e6:.2f} "
              f"MB (+{(total[1] - total[0]) / 1e6:.2f}); tracemalloc's own memory is in the "
              "figures below")  # fmt: skip
    print("native (MB)           idle   steady   gain")
    for key, label in (
        ("rss_bytes", "resident"),
        ("anonymous_bytes", "  anonymous"),
        ("arena", "malloc heap (sbrk)"),
        ("hblkhd", "malloc mmapped"),
        ("uordblks", "  malloc in use"),
        ("fordblks", "  malloc free, kept"),
        ("keepcost", "  trimmable top"),
        ("sqlite_bytes", "SQLite's own"),
        ("pymalloc_arenas", "CPython arenas"),
        ("pymalloc_used", "  objects in them"),
        ("pymalloc_free", "  free blocks"),
    ):
        a, b = native_idle.get(key, 0) / 1e6, native_steady.get(key, 0) / 1e6
        print(f"  {label:20} {a:7.2f} {b:8.2f} {b - a:+6.2f}")
    grown = sorted(
        ((rss - maps_idle.get(k, (0, 0))[0], k, size) for k, (rss, size) in maps_steady.items()),
        reverse=True,
    )
    print("mappings that grew most (resident kB gained, mapping, its size kB):")
    for gain, k, size in grown[:8]:
        print(f"  {gain:+7d} kB  {k}  ({size} kB)")
    if idle is None or steady is None:
        return
    print(f"top {args.top} gains by line:")
    for stat in steady.compare_to(idle, "lineno")[: args.top]:
        frame = stat.traceback[0]
        name = "/".join(Path(frame.filename).parts[-2:])
        print(f"  {stat.size_diff / 1e3:+10.1f} kB {stat.count_diff:+8d} blocks  "
              f"{name}:{frame.lineno}")  # fmt: skip


if __name__ == "__main__":
    main()
