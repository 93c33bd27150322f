"""Feature-store benchmark: ingest rate and a point-in-time training set.

Each figure is printed beside a plain pandas baseline measured in the same run:

* ingest: ``FeatureStore.ingest`` of N rows x 20 float columns (typing, row keys,
  de-duplication lookup, date partitioning, fsync'd atomic files, catalogue
  commit) against ``DataFrame.to_parquet`` of the same frame to one file;
* re-ingest of the same rows (all duplicates) against the same baseline;
* training set: ``FeatureStore.training_set`` of L label rows x 10 features from
  two views, read from the store's Parquet files, against ``pd.read_parquet`` of
  both views whole + ``pd.merge_asof`` per view on in-memory frames.

Every measurement runs in its own process so peak RSS (``ru_maxrss``) is its own;
times are the median of ``--repeat`` runs (the control nodes this targets are
small and often busy, so single runs are noisy).

    .venv/bin/python bench/bench_featurestore.py            # 1M rows, 1M labels
    .venv/bin/python bench/bench_featurestore.py --quick    # 100k / 100k, a smoke run
"""

from __future__ import annotations

import argparse
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

import numpy as np
import pandas as pd

START = pd.Timestamp("2025-01-01", tz="UTC")
DAYS = 30
DEVICES = 10_000
SITES = 100


# -- data ------------------------------------------------------------------------------


def ingest_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        "device": rng.integers(0, DEVICES, rows),
        "ts": START + pd.to_timedelta(rng.integers(0, DAYS * 86_400_000_000, rows), unit="us"),
    }
    data.update({f"f{i:02d}": rng.random(rows) for i in range(20)})
    return pd.DataFrame(data)


