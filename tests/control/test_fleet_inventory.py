"""The fleet does not invent devices (issue 10): unknown devices are refused by every command
that targets devices, `edgeloop fleet add/rm`, devices offline too long are skipped, "seen"
is the last message of any kind, and `edgeloop fleet` shows per-device traffic.

Real parts: a private Mosquitto, a real registry (git + DVC), the real CLI in-process, real
agents for the offline case, and telemetry built by the agent's own Metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from edgeloop_agent.metrics import Metrics
from edgeloop_agent.telemetry import json_safe
from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.cli import app
from edgeloop_control.errors import ConfigError
from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.fleet.ingest import handle_report, ingest_message, touch_seen
from edgeloop_control.fleet.inventory import offline_after_s, register
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sensor_model
from tests.mqtt_helpers import AgentProcess
from tests.pgserver import follow_engine

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace.init(tmp_path_factory.mktemp("fleet-inventory") / "ws")
    registry = Registry.for_workspace(ws)
    for version, seed in (("v1", 0), ("v2", 1)):
        registry.register("sensor", sensor_model(version, seed=seed).data, {"algorithm": "logreg"})
    return ws.root


@dataclass
class Env:
    ws: Workspace
    db: ControlDB
    client: ControlClient
    broker: PrivateBroker

    def cli(self, *args: str, columns: int = 200) -> Result:
        return CliRunner().invoke(
            app,
            ["-w", str(self.ws.root), "--broker", self.broker.url, *args],
            env={"COLUMNS": str(columns)},
        )

    def retained(self, device: str, leaf: str) -> list[Any]:
        return self.client.retained(f"{self.ws.topic_prefix}/{device}/{leaf}", timeout=1.0)

    def set_fleet_config(self, text: str) -> None:
        path = self.ws.root / "edgeloop.toml"
        path.write_text(path.read_text() + f"\n[fleet]\n{text}\n")
        self.ws = Workspace.open(self.ws.root)


@pytest.fixture
def env(template: Path, tmp_path: Path, broker: PrivateBroker) -> Iterator[Env]:
    shutil.copytree(template, tmp_path / "ws", symlinks=True)
    follow_engine(tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        yield Env(ws, db, client, broker)
    finally:
        client.close()
        db.close()


def one_line(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


# -- unknown devices ---------------------------------------------------------------------------


def test_deploy_to_an_unknown_device_is_refused_naming_known_ones(env: Env) -> None:
    register(env.db, ["pump-1", "pump-2"])
    result = env.cli("deploy", "sensor@v1", "--device", "pump-99")
    assert result.exit_code == 1
    line = one_line(result)
    assert "unknown device pump-99" in line and "known devices: pump-1, pump-2" in line
    assert "edgeloop fleet add pump-99" in line and "--new-device" in line
    # Nothing was written or published for the phantom.
    assert env.db.desired("pump-99") is None and env.db.device("pump-99") is None
    assert env.retained("pump-99", "desired") == []

    ok = env.cli("deploy", "sensor@v1", "--device", "pump-1", "--json")
    assert ok.exit_code == 0, ok.output
    new = env.cli("deploy", "sensor@v1", "--device", "pump-99", "--new-device", "--json")
    assert new.exit_code == 0, new.output
    assert env.db.device("pump-99") is not None and env.db.desired("pump-99") is not None
    added = [e for e in env.db.events(kind="device_added") if e["subject"] == "pump-99"]
    assert added and "--new-device" in added[0]["message"]


def test_a_refusal_names_at_most_eight_known_devices(env: Env) -> None:
    register(env.db, [f"d{i:02d}" for i in range(20)])
    line = one_line(env.cli("deploy", "sensor@v1", "--device", "d99"))
    assert "d00, d01, d02, d03, d04, d05, d06, d07 and 12 more" in line


def test_ab_start_and_rollout_refuse_unknown_devices(env: Env) -> None:
    register(env.db, ["loan-1"])
    result = env.cli("ab", "start", "sensor@v1", "sensor@v2", "--device", "loan-9")
    assert result.exit_code == 1 and "unknown device loan-9; known devices: loan-1" in one_line(
        result
    )
    from edgeloop_control.policies.experiments import ExperimentManager

    assert ExperimentManager(env.ws, env.db, None).status() == []
    result = env.cli("rollout", "sensor@v2", "--device", "loan-9")
    line = one_line(result)
    assert result.exit_code == 1 and "unknown device loan-9" in line
    assert "--new-device" not in line  # a rollout needs a first version: deploy --new-device


def test_the_policies_refuse_unknown_devices_too(env: Env) -> None:
    """The check is in the policies' start paths, not only the CLI (the retrain policy
    and scripts start experiments and rollouts directly)."""
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager
    from edgeloop_control.policies.rollout import RolloutError, RolloutManager

    register(env.db, ["known-1"])
    with pytest.raises(ExperimentError, match="unknown device ghost; known devices: known-1"):
        ExperimentManager(env.ws, env.db, env.client).start("sensor", "v1", "v2", ["ghost"])
    with pytest.raises(RolloutError, match="unknown device ghost"):
        RolloutManager(env.ws, env.db, None).start("sensor@v2", devices=["ghost"])


# -- fleet add / rm ------------------------------------------------------------------------------


def test_fleet_add_registers_idempotently_and_refuses_bad_ids(env: Env) -> None:
    out = env.cli("fleet", "add", "pump-1", "pump-2", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["added"] == ["pump-1", "pump-2"]
    again = json.loads(env.cli("fleet", "add", "pump-1", "--json").stdout)
    assert again["added"] == [] and again["already_known"] == ["pump-1"]
    assert len(env.db.events(kind="device_added")) == 1
    bad = env.cli("fleet", "add", "a/b")
    assert bad.exit_code == 1 and "a/b" in one_line(bad)
    assert env.db.device("a/b") is None
    # Listed as registered, never seen.
    rows = {r["device"]: r for r in json.loads(env.cli("fleet", "--json").stdout)}
    assert set(rows) == {"pump-1", "pump-2"} and rows["pump-1"]["registered_at"] is not None
    assert "never seen" in env.cli("fleet").stdout


def test_fleet_add_identity_options_are_checked_before_anything_is_written(env: Env) -> None:
    # Enrolling itself (CA, ACL, bundle, broker reload) is tests/integration/test_enrolment.py.
    bad = env.cli("fleet", "add", "pump-1", "--identity", "magic")
    assert bad.exit_code == 2 and "choose one of none, certificate, password" in one_line(bad)
    bad = env.cli("fleet", "add", "pump-1", "--bundle", "/tmp/b.tar")
    assert bad.exit_code == 2 and "give --identity certificate or password" in one_line(bad)
    bad = env.cli(
        "fleet", "add", "pump-1", "pump-2", "--identity", "password", "--bundle", "/tmp/b.tar"
    )
    assert bad.exit_code == 2 and "--bundle names one file" in one_line(bad)
    assert env.db.device("pump-1") is None and env.db.device("pump-2") is None


def test_fleet_rm_clears_desired_state_groups_and_keeps_history(env: Env) -> None:
    register(env.db, ["pump-1", "pump-2"])
    assert env.cli("deploy", "sensor@v1", "--device", "pump-1", "--device", "pump-2").exit_code == 0
    assert env.cli("group", "set", "line-1", "pump-1", "pump-2").exit_code == 0
    # What an agent leaves on the broker: its retained status.
    env.client.publish(
        f"{env.ws.topic_prefix}/pump-1/status", b'{"online": false, "reason": "stopped"}',
        retain=True,
    )  # fmt: skip
    assert env.retained("pump-1", "desired") and env.retained("pump-1", "status")

    out = env.cli("fleet", "rm", "pump-1", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {
        "device": "pump-1", "desired_cleared": True, "groups": ["line-1"], "ended": None,
    }  # fmt: skip
    assert env.retained("pump-1", "desired") == [] and env.retained("pump-1", "status") == []
    assert env.db.desired("pump-1") is None and env.db.device("pump-1") is None
    assert json.loads(env.cli("group", "ls", "--json").stdout) == {"line-1": ["pump-2"]}
    assert env.retained("pump-2", "desired")  # the others untouched
    # History stays: the deploy event is still there, and the removal is one more.
    assert any(e["subject"] == "pump-1" for e in env.db.events(kind="deploy"))
    (removed,) = env.db.events(kind="device_removed")
    assert "pump-1" in removed["message"] and "line-1" in removed["message"]
    assert "pump-1" not in {r["device"] for r in json.loads(env.cli("fleet", "--json").stdout)}
    # Gone means unknown again.
    assert "unknown device pump-1" in one_line(env.cli("deploy", "sensor@v1", "-d", "pump-1"))
    assert "unknown device pump-1" in one_line(env.cli("fleet", "rm", "pump-1"))


def test_fleet_rm_of_an_owned_device_needs_force_which_ends_the_owner(env: Env) -> None:
    from edgeloop_control.policies.experiments import ExperimentManager

    register(env.db, ["d1", "d2"])
    assert env.cli("deploy", "sensor@v1", "-d", "d1", "-d", "d2").exit_code == 0
    exp_id = ExperimentManager(env.ws, env.db, env.client).start(
        "sensor", "v1", "v2", ["d1", "d2"], weight=50
    )["id"]
    refused = env.cli("fleet", "rm", "d1")
    line = one_line(refused)
    assert refused.exit_code == 1 and f"running experiment {exp_id}" in line and "--force" in line
    assert env.db.device("d1") is not None and env.db.desired("d1") is not None

    out = env.cli("fleet", "rm", "d1", "--force", "--json")
    assert out.exit_code == 0, out.output
    ended = json.loads(out.stdout)["ended"]
    assert ended["kind"] == "experiment" and ended["id"] == exp_id
    (status,) = ExperimentManager(env.ws, env.db, None).status(exp_id)
    assert status["state"] in ("rolled_back", "rolling_back")
    assert DesiredState.for_workspace(env.ws, env.db, None).owners(["d1", "d2"]) == {}
    assert env.db.device("d1") is None and env.retained("d1", "desired") == []
    # d2 went back to the champion at 100 % and stays in the fleet.
    assert [m["variant"] for m in env.db.desired("d2")[1]["models"]] == ["sensor@v1"]


# -- offline devices ----------------------------------------------------------------------------


def test_offline_after_s_is_validated(env: Env) -> None:
    assert offline_after_s(env.ws) == 600.0
    for bad in ("-1", '"soon"', "0", "inf"):
        ws_text = (env.ws.root / "edgeloop.toml").read_text()
        env.set_fleet_config(f"offline_after_s = {bad}")
        with pytest.raises(ConfigError, match=r"\[fleet\] offline_after_s in edgeloop.toml"):
            offline_after_s(env.ws)
        (env.ws.root / "edgeloop.toml").write_text(ws_text)
    env.set_fleet_config("offline_after = 5")
    with pytest.raises(ConfigError, match=r"unknown setting.*offline_after; known: offline_af"):
        offline_after_s(env.ws)
    result = env.cli("ab", "start", "sensor@v1", "sensor@v2", "-d", "x", "--new-device")
    assert result.exit_code == 2 and "offline_after" in one_line(result)


def _ingest_statuses(env: Env, devices: list[str], online: dict[str, bool]) -> None:
    """Feed the devices' retained status (as the broker has it) through the real ingest."""
    for device in devices:
        for msg in env.retained(device, "status"):
            ingest_message(env.db, env.ws.topic_prefix, msg.topic, msg.payload)
    for device, want in online.items():
        assert bool((env.db.device(device) or {}).get("online")) is want, env.db.device(device)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_policies_skip_devices_stopped_longer_than_offline_after_s(
    env: Env, tmp_path: Path
) -> None:
    """Two real agents; one is stopped. Past [fleet] offline_after_s, an experiment and a
    rollout started on both skip it and say so, instead of waiting for it."""
    from edgeloop_control.policies.experiments import ExperimentManager
    from edgeloop_control.policies.rollout import RolloutManager

    env.set_fleet_config("offline_after_s = 1.5")
    names = ["live-1", "gone-1"]
    agents = [
        AgentProcess(
            broker_url=env.broker.url,
            device_id=name,
            state_dir=tmp_path / name,
            extra=["--trusted-key", str(env.ws.public_key_path)],
        ).start()
        for name in names
    ]
    try:
        _wait(lambda: all(env.retained(n, "status") for n in names), 60, "agents not online")
        _ingest_statuses(env, names, {"live-1": True, "gone-1": True})
        assert env.cli("deploy", "sensor@v1", "-d", "live-1", "-d", "gone-1").exit_code == 0
        assert agents[1].stop() == 0
        _wait(
            lambda: b'"stopped"' in env.retained("gone-1", "status")[0].payload,
            20,
            "no stopped status",
        )
        _ingest_statuses(env, names, {"live-1": True, "gone-1": False})
        time.sleep(2.0)  # past offline_after_s

        exp = ExperimentManager(env.ws, env.db, env.client).start(
            "sensor", "v1", "v2", names, weight=50
        )
        assert exp["devices"] == ["live-1"] and exp["skipped_offline"] == ["gone-1"]
        (started,) = env.db.events(kind="ab_started")
        assert "skipped, offline longer than 1.5 s" in started["message"]
        assert "gone-1 (offline 2 s)" in started["message"]
        status = env.cli("ab", "status", exp["id"])
        assert "skipped (offline longer than [fleet] offline_after_s): gone-1" in status.stdout
        assert env.cli("ab", "stop", exp["id"]).exit_code == 0

        rollouts = RolloutManager(env.ws, env.db, None)
        _wait(lambda: not DesiredState.for_workspace(env.ws, env.db, None).owners(), 30, "owned")
        info = rollouts.start("sensor@v2", devices=names)
        assert [d["device"] for b in info["batches"] for d in b["devices"]] == ["live-1"]
        assert info["selector"]["skipped_offline"] == ["gone-1"]
        started = [e for e in env.db.events(kind="rollout_started")][-1]
        assert "gone-1 (offline" in started["message"]
        shown = env.cli("rollout", "status", info["id"]).stdout
        assert "skipped (offline longer than [fleet] offline_after_s): gone-1" in shown
        rollouts.abort(info["id"])
        # Only stale devices: refused in one line rather than started on nobody.
        with pytest.raises(Exception, match="no device to roll out to: skipped, offline"):
            rollouts.start("sensor@v2", devices=["gone-1"])
    finally:
        for agent in agents:
            agent.kill()


