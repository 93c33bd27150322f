"""Two ``edgeloop serve`` workers on one PostgreSQL control database (issue 14).

A real PostgreSQL (Debian's, started by the suite), a real Mosquitto, simulated devices that
speak the agent's protocol. Worker ``a`` takes the policies lease; both share the ingest
through MQTT 5 shared subscriptions. A staged rollout starts; once its first batch has passed,
``a`` is killed (SIGKILL: no clean hand-over). Worker ``b`` takes the lease when it expires
and finishes the rollout: every batch is published and passed exactly once, every device's
desired revision moved exactly once.
Meanwhile ``b`` took over ``a``'s broker session (the broker kept handing it a share of the
shared subscriptions): every report the devices sent is stored exactly once. Then ``a``
starts again under its name and takes its session back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bench.fleetsim import SimConfig, run_fleet

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sensor_model
from tests.integration.test_control_daemon import EDGELOOP
from tests.pgserver import PostgresServer

N = 12
LEASE_S = 3.0


class Worker:
    def __init__(self, ws: Workspace, broker: str, name: str, log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [EDGELOOP, "-w", str(ws.root), "--broker", broker, "serve",
             "--worker", name, "--lease", str(LEASE_S), "--tick", "0.3"],
            stdout=open(log, "ab"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def wait_connected(self, before: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and self.log.read_text().count("connected to") > before:
                return
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} did not connect")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def cli(ws: Workspace, broker: str, *args: str) -> Any:
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker}
    out = subprocess.run([EDGELOOP, *args], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "--json" in args else out.stdout


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.fixture
def pg_workspace(tmp_path: Path, postgres: PostgresServer) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    url = postgres.new_database()
    with open(ws.root / "edgeloop.toml", "a") as fh:
        # The database by URL in the workspace config, as an operator sets it.
        fh.write("\n[retrain]\nenabled = false\n\n[rollout]\nsoak_s = 1.0\n")
        fh.write("batch_timeout_s = 90\n")
    text = (ws.root / "edgeloop.toml").read_text().replace('database = ""', f'database = "{url}"')
    (ws.root / "edgeloop.toml").write_text(text)
    registry = Registry.for_workspace(ws)
    registry.register("sensor", sensor_model("v1").data, {"algorithm": "logreg"})
    registry.register("sensor", sensor_model("v2", seed=1).data, {"algorithm": "logreg"})
    opened = Workspace.open(ws.root)
    assert opened.control_db == url
    return opened


def test_a_killed_worker_hands_the_rollout_over_with_no_step_done_twice(
    pg_workspace: Workspace, broker: PrivateBroker, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("EDGELOOP_CONTROL_DB", raising=False)
    ws = pg_workspace
    db = ControlDB(ws.control_db)
    assert db.postgres
    a = Worker(ws, broker.url, "a", tmp_path / "a.log")
    b: Worker | None = None
    stop_file = tmp_path / "stop"
    sims: list[dict[str, Any]] = []
    try:
        a.wait_connected()
        wait_for("a holds the lease", lambda: _holder(db) == "a", 30)
        b = Worker(ws, broker.url, "b", tmp_path / "b.log")
        b.wait_connected()

        devices = [f"sim-{i:05d}" for i in range(N)]
        args = ["deploy", "sensor@v1", "--new-device"]
        for d in devices:
            args += ["--device", d]
        cli(ws, broker.url, *args)
        deployed = {d: db.desired(d)[0] for d in devices}  # type: ignore[index]
        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=0.5,
            request_rate=5.0,
            trusted_keys=(str(ws.public_key_path),),
            stop_file=str(stop_file),
            seed=5,
        )
        sim = threading.Thread(target=lambda: sims.extend(run_fleet(cfg, N, 1, 300)))
        sim.start()
        wait_for("every device on v1", lambda: _on_revision(db, deployed) == N, 90)

        started = cli(
            ws, broker.url, "rollout", "start", "sensor@v2", "--canary", "8%", "--step", "25%",
            "--json",
        )  # fmt: skip
        rid = started["id"] if isinstance(started, dict) else started[0]["id"]
        n_batches = _rollout(ws, db, rid)["batch_count"]
        assert n_batches >= 4

        wait_for("batch 1 passed", lambda: _events(db, rid, "rollout_batch_passed"), 90)
        assert _holder(db) == "a"
        a.proc.kill()  # mid-rollout, no clean hand-over
        a.proc.wait(10)
        killed_at = time.time()

        info = wait_for(
            "the rollout finished",
            lambda: (r := _rollout(ws, db, rid))["state"] not in ("running", "rolling_back") and r,
            180,
        )
        assert info["state"] == "completed", (info["failure"], db.events(limit=30))
        assert _holder(db) == "b"
        taken = db.events(kind="lease_taken")
        assert [e["data"]["previous"] for e in taken] == ["a"]
        assert taken[0]["ts"] >= killed_at

        # No step done twice: each batch published and passed once, one rollout_completed,
        # and each device's desired state moved by exactly one revision.
        published = [e["data"]["batch"] for e in _events(db, rid, "rollout_batch_published")]
        passed = [e["data"]["batch"] for e in _events(db, rid, "rollout_batch_passed")]
        assert sorted(published) == list(range(1, n_batches + 1))
        assert sorted(passed) == list(range(1, n_batches + 1))
        assert len(_events(db, rid, "rollout_completed")) == 1
        after = {d: db.desired(d) for d in devices}
        assert {d: rev for d, (rev, _doc) in after.items()} == {  # type: ignore[misc]
            d: deployed[d] + 1 for d in devices
        }
        wait_for("every device on v2", lambda: _on_revision(db, after_revs(after)) == N, 60)

        stop_file.touch()
        sim.join(120)
        sent = sum(s["reports"] for s in sims)
        assert sent > 0
        # b adopted a's broker session too: what the broker queued there, and what came
        # after, was stored; nothing was lost or doubled.
        stored = wait_for("every report stored", lambda: (n := _stored(db)) >= sent and n, 60)
        assert stored == sent
        assert "taking over its broker session" in b.log.read_text()
        # What an operator sees: b holds the lease, a has been silent since the kill.
        shown = cli(ws, broker.url, "db", "show", "--json")
        assert shown["engine"] == "postgresql" and shown["lease"]["holder"] == "b"
        ages = {w["name"]: w["heartbeat_age_s"] for w in shown["workers"]}
        assert ages["b"] < LEASE_S < ages["a"]

        # a comes back under its name: it takes its session over again, b lets it go.
        a = Worker(ws, broker.url, "a", tmp_path / "a.log")
        a.wait_connected(before=1)
        wait_for(
            "b gave a's session up", lambda: "session left this worker" in b.log.read_text(), 30
        )
        assert _stored(db) == sent
    finally:
        stop_file.touch()
        for w in (a, b):
            if w is not None:
                w.stop()
        db.close()
    for w in (a, b):
        if w is not None:
            assert "Traceback" not in w.log.read_text(), w.log.read_text()[-3000:]


def after_revs(after: dict[str, Any]) -> dict[str, int]:
    return {d: rev for d, (rev, _doc) in after.items()}


def _holder(db: ControlDB) -> str | None:
    row = db.conn.execute("SELECT holder FROM leases WHERE name = 'policies'").fetchone()
    return None if row is None else str(row[0])


def _on_revision(db: ControlDB, revisions: dict[str, int]) -> int:
    return sum(1 for d in db.devices() if d.get("reported_revision") == revisions.get(d["device"]))


def _rollout(ws: Workspace, db: ControlDB, rid: str) -> dict[str, Any]:
    from edgeloop_control.policies.rollout import RolloutManager

    return RolloutManager(ws, db, None).status(rid)[0]


def _events(db: ControlDB, rid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in db.events(kind=kind, limit=1000) if e["subject"] == rid]


def _stored(db: ControlDB) -> int:
    return int(db.conn.execute("SELECT count(*) FROM seen_messages").fetchone()[0])
