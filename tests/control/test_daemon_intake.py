"""The daemon's intake is bounded: a backlog waits at the broker, nothing is lost, and a
publish by the worker is never stuck behind a full intake (daemon/intake.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgeloop_control.daemon.intake import Intake
from edgeloop_control.daemon.service import ControlDaemon
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace
from tests.control.daemon_fuzz import report_doc
from tests.mqtt_helpers import Probe

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


def test_a_full_intake_waits_and_keeps_order() -> None:
    stopping = threading.Event()
    intake: Intake[int] = Intake(3, may_wait=lambda: not stopping.is_set())
    for i in range(3):
        intake.put(i)
    done = threading.Event()

    def producer() -> None:
        intake.put(3)  # full: waits for the consumer
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.5) and len(intake) == 3
    assert intake.get(timeout=1) == 0  # one out, the waiting put goes in
    assert done.wait(2)
    # A stopping daemon drains what is left instead of waiting; the worker puts back
    # what it retries without waiting on itself.
    stopping.set()
    intake.put(4)
    intake.put_nowait(5)
    assert [intake.get(timeout=1) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert intake.get(timeout=0.05) is None
    assert intake.high_water == 5 and intake.waits == 1
    with pytest.raises(ValueError, match="at least 1"):
        Intake(0)


def test_a_burst_waits_at_the_broker_and_is_all_ingested(tmp_path: Path) -> None:
    broker = PrivateBroker(tmp_path / "broker").start()
    ws = Workspace.init(tmp_path / "ws", broker=broker.url)
    daemon = ControlDaemon(ws, broker.url, tick_s=3600, flush_s=0.2, intake_max=20)
    probe = Probe(broker.url)
    worker: threading.Thread | None = None
    try:
        daemon.start()  # the network thread only: nothing drains the intake yet
        assert daemon.connected.wait(15), "daemon did not connect"
        n = 400
        for i in range(n):
            probe.publish(f"edgeloop/dev-{i % 8}/telemetry", report_doc(f"dev-{i % 8}"))
        deadline = time.monotonic() + 10
        while len(daemon._queue) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the rest of the burst arrives at the broker meanwhile
        assert len(daemon._queue) == 20, len(daemon._queue)  # held at the bound

        # The worker's own publish (desired state, in a policy tick) is not stuck behind
        # the full intake: policies publish on the daemon's second connection.
        t0 = time.monotonic()
        daemon.publisher.publish("edgeloop/dev-0/desired-probe", b"{}", timeout=10)
        assert time.monotonic() - t0 < 5

        worker = threading.Thread(
            target=daemon.run,
            kwargs={"install_signals": False, "until": lambda: daemon.counters["telemetry"] >= n},
            daemon=True,
        )
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), daemon.counters
        assert daemon.counters["telemetry"] == n and daemon.counters["duplicates"] == 0
        assert daemon._queue.high_water == 20, daemon._queue.high_water
        assert daemon._queue.waits >= 1
        db = ControlDB(ws.control_db)
        try:
            stored = db.conn.execute("SELECT COUNT(*) FROM variant_stats").fetchone()[0]
        finally:
            db.close()
        assert stored == n
    finally:
        daemon.stop_event.set()
        if worker is not None:
            worker.join(30)
        probe.close()
        broker.stop()