def test_a_rollout_stops_waiting_for_a_device_lost_longer_than_offline_after_s(
    env: Env,
) -> None:
    """A device that was online when its batch went out and then vanished ("lost", maybe
    crashing) is waited for; once offline longer than offline_after_s it is not."""
    from edgeloop_control.fleet.ingest import handle_status
    from edgeloop_control.policies.rollout import RolloutManager
    from edgeloop_control.policies.rollout.config import RolloutConfig
    from edgeloop_control.policies.rollout.context import RolloutContext
    from edgeloop_control.policies.rollout.judge import judge

    env.set_fleet_config("offline_after_s = 1")
    register(env.db, ["a"])
    assert env.cli("deploy", "sensor@v1", "-d", "a").exit_code == 0
    handle_status(env.db, "a", {"online": True, "ts": time.time(), "revision": 1, "models": []})
    rid = RolloutManager(env.ws, env.db, None).start("sensor@v2", devices=["a"])["id"]
    ctx = RolloutContext(env.ws, env.db, env.client)
    ctx.open_desired()
    manager = RolloutManager(env.ws, env.db, env.client)
    manager.tick()  # publishes batch 1 while "a" is online
    handle_status(env.db, "a", {"online": False, "reason": "lost", "ts": time.time()})
    r = ctx.store.rollout(rid)
    config = RolloutConfig(**r.config)
    waiting = judge(ctx, r, 0, config, time.time())
    assert waiting.waiting and "a went offline (lost)" in waiting.waiting[0]
    later = judge(ctx, r, 0, config, time.time() + 5)
    assert later.offline == ["a"] and not later.waiting and later.passed