def view_frames(rows: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    devices = pd.DataFrame(
        {
            "device": rng.integers(0, DEVICES, rows),
            "ts": START + pd.to_timedelta(rng.integers(0, DAYS * 86_400, rows), unit="s"),
            **{f"d{i}": rng.random(rows) for i in range(5)},
        }
    )
    site_rows = max(rows // 10, 1)
    sites = pd.DataFrame(
        {
            "site": rng.integers(0, SITES, site_rows),
            "ts": START + pd.to_timedelta(rng.integers(0, DAYS * 86_400, site_rows), unit="s"),
            **{f"s{i}": rng.random(site_rows) for i in range(5)},
        }
    )
    return devices, sites


def label_frame(rows: int, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    device = rng.integers(0, DEVICES, rows)
    return pd.DataFrame(
        {
            "device": device,
            "site": device % SITES,
            "t": START + pd.to_timedelta(rng.integers(0, DAYS * 86_400, rows), unit="s"),
            "y": rng.integers(0, 2, rows),
        }
    )


DEVICE_TTL = pd.Timedelta("7D")
FEATURES = [f"devices:d{i}" for i in range(5)] + [f"sites:s{i}" for i in range(5)]


# -- measurements (each in a child process) -------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_ingest_store(work: Path, rows: int, repeat: int) -> dict[str, Any]:
    from edgeloop_control.featurestore import FeatureStore

    frame = ingest_frame(rows)
    ingest, reingest = [], []
    for run in range(repeat):
        store = FeatureStore(work / f"ingest-store-{run}")
        t0 = time.perf_counter()
        first = store.ingest(frame, "bench", entity=["device"], timestamp="ts")
        t1 = time.perf_counter()
        again = store.ingest(frame, "bench")
        t2 = time.perf_counter()
        assert first.accepted == rows and again.duplicates == rows, (first, again)
        ingest.append(t1 - t0)
        reingest.append(t2 - t1)
    return {
        "ingest_s": statistics.median(ingest),
        "reingest_s": statistics.median(reingest),
        "files": first.files,
    }


def child_ingest_baseline(work: Path, rows: int, repeat: int) -> dict[str, Any]:
    frame = ingest_frame(rows)
    seconds = []
    for run in range(repeat):
        t0 = time.perf_counter()
        frame.to_parquet(work / f"baseline-{run}.parquet", index=False)
        seconds.append(time.perf_counter() - t0)
    return {"ingest_s": statistics.median(seconds)}


def child_prepare(work: Path, rows: int, labels: int) -> dict[str, Any]:
    from edgeloop_control.featurestore import FeatureStore

    devices, sites = view_frames(rows)
    store = FeatureStore(work / "pit-store")
    store.ingest(devices, "devices", entity=["device"], timestamp="ts", ttl=DEVICE_TTL)
    store.ingest(sites, "sites", entity=["site"], timestamp="ts")
    devices.to_parquet(work / "devices.parquet", index=False)
    sites.to_parquet(work / "sites.parquet", index=False)
    label_frame(labels).to_parquet(work / "labels.parquet", index=False)
    return {"device_rows": len(devices), "site_rows": len(sites)}


def child_pit_store(work: Path, repeat: int) -> dict[str, Any]:
    from edgeloop_control.featurestore import FeatureStore, data_hash

    labels = pd.read_parquet(work / "labels.parquet")
    before = peak_rss_mb()
    store = FeatureStore(work / "pit-store")
    times = []
    out = None
    for _ in range(repeat):
        out = None  # drop the previous result first: peak RSS is of one run
        t0 = time.perf_counter()
        out = store.training_set(labels, timestamp="t", features=FEATURES)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    columns = [ref.split(":")[1] for ref in FEATURES]
    return {
        "seconds": seconds,
        "rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "hash": data_hash(out[columns]),
        "filled": float(out[columns].notna().to_numpy().mean()),
    }


def baseline_training_set(work: Path, labels: pd.DataFrame) -> pd.DataFrame:
    devices = pd.read_parquet(work / "devices.parquet")
    sites = pd.read_parquet(work / "sites.parquet")
    # The textbook version: sort everything by time, one merge_asof per view.
    # Ties are broken by frame order, as in the store (a single ingest per view).
    left = labels.reset_index().sort_values("t", kind="stable")
    devices = devices.sort_values("ts", kind="stable").rename(columns={"ts": "t"})
    sites = sites.sort_values("ts", kind="stable").rename(columns={"ts": "t"})
    left = pd.merge_asof(left, devices, on="t", by="device", tolerance=DEVICE_TTL)
    left = pd.merge_asof(left, sites, on="t", by="site")
    return left.sort_values("index").set_index("index")


def child_pit_baseline(work: Path, repeat: int) -> dict[str, Any]:
    from edgeloop_control.featurestore import data_hash

    labels = pd.read_parquet(work / "labels.parquet")
    before = peak_rss_mb()
    times = []
    out = None
    for _ in range(repeat):
        out = None
        t0 = time.perf_counter()
        out = baseline_training_set(work, labels)
        times.append(time.perf_counter() - t0)
    assert out is not None
    columns = [ref.split(":")[1] for ref in FEATURES]
    return {
        "seconds": statistics.median(times),
        "rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "hash": data_hash(out[columns].reset_index(drop=True)),
    }


CHILDREN = {
    "ingest-store": child_ingest_store,
    "ingest-baseline": child_ingest_baseline,
    "prepare": child_prepare,
    "pit-store": child_pit_store,
    "pit-baseline": child_pit_baseline,
}


def run_child(name: str, work: Path, *args: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--work", str(work)]
    command += [str(a) for a in args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to ingest / per view")
    parser.add_argument("--labels", type=int, default=1_000_000, help="label rows")
    parser.add_argument("--quick", action="store_true", help="100k rows and labels")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(CHILDREN[opts.child](opts.work, *opts.args)))
        return
    rows, labels = (100_000, 100_000) if opts.quick else (opts.rows, opts.labels)

    with tempfile.TemporaryDirectory(prefix="bench-featurestore-") as tmp:
        work = Path(tmp)
        ours = run_child("ingest-store", work, rows, opts.repeat)
        base = run_child("ingest-baseline", work, rows, opts.repeat)
        prep = run_child("prepare", work, rows, labels)
        pit = run_child("pit-store", work, opts.repeat)
        pit_base = run_child("pit-baseline", work, opts.repeat)

    rate, base_rate = rows / ours["ingest_s"], rows / base["ingest_s"]
    rerate = rows / ours["reingest_s"]
    print(
        f"feature store bench: {rows:,} rows x 20 float columns over {DAYS} days; "
        f"median of {opts.repeat} runs; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'figure':44} {'store':>14} {'baseline':>14} {'ratio':>7}")
    print(
        f"{'ingest rows/s (to_parquet baseline)':44} {rate:>14,.0f} {base_rate:>14,.0f} "
        f"{rate / base_rate:>7.2f}   ({ours['files']} files)"
    )
    print(
        f"{'re-ingest, all duplicates, rows/s':44} {rerate:>14,.0f} {base_rate:>14,.0f} "
        f"{rerate / base_rate:>7.2f}"
    )
    print(
        f"training set: {labels:,} labels x {len(FEATURES)} features from "
        f"{prep['device_rows']:,} + {prep['site_rows']:,} feature rows"
    )
    print(
        f"{'  seconds (read_parquet + merge_asof base)':44} {pit['seconds']:>14.2f} "
        f"{pit_base['seconds']:>14.2f} {pit['seconds'] / pit_base['seconds']:>7.2f}"
    )
    print(
        f"{'  peak RSS MB':44} {pit['rss_mb']:>14.0f} {pit_base['rss_mb']:>14.0f} "
        f"{pit['rss_mb'] / pit_base['rss_mb']:>7.2f}"
    )
    print(
        f"{'  RSS MB before the join (labels loaded)':44} {pit['rss_before_mb']:>14.0f} "
        f"{pit_base['rss_before_mb']:>14.0f}"
    )
    same = "identical" if pit["hash"] == pit_base["hash"] else "DIFFERENT"
    print(f"  results vs baseline: {same}; {pit['filled']:.1%} of feature cells filled")


if __name__ == "__main__":
    main()
