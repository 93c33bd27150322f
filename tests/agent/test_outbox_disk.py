"""The outbox and the state directory on a real small, full or read-only filesystem.

Each test mounts its own tmpfs (the suite runs as root); where mounting is impossible the
test is skipped with the reason. Nothing is simulated: ENOSPC and EROFS come from the kernel.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_agent import statedir
from edgeloop_agent.outbox import Outbox
from edgeloop_agent.statedir import StateDir, atomic_write
from tests.tmpfs import fill, remount, tmpfs

PAD = "q" * 250  # ~300-byte envelopes, like a small report


@pytest.fixture
def fs3m(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "3m") as mnt:
        yield mnt


def _outbox(path: Path, **kw: object) -> Outbox:
    kw.setdefault("max_bytes", 64 * 1024 * 1024)  # the agent's default: far above the disk
    kw.setdefault("device_id", "dev-1")
    return Outbox(path, **kw)  # type: ignore[arg-type]


def test_wal_stays_bounded_and_puts_go_on_when_the_disk_fills(fs3m: Path) -> None:
    """Before: the WAL alone grew to the whole 3 MB filesystem, then every put failed."""
    path = fs3m / "outbox.sqlite"
    ob = _outbox(path)
    wal_max = 0
    results = []
    for i in range(12_000):  # ~3.6 MB of envelopes through a 3 MB filesystem
        kind = "report" if i % 10 == 0 else "sample"
        results.append((kind, ob.put("t", {"i": i, "pad": PAD}, kind)))
        if i % 50 == 0:
            wal_max = max(wal_max, os.path.getsize(str(path) + "-wal"))
    st = ob.stats()
    assert st["disk"]["state"] == "disk_full"
    # Bounded WAL: checkpoint every 64 pages, journal_size_limit 256 KiB, plus one transaction.
    assert wal_max <= 300 * 1024, f"WAL reached {wal_max} bytes"
    # Reports kept being accepted on the full disk by evicting the oldest samples ...
    tail = results[-2000:]
    assert all(mid is not None for kind, mid in tail if kind == "report")
    # ... and every message not stored is counted, by kind.
    refused = {
        k: sum(1 for kind, mid in results if kind == k and mid is None) for k in st["accepted"]
    }
    for kind in ("sample", "report"):
        lost = st["dropped"].get(kind, 0)
        assert st["accepted"].get(kind, 0) + refused[kind] == sum(
            1 for k, _ in results if k == kind
        )
        assert lost >= refused[kind]
    assert (
        st["accepted"]["sample"] - st["dropped_oldest"].get("sample", 0)
        == st["by_kind"]["sample"]["depth"]
    )
    assert ob.depth() == len(ob.peek(100_000))
    ob.close()


def test_delivery_resumes_and_the_full_state_lifts_when_space_returns(fs3m: Path) -> None:
    path = fs3m / "outbox.sqlite"
    ob = _outbox(path)
    first = [ob.put("t", {"i": i, "pad": PAD}, "report") for i in range(100)]
    assert os.path.exists(ob.reserve_path)  # the reserve is taken while there is room
    filler = fs3m / "filler"
    fill(filler)
    assert ob.maintain() == "disk_full"  # noticed by housekeeping, before any put fails
    # Delivery works on the full disk: peek, mark, ack (the reserve gives the WAL room).
    batch = ob.peek(50)
    assert [m.id for m in batch] == first[:50]
    ob.mark_inflight([m.id for m in batch])
    assert ob.ack([m.id for m in batch]) == 50
    assert ob.put("t", {"during": True}, "report") is not None
    filler.unlink()
    assert ob.maintain() == "ok"
    assert os.path.exists(ob.reserve_path)  # taken again
    assert ob.stats()["disk"]["capacity_bytes"] == ob.max_bytes
    assert ob.put("t", {"after": True}, "report") is not None
    ob.close()


def test_reopening_on_a_full_disk_uses_the_reserve(fs3m: Path) -> None:
    """Before: reopening a WAL database on a full disk failed (no room for its -shm), the
    OutboxError went uncaught and the agent exited 1."""
    path = fs3m / "outbox.sqlite"
    with _outbox(path) as ob:
        ids = [ob.put("t", {"i": i}, "event") for i in range(20)]
    fill(fs3m / "filler")
    with _outbox(path) as again:
        assert again.storage == "disk"
        assert [m.id for m in again.peek(100)] == ids
        assert again.ack(ids[:5]) == 5


def test_read_only_disk_keeps_the_outbox_in_memory_then_moves_it_to_disk(fs3m: Path) -> None:
    path = fs3m / "outbox.sqlite"
    with _outbox(path) as ob:
        old = [ob.put("t", {"i": i}, "report") for i in range(3)]
    remount(fs3m, "ro")
    try:
        ob = _outbox(path)
        assert (ob.storage, ob.disk_state) == ("memory", "read_only")
        new = [ob.put("t", {"n": i}, "sample") for i in range(5)]
        assert None not in new
        assert ob.maintain() == "read_only"
        # Bounded in memory too.
        assert ob.stats()["disk"]["capacity_bytes"] == ob.memory_max_bytes
    finally:
        remount(fs3m, "rw")
    assert ob.maintain() == "ok"
    assert ob.storage == "disk"
    # The backlog left on disk and what was kept in memory are both delivered.
    assert [m.id for m in ob.peek(100)] == [*old, *new]
    ob.close()
    with _outbox(path) as again:
        assert [m.id for m in again.peek(100)] == [*old, *new]


def test_atomic_write_names_a_full_or_read_only_disk(fs3m: Path) -> None:
    state = StateDir(fs3m / "state")
    state.save_deployment({"revision": 1})
    target = fs3m / "state" / "deployment.json"
    fill(fs3m / "filler")
    # Looked up here so that each test fails on its own against an agent without them.
    DiskFullError, ReadOnlyError = statedir.DiskFullError, statedir.ReadOnlyError
    with pytest.raises(DiskFullError) as err:
        atomic_write(target, b"new" * 10_000)
    assert isinstance(err.value, statedir.StorageError) and isinstance(err.value, OSError)
    assert err.value.code == "disk_full" and "deployment.json" in str(err.value)
    assert state.load_deployment() == {"revision": 1}
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []
    (fs3m / "filler").unlink()
    remount(fs3m, "ro")
    try:
        with pytest.raises(ReadOnlyError) as err:
            atomic_write(target, b"new")
        assert err.value.code == "read_only"
        # A restart on the read-only disk: the state directory opens, the last good
        # deployment loads, and saving the same document again writes nothing.
        again = StateDir(fs3m / "state")
        assert again.load_deployment() == {"revision": 1}
        again.save_deployment({"revision": 1})
    finally:
        remount(fs3m, "rw")


def test_saving_an_unchanged_deployment_writes_nothing(fs3m: Path) -> None:
    state = StateDir(fs3m / "state")
    state.save_deployment({"revision": 1})
    fill(fs3m / "filler")
    state.save_deployment({"revision": 1})  # a restart on the full disk: no error
    with pytest.raises(statedir.DiskFullError):
        state.save_deployment({"revision": 2})
    assert state.load_deployment() == {"revision": 1}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_state_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Before: directories 0755 and the outbox 0644 (0777/0666 under umask 0)."""
    old = os.umask(umask)
    try:
        root = tmp_path / "state"
        state = StateDir(root)
        data = b"onnx"
        sha = hashlib.sha256(data).hexdigest()
        artifact = state.store_artifact("m", "v1", sha, data)
        state.save_deployment({"revision": 1})
        ob = Outbox(root / "outbox.sqlite", max_bytes=1_000_000, device_id="d")
        ob.put("t", {"x": 1}, "report")
        files = [
            artifact,
            root / "deployment.json",
            root / "outbox.sqlite",
            root / "outbox.sqlite-wal",
            root / "outbox.sqlite-shm",
            root / "outbox.sqlite.reserve",
        ]
        for d in (root, root / "models"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        ob.close()
    finally:
        os.umask(old)


def test_state_left_world_readable_by_an_older_agent_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "models").mkdir(parents=True)
    for d in (root, root / "models"):
        d.chmod(0o755)
    (root / "deployment.json").write_text("{}")
    (root / "models" / "m@v1-0123456789abcdef.onnx").write_bytes(b"x")
    Outbox(root / "outbox.sqlite", max_bytes=1000, device_id="d").close()
    (root / "outbox.sqlite").chmod(0o644)
    for f in (root / "deployment.json", root / "models" / "m@v1-0123456789abcdef.onnx"):
        f.chmod(0o644)
    StateDir(root)
    Outbox(root / "outbox.sqlite", max_bytes=1000, device_id="d").close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "models").stat().st_mode) == 0o700
    for f in (
        root / "deployment.json",
        root / "models" / "m@v1-0123456789abcdef.onnx",
        root / "outbox.sqlite",
    ):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_filesystem_grown_under_the_outbox_is_used_without_reopening(fs3m: Path) -> None:
    """The issue's case: after the filesystem grew, nothing was delivered until a restart."""
    path = fs3m / "outbox.sqlite"
    ob = _outbox(path)
    for i in range(12_000):
        ob.put("t", {"i": i, "pad": PAD}, "sample")
    assert ob.maintain() == "disk_full"
    evicted = ob.stats()["dropped_oldest"]["sample"]
    assert evicted > 0  # the full disk made room by evicting, and counted it
    remount(fs3m, "size=12m")
    assert ob.maintain() == "ok"
    depth = ob.depth()
    ids = [ob.put("t", {"more": i, "pad": PAD}, "sample") for i in range(2000)]
    assert None not in ids
    # With room again nothing more is evicted: the outbox grows into the new space.
    assert ob.stats()["dropped_oldest"]["sample"] == evicted
    assert ob.depth() == depth + 2000
    batch = [m.id for m in ob.peek(500)]
    ob.mark_inflight(batch)
    assert ob.ack(batch) == 500
    ob.close()