# -- seen, traffic ------------------------------------------------------------------------------


def _report(device: str, ts: float, metrics: Metrics, seq: int) -> dict[str, Any]:
    snapshot = metrics.snapshot(reset=True)
    payload = {
        "report_id": f"{device}:boot:{seq}",
        "device": device,
        "ts": ts,
        "interval_s": 10.0,
        "revision": 1,
        "variants": {
            v: {"name": "sensor", "version": v.split("@")[1], "role": "serve"}
            for v in snapshot["variants"]
        },
        "metrics": snapshot,
        "drift": [],
        "concept_drift": {},
        "outbox": {"depth": 3, "dropped": 0},
        "process": {"rss_bytes": 80 * 2**20, "cpu_percent": 2.0},
    }
    envelope = {
        "id": payload["report_id"],
        "device_id": device,
        "kind": "report",
        "ts": ts,
        "payload": json_safe(payload),
    }
    return json.loads(json.dumps(envelope))


def test_seen_is_the_last_message_of_any_kind(env: Env) -> None:
    """A report the agent queued an hour ago and delivers now, and captured samples, make
    the device seen now (it used to show the report's own time, or not move at all)."""
    register(env.db, ["pump-1"])
    t0 = time.time()
    assert handle_report(env.db, _report("pump-1", t0 - 3600, Metrics(), 1), "pump-1")
    seen = env.db.device("pump-1")["last_seen"]
    assert seen >= t0
    touch_seen(env.db, ["pump-1", "pump-1", "never-registered"], now=seen + 30)
    assert env.db.device("pump-1")["last_seen"] == seen + 30
    assert env.db.device("never-registered") is None  # a message is no registration
    touch_seen(env.db, ["pump-1"], now=seen)  # never backwards
    assert env.db.device("pump-1")["last_seen"] == seen + 30
    (row,) = json.loads(env.cli("fleet", "--json", "--timeout", "0.5").stdout)
    assert row["last_seen"] == seen + 30


