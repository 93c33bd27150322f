"""The outbox on a small state filesystem that fills up: the WAL's high-water mark.

Mounts a tmpfs of each size (needs root), streams ~300-byte messages (1 in 10 a report, the
rest samples) through an outbox whose max_bytes (64 MiB, the agent's default) is far above
the disk, calling maintain() every 1000 puts as the agent's housekeeping would, and prints
the WAL limit, the largest WAL seen, and what was evicted or refused.

    sudo .venv/bin/python bench/bench_outbox_disk.py [--sizes 3m,16m]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from edgeloop_agent.outbox import Outbox


def run(size: str, n: int, workdir: Path) -> None:
    mnt = workdir / f"fs-{size}"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        print(f"{size}: cannot mount a tmpfs ({done.stderr.decode().strip()}); run as root")
        return
    try:
        ob = Outbox(mnt / "outbox.sqlite", max_bytes=64 << 20, device_id="bench")
        wal = mnt / "outbox.sqlite-wal"
        wal_max, refused = 0, 0
        t0 = time.perf_counter()
        for i in range(n):
            kind = "report" if i % 10 == 0 else "sample"
            if ob.put("bench/t", {"i": i, "pad": "q" * 250}, kind) is None:
                refused += 1
            if i % 20 == 0:
                wal_max = max(wal_max, os.path.getsize(wal))
            if i % 1000 == 0:
                ob.maintain()
        elapsed = time.perf_counter() - t0
        st = ob.stats()
        print(
            f"{size:>5}: {n} puts in {elapsed:.1f} s, WAL limit {ob.wal_limit} B, "
            f"WAL max {wal_max} B, state {st['disk']['state']}, refused {refused}, "
            f"dropped {st['dropped']}, depth {st['depth']}"
        )
        ob.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3m,16m", help="tmpfs sizes, comma-separated")
    ap.add_argument("--n", type=int, default=None, help="puts per size (default: 4x the disk)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the full disk is the point; counts are printed
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            mib = float(size.rstrip("mM"))
            run(size, args.n or int(mib * 4000), Path(tmp))


if __name__ == "__main__":
    main()
