"""Retention of the control database (issue 14): a month of history through the real write
path, folded into hourly rows; every figure the report shows over the whole span is the one
the raw rows gave, recent rows and the rows live policies read stay raw, the file shrinks,
and the daemon's job works in bounded slices and survives its own failures."""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.errors import ConfigError
from edgeloop_control.fleet.desired import DesiredState, Owner
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import SCHEMA, ControlDB, merged_p99_ms
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.retention.aggregate import hour_as_window, hour_of
from edgeloop_control.policies.retention.config import RetentionConfig
from edgeloop_control.policies.retention.job import RetentionJob
from edgeloop_control.policies.retention.protect import protected_devices
from edgeloop_control.policies.retrain.store import RetrainState, RetrainStore
from edgeloop_control.report import history
from edgeloop_control.report.collect import collect_report
from edgeloop_control.report.history import Selection
from edgeloop_control.report.page import render_report
from tests.control.fleet_history import DEVICES, History
from tests.control.retention_history import FEATURES, VARIANT, Sim, ingest, reports
from tests.control.web_client import Browser, start
from tests.mqtt_helpers import Probe

DAY = 86400.0
SPAN_DAYS = 31
SIM = Sim(devices=("pump-1", "pump-2"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def month(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, float, str | Path]:
    """A control database with 31 days of reports from two devices, ending now, on each
    engine."""
    root = tmp_path_factory.mktemp("retention")
    ws = Workspace.init(root / "ws")
    now = time.time()
    location = ws.state_db
    if request.param == "postgresql":
        location = request.getfixturevalue("postgres").new_database()
    db = ControlDB(location)
    ingest(db, SIM, now - SPAN_DAYS * DAY, now)
    # Events as the daemon writes them, then dated: connection noise and a decision, old and new.
    for days_ago, kind in ((40, "device"), (40, "poison"), (40, "drift_detected"), (1, "device")):
        event = db.add_event(kind, f"{kind} {days_ago} days ago", subject="pump-1")
        db.conn.execute("UPDATE events SET ts = ? WHERE id = ?", (now - days_ago * DAY, event))
    # De-duplication ids: the oldest reports' ids as if stored 31 days ago.
    db.conn.execute(
        "UPDATE seen_messages SET ts = ? WHERE rowid IN "
        "(SELECT rowid FROM seen_messages ORDER BY rowid LIMIT 100)",
        (now - 31 * DAY,),
    )
    if not db.postgres:
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return ws.root, now, location


@pytest.fixture
def ws(
    request: pytest.FixtureRequest,
    month: tuple[Path, float, str | Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Workspace:
    shutil.copytree(month[0], tmp_path / "ws")
    if isinstance(month[2], str):  # each test gets its own copy of the month
        monkeypatch.setenv(
            "EDGELOOP_CONTROL_DB", request.getfixturevalue("postgres").copy_database(month[2])
        )
    else:
        monkeypatch.delenv("EDGELOOP_CONTROL_DB", raising=False)
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def now(month: tuple[Path, float, str | Path]) -> float:
    return month[1]


def figures(ws: Workspace, db: ControlDB, sel: Selection) -> dict[str, Any]:
    data = collect_report(ws, db, sel)
    return {
        # Events are pruned by their own rule (tested below), and the run adds one.
        "summary": {
            k: data["summary"].get(k)
            for k in ("devices", "drift windows", "windows flagged", "requests")
        },
        "devices": [
            (d["device"], d["requests"], d["errors"], d["p99_ms"]) for d in data["devices"]
        ],
    }


def raw_hours(db: ControlDB, before: float) -> dict[tuple[str, float], dict[str, Any]]:
    """Per (device, hour) older than ``before``, the figures computed from the raw windows."""
    rows = db.conn.execute(
        "SELECT device, end, dataset_drift, doc FROM drift_windows WHERE end < ?", (before,)
    ).fetchall()
    hours: dict[tuple[str, float], list[Any]] = {}
    for r in rows:
        hours.setdefault((r["device"], hour_of(r["end"])), []).append(r)
    out = {}
    for key, ws in hours.items():
        docs = [json.loads(r["doc"]) for r in ws]
        per = {
            name: [next(f for f in d["features"] if f["name"] == name) for d in docs]
            for name in FEATURES
        }
        n = [d["estimated"]["n"] for d in docs]
        weighted = sum(d["estimated"]["value"] * m for d, m in zip(docs, n, strict=True))
        out[key] = {
            "windows": len(ws),
            "flagged": sum(r["dataset_drift"] for r in ws),
            "psi": {k: statistics.fmean(f["psi"] for f in v) for k, v in per.items()},
            "psi_max": {k: max(f["psi"] for f in v) for k, v in per.items()},
            "p": {k: min(f["ks_p_adjusted"] for f in v) for k, v in per.items()},
            "estimated": weighted / sum(n),
            "end": max(r["end"] for r in ws),
        }
    return out


def test_the_report_over_the_whole_span_gives_the_raw_figures(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    cutoff = hour_of(now - 7 * DAY)
    # Ranges on whole hours (an aggregated hour is in a range when it overlaps it): the
    # whole span, across the raw/aggregated boundary, wholly aggregated for one device.
    selections = [
        Selection(),
        Selection(since=cutoff - 5 * DAY, until=cutoff + 2 * DAY),
        Selection(since=cutoff - 20 * DAY, until=cutoff - 10 * DAY - 1, devices=("pump-2",)),
    ]
    before = [figures(ws, db, sel) for sel in selections]
    hours = raw_hours(db, cutoff)
    assert "older data" not in collect_report(ws, db, Selection())["summary"]

    run = RetentionJob(db, RetentionConfig()).run_once(now)

    assert run.folded["variant_stats"] > 0 and run.folded["drift_windows"] > 0
    assert [figures(ws, db, sel) for sel in selections] == before
    stored = db.conn.execute("SELECT COUNT(*) FROM drift_windows").fetchone()[0]
    folded = db.conn.execute("SELECT SUM(windows) FROM drift_hourly").fetchone()[0]
    assert before[0]["summary"]["drift windows"] == stored + folded
    aggregated = [w for w in history.drift_windows(db, Selection()) if w.get("aggregated")]
    assert len(aggregated) == len(hours)
    assert max(h["windows"] for h in hours.values()) > 1  # hours really fold several windows
    for w in aggregated:
        want = hours[(w["device"], w["hour"])]
        assert (w["windows"], w["flagged"], w["end"]) == (
            want["windows"],
            want["flagged"],
            want["end"],
        )
        for f in w["features"]:
            assert f["psi"] == pytest.approx(want["psi"][f["name"]], rel=1e-12)
            assert f["psi_max"] == want["psi_max"][f["name"]]
            assert f["ks_p_adjusted"] == want["p"][f["name"]]
        assert w["estimated"]["value"] == pytest.approx(want["estimated"], rel=1e-12)
    data = collect_report(ws, db, Selection())
    assert "hourly aggregated" in data["summary"]["older data"]
    page = render_report(data)  # the HTML page over the whole month renders, and says so
    assert "hourly aggregated (retention)" in page and 'id="drift-chart-vibration"' in page


def test_recent_rows_stay_raw_and_old_ones_are_gone(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    cutoff = hour_of(now - 7 * DAY)
    recent = {
        "variant_stats": "SELECT * FROM variant_stats WHERE ts >= ? ORDER BY rowid",
        "drift_windows": "SELECT * FROM drift_windows WHERE end >= ? ORDER BY rowid",
        "concept_drift": "SELECT * FROM concept_drift WHERE ts >= ? ORDER BY rowid",
        "variant_keys": "SELECT k.* FROM variant_keys k JOIN variant_stats s USING (report_id, "
        "variant) WHERE s.ts >= ? ORDER BY s.rowid",
    }
    snapshot = {t: [tuple(r) for r in db.conn.execute(q, (cutoff,))] for t, q in recent.items()}
    assert all(snapshot.values())

    RetentionJob(db, RetentionConfig()).run_once(now)

    assert {t: [tuple(r) for r in db.conn.execute(q, (cutoff,))] for t, q in recent.items()} == (
        snapshot
    )
    for table, col in (("variant_stats", "ts"), ("drift_windows", "end"), ("concept_drift", "ts")):
        old = db.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} < ?", (cutoff,))
        assert old.fetchone()[0] == 0, table
    orphans = db.conn.execute(
        "SELECT COUNT(*) FROM variant_keys k LEFT JOIN variant_stats s USING (report_id, variant) "
        "WHERE s.report_id IS NULL"
    ).fetchone()[0]
    assert orphans == 0


def test_devices_a_live_policy_holds_keep_their_raw_rows(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    owners = DesiredState(db, None, "edgeloop", signer=lambda: None)  # type: ignore[arg-type,return-value]
    experiment = Owner("experiment", "ab-1")
    owners.claim(experiment, ["pump-1"])
    store = RetrainStore(db)
    episode = RetrainState(model="sensor")
    episode.open_episode(now - 10 * DAY, 1, ["pump-2"])
    store.save(episode)
    count = "SELECT COUNT(*) FROM drift_windows WHERE device = ?"
    held = {d: db.conn.execute(count, (d,)).fetchone()[0] for d in SIM.devices}

    run = RetentionJob(db, RetentionConfig()).run_once(now)

    assert run.protected == 2 and not any(run.folded.values())
    assert {d: db.conn.execute(count, (d,)).fetchone()[0] for d in SIM.devices} == held
    # Once the experiment ends and the episode closes, the next run folds them.
    owners.release(experiment)
    episode.close_episode()
    store.save(episode)
    run = RetentionJob(db, RetentionConfig()).run_once(now)
    assert run.protected == 0 and run.folded["drift_windows"] > 0


def test_a_late_report_adds_to_its_hour(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    job = RetentionJob(db, RetentionConfig())
    job.run_once(now)
    late_ts = hour_of(now - 20 * DAY) + 1800.0
    key = ("pump-1", VARIANT, hour_of(late_ts))
    hourly = "SELECT * FROM variant_stats_hourly WHERE device = ? AND variant = ? AND hour = ?"
    first = db.conn.execute(hourly, key).fetchone()
    drift_hour = "SELECT * FROM drift_hourly WHERE device = ? AND variant = ? AND hour = ?"
    first_hour = hour_as_window(db.conn.execute(drift_hour, key).fetchone())
    # The same device's report for that hour, delivered late under a new id (outbox backlog).
    _, envelope = next(reports(Sim(devices=("pump-1",), seed=99), late_ts, late_ts + 1))
    envelope["id"] = envelope["payload"]["report_id"] = "pump-1:late:1"
    (late_window,) = envelope["payload"]["drift"]
    assert handle_report(db, envelope, "pump-1")
    late = db.conn.execute(
        "SELECT requests, errors, latency FROM variant_stats WHERE report_id = 'pump-1:late:1'"
    ).fetchone()

    # The newest row is left alone: SQLite would hand its rowid to the next insert, and
    # readers that follow variant_stats by rowid (experiment totals, /metrics) would skip it.
    assert job.run_once(now).folded["variant_stats"] == 0
    _, newer = next(reports(Sim(devices=("pump-2",), seed=5), now - 600, now))
    newer["id"] = newer["payload"]["report_id"] = "pump-2:new:1"
    bounds = {"kind": "time", "start": now - 1200, "end": now - 600, "n_rows": 500}
    newer["payload"]["drift"] = [{**late_window, "window": bounds}]
    assert handle_report(db, newer, "pump-2")  # a newer report arrives

    again = job.run_once(now)

    assert again.folded["variant_stats"] == 1
    second = db.conn.execute(hourly, key).fetchone()
    assert second["reports"] == first["reports"] + 1
    assert second["requests"] == first["requests"] + late["requests"]
    assert second["errors"] == first["errors"] + late["errors"]
    assert merged_p99_ms([second["latency"]]) == merged_p99_ms([first["latency"], late["latency"]])
    hour = hour_as_window(db.conn.execute(drift_hour, key).fetchone())
    assert hour["windows"] == first_hour["windows"] + 1
    assert hour["flagged"] == first_hour["flagged"] + late_window["dataset_drift"]
    for was, now_f, late_f in zip(
        first_hour["features"], hour["features"], late_window["features"], strict=True
    ):
        n = first_hour["windows"]
        assert now_f["psi"] == pytest.approx((was["psi"] * n + late_f["psi"]) / (n + 1), rel=1e-12)
        assert now_f["psi_max"] == max(was["psi_max"], late_f["psi"])
        assert now_f["ks_p_adjusted"] == min(was["ks_p_adjusted"], late_f["ks_p_adjusted"])


def test_noisy_events_and_old_dedup_ids_are_deleted(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    seen = db.conn.execute("SELECT COUNT(*) FROM seen_messages").fetchone()[0]

    run = RetentionJob(db, RetentionConfig()).run_once(now)

    kinds = [(e["kind"], e["message"]) for e in db.events(limit=100) if e["kind"] != "retention"]
    assert kinds == [
        ("drift_detected", "drift_detected 40 days ago"),
        ("device", "device 1 days ago"),
    ]
    assert run.deleted["events"] == 2 and run.deleted["seen_messages"] == 100
    assert db.conn.execute("SELECT COUNT(*) FROM seen_messages").fetchone()[0] == seen - 100
    event = db.events(kind="retention")[-1]
    assert event["data"]["folded"] == run.folded and "longest" in event["message"]


@pytest.mark.parametrize(("days", "left"), [(20, 20), ("forever", SPAN_DAYS)])
def test_hourly_rows_expire_after_aggregate_days(
    ws: Workspace, now: float, days: Any, left: int
) -> None:
    db = ControlDB(ws.control_db)
    RetentionJob(db, RetentionConfig.from_mapping({"aggregate_days": days})).run_once(now)
    oldest = db.conn.execute("SELECT MIN(hour) FROM drift_hourly").fetchone()[0]
    assert (now - oldest) / DAY == pytest.approx(left, abs=1 / 24 + 1e-9)


@pytest.mark.parametrize("month", ["sqlite"], indirect=True)  # PostgreSQL's autovacuum's job
def test_the_file_shrinks(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    assert db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from birth
    size = ws.state_db.stat().st_size
    run = RetentionJob(db, RetentionConfig()).run_once(now)
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert run.pages_freed > 0
    assert ws.state_db.stat().st_size < 0.8 * size


def test_the_daemon_job_works_in_slices(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    job = RetentionJob(db, RetentionConfig(batch_rows=200, tick_budget_s=0.005))
    ticks, longest = 0, 0.0
    while job.last is None:
        t0 = time.monotonic()
        job.tick(now)
        longest = max(longest, time.monotonic() - t0)
        ticks += 1
    assert ticks > 5 and job.last.slices == ticks
    # A tick stops after the batch that crossed its budget; none ran on for the whole run.
    assert longest < job.last.busy_s / 3
    assert job.next_at == now + 3600.0
    job.tick(now + 10)
    assert job.last.slices == ticks  # nothing until the next interval


def test_a_failing_run_is_contained_and_backed_off(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    db.conn.execute("DROP TABLE variant_stats_hourly")  # a damaged database: the fold fails
    job = RetentionJob(db, RetentionConfig())
    job.tick(now)  # must not raise
    assert job.failures == 1 and job.next_at == now + 60.0 and job.last is None
    message = db.events(kind="retention_failed")[-1]["message"]
    assert "no such table" in message or "does not exist" in message  # SQLite, PostgreSQL
    job.tick(now + 30)
    assert job.failures == 1  # backing off
    job.tick(now + 60)
    assert job.failures == 2 and job.next_at == now + 60 + 120.0
    # Ingest went on meanwhile: the transaction of the failed batch was rolled back.
    assert not db.conn.in_transaction
    db.add_event("device", "still writing")
    db.conn.executescript(SCHEMA)
    while job.last is None:
        job.tick(now + 180)
    assert job.failures == 0 and job.last.folded["variant_stats"] > 0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"raw_days": 0.5}, "raw_days must be at least 1"),
        ({"raw_days": "7"}, "raw_days must be a positive number"),
        ({"aggregate_days": 3}, "aggregate_days must be a number of days above raw_days"),
        ({"aggregate_days": "never"}, "aggregate_days"),
        ({"dedup_days": 2}, "dedup_days must be at least 8"),
        ({"batch_rows": 0}, "batch_rows must be an integer >= 1"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"event_kinds": "device"}, "event_kinds must be a list"),
        ({"raw_dayz": 7}, "unknown setting(s) raw_dayz"),
    ],
)
def test_bad_settings_are_refused_by_name(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^\[retention\]: ") as err:
        RetentionConfig.from_mapping(setting)
    assert message in str(err.value)


def test_the_daemon_runs_the_job_and_refuses_a_bad_section(tmp_path: Path) -> None:
    from edgeloop_control.daemon.build import build_daemon

    ws = Workspace.init(tmp_path / "ws")
    daemon = build_daemon(ws, "mqtt://127.0.0.1:1")
    try:
        jobs = [p for p in daemon.policies if isinstance(p, RetentionJob)]
        assert len(jobs) == 1 and daemon.policies[-1] is jobs[0] and not daemon.forget_seen
    finally:
        daemon.db.close()
    config = ws.root / "edgeloop.toml"
    config.write_text(config.read_text() + "\n[retention]\nraw_days = 0\n")
    with pytest.raises(ConfigError, match=r"\[retention\] in edgeloop.toml: raw_days"):
        build_daemon(Workspace.open(ws.root), "mqtt://127.0.0.1:1")
    config.write_text(config.read_text().replace("raw_days = 0", "enabled = false"))
    daemon = build_daemon(Workspace.open(ws.root), "mqtt://127.0.0.1:1")
    try:
        assert not any(isinstance(p, RetentionJob) for p in daemon.policies) and daemon.forget_seen
    finally:
        daemon.db.close()


def test_edgeloop_drift_says_older_windows_are_hourly(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    RetentionJob(db, RetentionConfig()).run_once(now)
    db.close()
    result = CliRunner().invoke(
        app,
        ["-w", str(ws.root), "drift", "-d", "pump-1", "--until", "10d", "-n", "1"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert (
        "windows aggregated" in result.stdout and "hourly aggregated (retention)" in result.stdout
    )
    as_json = CliRunner().invoke(
        app, ["-w", str(ws.root), "drift", "-d", "pump-1", "--until", "10d", "-n", "1", "--json"]
    )
    (window,) = json.loads(as_json.stdout)
    assert window["aggregated"] == "hourly" and window["windows"] >= 1


def test_a_database_of_an_older_release_is_read_without_the_hourly_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.split("-- Retention")[0])  # the schema before retention
    conn.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ro.row_factory = sqlite3.Row
    db = ControlDB.__new__(ControlDB)
    db.path, db.conn = path, ro
    assert history.drift_windows(db, Selection()) == []
    assert history.aggregated_before(db) is None


def test_the_dashboard_drift_pages_show_hourly_rows_and_say_so(ws: Workspace, now: float) -> None:
    db = ControlDB(ws.control_db)
    RetentionJob(db, RetentionConfig()).run_once(now)
    # pump-1 silent for the raw week: its newest windows are hourly rows.
    db.conn.execute("DELETE FROM drift_windows WHERE device = 'pump-1'")
    db.close()
    server = start(ws, None)
    try:
        browser = Browser(f"http://{server.listen}")
        pages = [browser.get("/drift?since=30d&device=pump-1"), browser.get("/devices/pump-1")]
    finally:
        server.stop()
    for page in pages:
        assert page.status == 200
        assert "hourly aggregated (retention)" in page.text and "PSI of vibration" in page.text


def test_the_daemon_runs_retention_while_it_ingests(
    ws: Workspace, now: float, broker: PrivateBroker, probe: Probe
) -> None:
    from edgeloop_control.daemon.build import build_daemon

    config = ws.root / "edgeloop.toml"
    config.write_text(
        config.read_text() + "\n[retention]\nbatch_rows = 200\ntick_budget_s = 0.02\n"
    )
    holder: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:  # SQLite connections belong to the thread that runs the daemon
        holder["daemon"] = build_daemon(Workspace.open(ws.root), broker.url, tick_s=0.05)
        ready.set()
        holder["daemon"].run(install_signals=False)

    thread = threading.Thread(target=run, name="control-daemon", daemon=True)
    thread.start()
    assert ready.wait(30) and holder["daemon"].connected.wait(10)
    try:
        live = list(reports(Sim(devices=("pump-1",), seed=11), now - 50 * 600, now))
        for i, (device, envelope) in enumerate(live):
            envelope["id"] = envelope["payload"]["report_id"] = f"{device}:live:{i}"
            probe.publish(f"edgeloop/{device}/telemetry", envelope)
        db = ControlDB(ws.control_db)
        stored = "SELECT COUNT(*) FROM variant_stats WHERE report_id LIKE 'pump-1:live:%'"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            db.events(kind="retention") and db.conn.execute(stored).fetchone()[0] == len(live)
        ):
            time.sleep(0.1)
        (event,) = db.events(kind="retention")
        assert db.conn.execute(stored).fetchone()[0] == len(live)
        assert event["data"]["slices"] > 1 and event["data"]["folded"]["variant_stats"] > 0
        assert holder["daemon"].counters["telemetry"] == len(live)
        assert not db.events(kind="retention_failed")
    finally:
        holder["daemon"].stop_event.set()
        thread.join(30)


def test_a_running_experiment_keeps_its_devices_raw_and_goes_on(
    fleet_history: History, tmp_path: Path
) -> None:
    """The shared history: a running A/B test on pump-1 and pump-2, two finished rollouts on
    pump-3, five days of drift windows. With raw_days 1 the older windows of pump-3 and the
    long-named device are folded; the experiment's devices keep every raw row, by its
    device claims and by its own record alike, and the experiment still ticks."""
    from edgeloop_control.policies.experiments import ACTIVE, ExperimentManager

    shutil.copytree(fleet_history.ws.root, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    running = fleet_history.experiments[-1]
    assert protected_devices(db) == set(DEVICES[:2])
    db.conn.execute("DELETE FROM device_owners")  # the experiments table alone still says so
    assert protected_devices(db) == set(DEVICES[:2])
    count = "SELECT device, COUNT(*) FROM drift_windows GROUP BY device"
    before = dict(db.conn.execute(count).fetchall())

    run = RetentionJob(db, RetentionConfig(raw_days=1)).run_once(time.time())

    after = dict(db.conn.execute(count).fetchall())
    assert {d: after[d] for d in DEVICES[:2]} == {d: before[d] for d in DEVICES[:2]}
    assert after[DEVICES[2]] < before[DEVICES[2]] and run.folded["drift_windows"] > 0
    # Its next look reads the same evidence as on a copy retention never touched.
    shutil.copytree(fleet_history.ws.root, tmp_path / "untouched")
    untouched = Workspace.open(tmp_path / "untouched")
    looks = []
    for w, d in ((ws, db), (untouched, ControlDB(untouched.control_db))):
        manager = ExperimentManager(w, d, None)
        manager.tick(time.time())
        (status,) = [e for e in manager.status() if e["id"] == running]
        looks.append((status["state"], [{**lk, "t": None} for lk in status["looks"]]))
    assert looks[0] == looks[1] and looks[0][0] in ACTIVE