def test_fleet_shows_requests_error_rate_and_p99_per_device(env: Env) -> None:
    register(env.db, ["pump-1", "pump-2"])
    metrics = Metrics()
    latencies = [0.001 * (1 + i % 50) for i in range(400)]
    reference = LatencyHistogram()
    for i, latency in enumerate(latencies):
        if i < 8:
            metrics.record_request("sensor@v1", None, error="inference_failed", predictions=0)
        else:
            metrics.record_request("sensor@v1", latency)
            reference.record(latency)
    assert handle_report(env.db, _report("pump-1", time.time(), metrics, 1), "pump-1")
    rows = {r["device"]: r for r in json.loads(env.cli("fleet", "--json").stdout)}
    one = rows["pump-1"]
    assert one["requests"] == 400 and one["errors"] == 8
    assert one["error_rate"] == pytest.approx(8 / 400)
    # The agent's own histogram of the same latencies, read the same way.
    assert one["p99_ms"] == pytest.approx(reference.quantile(0.99) * 1000, abs=1e-3)
    # ... and the exact p99 of those latencies, within the histogram's stated error.
    exact = float(np.percentile(latencies[8:], 99)) * 1000
    assert one["p99_ms"] == pytest.approx(exact, rel=2 * reference.relative_error)
    assert one["interval_s"] == 10.0 and one["outbox_depth"] == 3
    assert rows["pump-2"]["requests"] is None and rows["pump-2"]["error_rate"] is None
    table = env.cli("fleet", columns=200).stdout
    assert "400" in table and "2.0%" in table


