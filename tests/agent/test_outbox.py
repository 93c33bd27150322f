from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edgeloop_agent.outbox import Outbox, OutboxError


def _open(path: Path, **kw: object) -> Outbox:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("device_id", "dev-1")
    return Outbox(path, **kw)  # type: ignore[arg-type]


def test_put_peek_ack_roundtrip_with_id_in_envelope(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db") as ob:
        mid = ob.put("edgeloop/dev-1/report", {"requests": 3}, "report")
        assert mid is not None and mid.startswith("dev-1:")
        [msg] = ob.peek(10)
        env = msg.envelope()
        assert env["id"] == mid == msg.id
        assert env["device_id"] == "dev-1"
        assert env["kind"] == "report"
        assert env["payload"] == {"requests": 3}
        assert msg.topic == "edgeloop/dev-1/report"
        # The body is what gets published: it must be plain strict JSON.
        assert json.loads(msg.body.decode()) == env
        assert ob.ack([mid]) == 1
        assert ob.depth() == 0 and ob.bytes_used() == 0
        assert ob.ack([mid]) == 0  # a second PUBACK for the same id is harmless
        assert ob.stats()["acked"] == 1


def test_ids_unique_across_restarts(tmp_path: Path) -> None:
    ids = set()
    for _ in range(3):
        with _open(tmp_path / "o.db") as ob:
            for i in range(50):
                ids.add(ob.put("t", {"i": i}, "event"))
    assert len(ids) == 150
    with _open(tmp_path / "o.db") as ob:
        assert ob.depth() == 150


def test_inflight_excluded_released_and_redelivered_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = _open(path)
    ids = [ob.put("t", {"i": i}, "report") for i in range(10)]
    batch = ob.peek(4)
    assert [m.id for m in batch] == ids[:4]
    assert ob.mark_inflight([m.id for m in batch]) == 4
    assert ob.mark_inflight([ids[0], "dev-1:gone:1"]) == 0  # already in flight / not stored
    assert [m.id for m in ob.peek(100)] == ids[4:]
    assert [m.id for m in ob.peek(3)] == ids[4:7]
    assert ob.stats()["inflight"] == 4
    assert ob.release([ids[0]]) == 1
    assert [m.id for m in ob.peek(2)] == [ids[0], ids[4]]
    assert ob.ack([ids[1]]) == 1
    assert ob.stats()["inflight"] == 2
    ob.close()
    # Restart: in-flight state from the old MQTT session is gone, un-acked messages come back.
    with _open(path) as ob2:
        assert ob2.stats()["inflight"] == 0
        assert [m.id for m in ob2.peek(100)] == [ids[0], *ids[2:]]
        assert ob2.release() == 0


def test_delivery_order_priority_then_fifo(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db") as ob:
        s1 = ob.put("t", {}, "sample")
        r1 = ob.put("t", {}, "report")
        e1 = ob.put("t", {}, "event")
        s2 = ob.put("t", {}, "sample")
        r2 = ob.put("t", {}, "report")
        assert [m.id for m in ob.peek(10)] == [e1, r1, r2, s1, s2]


def test_drop_oldest_evicts_lowest_priority_first(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db", max_bytes=4000) as ob:
        reports = [ob.put("t", {"r": i, "pad": "x" * 50}, "report") for i in range(10)]
        samples = [ob.put("t", {"s": i, "pad": "x" * 50}, "sample") for i in range(100)]
        assert ob.bytes_used() <= 4000
        stored = [m.id for m in ob.peek(1000)]
        # All reports survive; the samples kept are the newest ones, in order.
        assert stored[:10] == reports
        kept_samples = stored[10:]
        assert kept_samples == samples[-len(kept_samples) :]
        st = ob.stats()
        assert st["dropped_oldest"] == {"sample": 100 - len(kept_samples)}
        assert st["accepted"] == {"report": 10, "sample": 100}
        # Now reports push out the remaining samples before any older report.
        more = [ob.put("t", {"r": i, "pad": "x" * 50}, "report") for i in range(10, 40)]
        stored = [m.id for m in ob.peek(1000)]
        assert all(m is not None for m in more)
        assert not any(s in stored for s in samples)
        assert stored == (reports + more)[-len(stored) :]
        assert ob.bytes_used() <= 4000
        assert ob.stats()["dropped_oldest"]["report"] == 40 - len(stored)


def test_low_priority_never_evicts_higher(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db", max_bytes=1000) as ob:
        while ob.put("t", {"pad": "y" * 40}, "report") is not None:
            if ob.stats()["dropped_oldest"]:
                break
        before = [m.id for m in ob.peek(1000)]
        assert ob.put("t", {"pad": "y" * 40}, "sample") is None
        assert [m.id for m in ob.peek(1000)] == before
        assert ob.stats()["rejected_full"] == {"sample": 1}


def test_reject_new_policy(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db", max_bytes=1000, policy="reject_new") as ob:
        accepted = []
        while (mid := ob.put("t", {"pad": "z" * 40}, "event")) is not None:
            accepted.append(mid)
        assert ob.put("t", {"pad": "z" * 40}, "event") is None
        assert [m.id for m in ob.peek(1000)] == accepted
        st = ob.stats()
        assert st["rejected_full"] == {"event": 2}
        assert st["dropped_oldest"] == {}
        assert st["bytes_used"] <= 1000
        ob.ack(accepted[:3])
        assert ob.put("t", {"pad": "z" * 40}, "event") is not None


def test_oversize_message_rejected_and_counted(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db", max_bytes=500) as ob:
        keep = ob.put("t", {"a": 1}, "sample")
        assert ob.put("t", {"blob": "x" * 600}, "event") is None
        assert ob.stats()["rejected_oversize"] == {"event": 1}
        assert [m.id for m in ob.peek(10)] == [keep]


def test_put_many_is_one_batch_with_per_message_results(tmp_path: Path) -> None:
    with _open(tmp_path / "o.db", max_bytes=400) as ob:
        res = ob.put_many(
            [("a", {"i": 1}, "report"), ("b", {"big": "x" * 500}, "report"), ("c", {}, "event")]
        )
        assert res[0] is not None and res[1] is None and res[2] is not None
        assert [m.topic for m in ob.peek(10)] == ["c", "a"]
        assert ob.put_many([]) == []


def test_accounting_survives_reopen_and_bounds_file_size(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    max_bytes = 1_000_000
    ob = _open(path, max_bytes=max_bytes)
    pad = "p" * 900
    for b in range(200):  # ~20x max_bytes streamed through the outbox
        ob.put_many([("t", {"b": b, "i": i, "pad": pad}, "sample") for i in range(100)])
        assert ob.bytes_used() <= max_bytes
    used, depth = ob.bytes_used(), ob.depth()
    assert used > 0.95 * max_bytes
    ob.close()
    with _open(path, max_bytes=max_bytes) as ob2:
        assert (ob2.bytes_used(), ob2.depth()) == (used, depth)
        assert sum(len(m.body) + len(m.topic) for m in ob2.peek(100_000)) == used
        # Pages freed by eviction are reused: the file stays near max_bytes, it does not grow
        # with the stream. The WAL is bounded separately by SQLite's auto-checkpoint.
        assert os.path.getsize(path) < 2 * max_bytes
        assert ob2.file_bytes() < 2 * max_bytes + 6 * 1024 * 1024


def test_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    # max_page_count makes SQLite hit the same SQLITE_FULL path as a full filesystem.
    # reject_new: under drop_oldest a full disk makes new messages evict old ones instead
    # (tests/agent/test_outbox_disk.py); here nothing stored may be touched.
    with _open(
        tmp_path / "o.db", max_bytes=50_000_000, file_limit_bytes=64 * 1024, policy="reject_new"
    ) as ob:
        accepted = []
        for i in range(2000):
            mid = ob.put("t", {"i": i, "pad": "q" * 200}, "report")
            if mid is None:
                break
            accepted.append(mid)
        else:
            pytest.fail("the 64 KiB file limit was never reached")
        st = ob.stats()
        assert st["disk_full_errors"] >= 1
        assert st["disk"]["state"] == "disk_full"
        assert st["dropped"] == {"report": 1}
        # Nothing accepted before is lost, the accounting still matches the table.
        assert [m.id for m in ob.peek(5000)] == accepted
        assert ob.depth() == len(accepted)
        # More puts while full keep failing quietly, each counted by kind.
        assert ob.put_many([("t", {"pad": "q" * 200}, "report")] * 5) == [None] * 5
        assert ob.stats()["dropped"] == {"report": 6}
        # Draining frees pages, and the outbox accepts again.
        assert ob.ack(accepted[:100]) == 100
        assert ob.put("t", {"after": True}, "report") is not None


def test_corrupt_file_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with _open(path) as ob:
        assert ob.quarantined is not None and Path(ob.quarantined).exists()
        assert ob.stats()["quarantined"] == ob.quarantined
        assert ob.put("t", {}, "event") is not None


def test_validation_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        _open(tmp_path / "a.db", max_bytes=0)
    with pytest.raises(ValueError, match="policy"):
        _open(tmp_path / "a.db", policy="drop_newest")
    with pytest.raises(ValueError, match="device_id"):
        _open(tmp_path / "a.db", device_id="")
    with pytest.raises(ValueError, match="synchronous"):
        _open(tmp_path / "a.db", synchronous="OFF")
    with _open(tmp_path / "o.db") as ob:
        with pytest.raises(ValueError, match=r'kind must be one of .*"telemetry"'):
            ob.put("t", {}, "telemetry")
        with pytest.raises(ValueError, match="topic"):
            ob.put("a/+/b", {}, "event")
        with pytest.raises(ValueError, match="topic"):
            ob.put("", {}, "event")
        with pytest.raises(TypeError, match="payload must be a dict"):
            ob.put("t", [1, 2], "event")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="strict JSON"):
            ob.put("t", {"x": float("nan")}, "event")
        with pytest.raises(ValueError, match=r"message 1: .*strict JSON"):
            ob.put_many([("t", {}, "event"), ("t", {"o": object()}, "event")])
        with pytest.raises(TypeError, match="message ids must be str"):
            ob.ack([1])  # type: ignore[list-item]
        assert ob.depth() == 0  # a rejected batch stores nothing
    with pytest.raises(OutboxError, match="closed"):
        ob.put("t", {}, "event")


def test_two_threads_deliver_each_message_once(tmp_path: Path) -> None:
    ob = _open(tmp_path / "o.db")
    produced: list[str] = []
    acked: list[str] = []
    n = 3000
    done = threading.Event()

    def producer() -> None:
        for i in range(n):
            mid = ob.put("t", {"i": i}, "report")
            assert mid is not None
            produced.append(mid)
        done.set()

    def publisher() -> None:
        while not (done.is_set() and ob.depth() == 0):
            batch = [m.id for m in ob.peek(64)]
            if not batch:
                time.sleep(0.001)
                continue
            assert ob.mark_inflight(batch) == len(batch)
            acked.extend(batch)
            assert ob.ack(batch) == len(batch)

    threads = [threading.Thread(target=producer), threading.Thread(target=publisher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(acked) == n and sorted(acked) == sorted(produced)
    assert ob.stats()["acked"] == n and ob.stats()["inflight"] == 0
    ob.close()


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from edgeloop_agent.outbox import Outbox

    ob = Outbox(sys.argv[1], max_bytes=10**9, device_id="dev-k")
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\\n")
            sys.stdout.flush()

    def publisher():
        while True:
            batch = [m.id for m in ob.peek(20)]
            ob.mark_inflight(batch)
            half = batch[: len(batch) // 2]
            # Announced before acking: the kill may land between the commit and the "ACK".
            for mid in half:
                say("ACKING " + mid)
            if half and ob.ack(half) == len(half):
                for mid in half:
                    say("ACK " + mid)

    threading.Thread(target=publisher, daemon=True).start()
    n = 0
    while True:
        if n % 2:
            ids = ob.put_many([("t", {"n": n + j}, "report") for j in range(5)])
            n += 5
        else:
            ids = [ob.put("t", {"n": n}, "sample")]
            n += 1
        for mid in ids:
            say("PUT " + mid)
    """
)


def test_kill_9_loses_nothing_accepted_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines = []
    try:
        for line in child.stdout:
            lines.append(line.split())
            if len(lines) >= 4000:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    # Whatever the child printed before dying is in the pipe; it was all said after the call
    # had returned.
    lines += [line.split() for line in child.stdout.read().splitlines()]
    assert child.returncode == -signal.SIGKILL
    put = {mid for op, mid in lines if op == "PUT"}
    acked = {mid for op, mid in lines if op == "ACK"}
    acking = {mid for op, mid in lines if op == "ACKING"}
    assert len(put) > 1000 and acked

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, body FROM messages").fetchall()
    conn.close()
    stored = [r[0] for r in rows]
    assert len(stored) == len(set(stored))
    ns = [json.loads(r[1])["payload"]["n"] for r in rows]
    assert len(ns) == len(set(ns))  # no payload stored twice under different ids
    missing = (put - acking) - set(stored)
    assert not missing, f"{len(missing)} accepted messages lost, e.g. {sorted(missing)[:3]}"
    assert not (acked & set(stored)), "acked messages came back"

    with _open(path) as ob:
        again = {m.id for m in ob.peek(1_000_000)}
        assert again == set(stored)
        assert ob.depth() == len(stored)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A real 512 KiB filesystem, to hit ENOSPC rather than a simulated limit."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_really_full_disk_keeps_delivering_and_recovers(tiny_fs: Path) -> None:
    path = tiny_fs / "o.db"
    other = tiny_fs / "other.log"  # someone else's file, cleaned up later
    other.write_bytes(b"log" * 50_000)
    # reject_new: nothing stored is touched (under drop_oldest new messages would evict old
    # ones on the full disk; tests/agent/test_outbox_disk.py).
    ob = _open(path, policy="reject_new")
    accepted = []
    for i in range(5000):
        mid = ob.put("t", {"i": i, "pad": "q" * 200}, "report")
        if mid is None:
            break
        accepted.append(mid)
    else:
        pytest.fail("the 512 KiB filesystem never filled up")
    st = ob.stats()
    assert st["disk_full_errors"] >= 1 and "full" in st["last_error"]
    # Delivery needs no disk space: peek and mark in flight still work.
    batch = [m.id for m in ob.peek(10)]
    assert batch == accepted[:10]
    assert ob.mark_inflight(batch) == 10
    # Acking needs WAL space; if it fails it is retried later, and the batch is not re-peeked.
    deleted = ob.ack(batch)
    assert deleted in (0, 10)
    assert not set(batch) & {m.id for m in ob.peek(1000)}
    if deleted == 0:
        assert ob.stats()["ack_backlog"] == 10
    # Opening on the full disk works (as after a reboot): opening writes nothing.
    with _open(path) as again:
        assert [m.id for m in again.peek(1000)] == (accepted[10:] if deleted else accepted)
    extra = ob.put("t", {"x": 1}, "report")
    # Refused on the full disk, unless the ack above went through and freed pages in the file.
    assert extra is None or deleted
    # Space comes back (the other file is cleaned up): the failed ack is retried with the
    # next one, and puts succeed again.
    other.unlink()
    assert ob.ack([accepted[10]]) == (1 if deleted else 11)
    assert ob.stats()["ack_backlog"] == 0
    # maintain() (the agent's housekeeping) sees the room and lifts the full-disk state.
    assert ob.maintain() == "ok"
    after = ob.put("t", {"after": True}, "report")
    assert after is not None
    assert [m.id for m in ob.peek(1000)] == [*accepted[11:], *([extra] if extra else []), after]
    ob.close()
