"""The fleet simulator speaks the real protocol: a real control daemon and Mosquitto accept it.

20 virtual devices for a few seconds: signed desired state verified and applied (or a
simulated load failure reported), telemetry, drift windows, samples and labels ingested
without a single rejection, Last Will on churn.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

from bench.fleetsim import EnvelopeMaker, SimConfig, run_fleet

from edgeloop_agent.outbox import Outbox
from edgeloop_control.infra.db import ControlDB
from tests.integration.test_control_daemon import (  # noqa: F401 (fixture)
    EDGELOOP,
    start_daemon,
    wait_connected,
    workspace,
)

N = 20


def test_envelopes_are_the_outboxes_bytes(tmp_path: Path) -> None:
    """Same device, boot id and sequence number: the simulator sends the agent's bytes."""
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20, device_id="d1")
    maker = EnvelopeMaker("d1", random.Random(1))
    maker.boot_id = outbox.boot_id
    payload = {"report_id": "d1:x:1", "ts": 1.5, "metrics": {"variants": {}}, "drift": []}
    outbox.put("edgeloop/d1/telemetry", payload, "report")
    stored = outbox.peek(1)[0]
    msg_id, body = maker.envelope("edgeloop/d1/telemetry", payload, "report")
    ts = json.loads(stored.body)["ts"]
    assert msg_id == stored.id
    mine = json.loads(body)
    mine["ts"] = ts  # the only field that depends on the clock
    assert json.dumps(mine, separators=(",", ":")).encode() == stored.body
    outbox.close()


def test_simulated_fleet_against_real_daemon(workspace, broker, tmp_path):  # noqa: F811
    ws = workspace
    log = tmp_path / "control.log"
    daemon, before = start_daemon(ws, broker.url, log)
    try:
        wait_connected(log, before)
        devices = [f"sim-{i:05d}" for i in range(N)]
        env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url}
        args = [EDGELOOP, "deploy", "sensor@v1", "--new-device"]
        for d in devices:
            args += ["--device", d]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr

        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=1.0,
            request_rate=20.0,
            capture_rate=0.2,
            label_rate=1.0,
            drift_share=0.5,
            churn_share=0.25,
            churn_period_s=4.0,
            churn_offline_s=1.0,
            fail_load_share=0.15,
            drift_window_rows=40,
            trusted_keys=(str(ws.public_key_path),),
            seed=3,
        )
        (sim,) = run_fleet(cfg, N, 1, 6.0)
        assert sim["connected"] >= N and sim["connect_failures"] == 0
        assert sim["desired_refused"] == 0
        # Every device verified the signed document and the artifact; the load-failure
        # subset reported it instead of swapping (and retries after a reconnect, as an
        # agent retries a revision that failed to apply).
        assert sim["artifacts_fetched"] >= N
        assert sim["desired_applied"] > 0 and sim["load_failed"] > 0
        assert sim["churn_drops"] > 0
        assert sim["reports"] > N and sim["samples"] > 0 and sim["labels"] > 0

        db = ControlDB(ws.control_db)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stored = db.conn.execute("SELECT count(*) FROM seen_messages").fetchone()[0]
                if stored >= sim["reports"]:
                    break
                time.sleep(0.2)
            # At least once, de-duplicated: exactly the reports that were sent.
            assert stored == sim["reports"]
            rows = {d["device"]: d for d in db.devices()}
            assert set(rows) == set(devices)
            applied = [d for d in rows.values() if d.get("reported_revision") == 1]
            # The simulator ends with a clean "stopped" status, so failures are read from
            # the events the daemon wrote when each status carried one.
            failed = {
                e["subject"]
                for e in db.events(kind="device_error", limit=1000)
                if (e["data"] or {}).get("code") == "model_load_failed"
            }
            assert len(applied) == sim["desired_applied"]
            assert failed and len(applied) + len(failed) == N
            assert all(not rows[d]["online"] for d in devices)  # clean shutdown seen
            drifting = db.conn.execute(
                "SELECT count(DISTINCT device) FROM drift_windows WHERE dataset_drift = 1"
            ).fetchone()[0]
            assert 0 < drifting < N
            lost = [e for e in db.events(limit=1000) if "offline (lost)" in e["message"]]
            assert lost, "a dropped connection must fire the Last Will"
        finally:
            db.close()
    finally:
        daemon.terminate()
        daemon.wait(30)
    text = log.read_text()
    # The daemon took every message: nothing dropped as malformed, no record rejected.
    assert "dropped a" not in text
    assert "rejected captured record" not in text
    assert "Traceback" not in text