@pytest.mark.parametrize("columns", [80, 200])
def test_the_fleet_table_never_cuts_a_device_id(env: Env, columns: int) -> None:
    names = ["loan-1", "loan-2", "pump-station-north-12"]
    register(env.db, names)
    assert env.cli("deploy", "sensor@v1", *[a for n in names for a in ("-d", n)]).exit_code == 0
    out = env.cli("fleet", columns=columns).stdout
    for name in names:
        assert name in out, out
    assert "…" not in out


def test_the_daemon_marks_a_device_seen_by_its_samples_and_labels(env: Env) -> None:
    """Through the real daemon: a status, then only captured samples and labels; "seen"
    moves with them (it stayed at the status's time before)."""
    from tests.control.daemon_fuzz import RunningDaemon, status_doc

    daemon = RunningDaemon(env.ws, env.broker.url).start()
    try:
        prefix = env.ws.topic_prefix
        env.client.publish(f"{prefix}/d1/status", json.dumps(status_doc("d1")).encode())
        _wait(lambda: daemon.reader.device("d1") is not None, 20, "status not stored")
        first = daemon.reader.device("d1")["last_seen"]
        time.sleep(0.3)
        record = {"sample_id": "d1:0001", "device": "d1", "ts": time.time(), "model": "sensor",
                  "features": {"temp": 20.0}, "prediction": 1}  # fmt: skip
        env.client.publish(f"{prefix}/d1/samples", json.dumps(record).encode())
        _wait(
            lambda: (daemon.reader.device("d1") or {}).get("last_seen", 0) > first,
            20,
            "a sample did not move last_seen",
        )
        second = daemon.reader.device("d1")["last_seen"]
        time.sleep(0.3)
        label = {"sample_id": "d1:0001", "device": "d1", "ts": time.time(), "label": 1}
        env.client.publish(f"{prefix}/d1/labels", json.dumps(label).encode())
        _wait(
            lambda: daemon.reader.device("d1")["last_seen"] > second,
            20,
            "a label did not move last_seen",
        )
        assert daemon.error is None
    finally:
        daemon.stop()
