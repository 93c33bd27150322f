"""Crash safety and concurrent writers, with real processes killed mid-ingest."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from edgeloop_control.featurestore import FeatureStore

ROWS = 200_000

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np, pandas as pd
    from edgeloop_control.featurestore import FeatureStore

    root, seed, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start_at = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "device": rng.integers(0, 500, rows),
        "ts": pd.Timestamp("2025-01-01", tz="UTC")
              + pd.to_timedelta(rng.integers(0, 20 * 86_400, rows), unit="s"),
        **{f"f{i}": rng.random(rows) for i in range(6)},
    })
    frame.to_parquet(root + ".input.parquet")
    store = FeatureStore(root)
    while time.time() < start_at:
        time.sleep(0.001)
    print("ready", flush=True)
    result = store.ingest(frame, "crashy", entity=["device"], timestamp="ts")
    print("done", result.accepted, result.duplicates, flush=True)
    """
)


def writer(tmp_path: Path, root: Path, seed: int, rows: int, *extra: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(root), str(seed), str(rows), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )


def on_disk(root: Path) -> set[str]:
    base = root / "offline"
    return {p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file()}


# The ingest takes about 0.4-0.8 s on two cores; on such a machine these delays kill it
# before any file, among the temporary files, and between the renames and the commit.
@pytest.mark.parametrize("delay", [0.1, 0.3, 0.5])
def test_a_killed_ingest_is_all_or_nothing_and_leaves_no_litter(
    tmp_path: Path, delay: float
) -> None:
    root = tmp_path / "features"
    FeatureStore(root).ingest(
        pd.DataFrame(
            {"device": [1], "ts": [pd.Timestamp("2024-12-31", tz="UTC")], "f0": [0.5]}
        ).assign(**{f"f{i}": 0.5 for i in range(1, 6)}),
        "crashy",
        entity=["device"],
        timestamp="ts",
    )
    child = writer(tmp_path, root, seed=1, rows=ROWS)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)

    store = FeatureStore(root)
    rows = len(store.read("crashy"))
    assert rows in (1, 1 + ROWS)  # the ingest is wholly visible or not at all
    catalogued = {f.path for f in store.files("crashy")}
    assert all((root / path).is_file() for path in catalogued)
    assert sum(pq.read_metadata(root / p).num_rows for p in catalogued) == rows

    litter = on_disk(root) - catalogued
    assert sorted(store.sweep()) == sorted(litter)
    assert on_disk(root) == catalogued
    assert not list(root.rglob("*.tmp"))

    # Running the same ingest again completes it exactly once.
    frame = pd.read_parquet(f"{root}.input.parquet")
    result = store.ingest(frame, "crashy")
    assert result.accepted + rows == 1 + ROWS
    assert len(store.read("crashy")) == 1 + ROWS


def test_orphans_are_invisible_and_swept_by_the_next_ingest(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")
    frame = pd.DataFrame({"device": ["a"], "ts": [pd.Timestamp("2025-01-01", tz="UTC")], "v": [1]})
    store.ingest(frame, "v", entity=["device"], timestamp="ts")
    (committed,) = store.files("v")
    partition = (store.root / committed.path).parent
    # What a crash leaves: a half-written temp file and a renamed but uncommitted file.
    (partition / ".part-00000009-deadbeef.parquet.1234.tmp").write_bytes(b"PAR1 partial")
    orphan = partition / "part-00000009-deadbeef.parquet"
    pq.write_table(pq.read_table(store.root / committed.path), orphan)

    assert len(store.read("v")) == 1
    store.ingest(frame.assign(v=2), "v")
    assert not orphan.exists()
    assert not list(partition.glob("*.tmp"))
    assert sorted(store.read("v")["v"]) == [1, 2]


def test_concurrent_writers_never_store_a_row_twice(tmp_path: Path) -> None:
    root = tmp_path / "features"
    FeatureStore(root)  # create the catalogue before the race
    start_at = time.time() + 2.0
    children = [writer(tmp_path, root, 7, 30_000, str(start_at)) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert all(child.returncode == 0 for child in children), outputs
    accepted = sorted(int(out.split()[2]) for out in outputs)
    assert accepted == [0, 30_000]
    stored = FeatureStore(root).read("crashy")
    assert len(stored) == 30_000
    assert not stored.duplicated().any()
