"""The control node's /metrics: incremental counters from the control database."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import free_port
from edgeloop_control.web.fleetmetrics import FleetMetrics
from edgeloop_control.web.server import HttpServer, parse_listen

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


def stats_row(db: ControlDB, report: str, device: str, requests: int, errors: int) -> None:
    hist = LatencyHistogram()
    for _ in range(requests):
        hist.record(0.002)
    db.conn.execute(
        "INSERT INTO variant_stats(report_id, variant, device, ts, requests, errors, latency) "
        "VALUES (?, 'm@v1', ?, 0, ?, ?, ?)",
        (report, device, requests, errors, json.dumps(hist.to_dict())),
    )


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_counters_fold_only_new_rows_and_stay_cumulative(control_db_location: str | Path) -> None:
    db = ControlDB(control_db_location)
    db.upsert_device("d1", online=1, telemetry={"rss_bytes": 5e7, "outbox_depth": 2})
    db.upsert_device("d2", online=0, drift={"m@v1": {"data_drift": True}})
    stats_row(db, "r1", "d1", 10, 1)
    fleet = FleetMetrics()
    first = samples(fleet.render(db.conn))
    assert first['edgeloop_device_requests_total{device="d1",variant="m@v1"}'] == 10
    stats_row(db, "r2", "d1", 5, 0)
    stats_row(db, "r3", "d2", 7, 2)
    got = samples(fleet.render(db.conn))
    assert got['edgeloop_device_requests_total{device="d1",variant="m@v1"}'] == 15
    assert got['edgeloop_device_errors_total{device="d2",variant="m@v1"}'] == 2
    assert got['edgeloop_request_duration_seconds_count{variant="m@v1"}'] == 22
    assert got["edgeloop_fleet_devices"] == 2 and got["edgeloop_fleet_devices_online"] == 1
    assert got['edgeloop_device_resident_memory_bytes{device="d1"}'] == 5e7
    assert got['edgeloop_device_outbox_depth{device="d1"}'] == 2
    assert got['edgeloop_device_drift{device="d2",variant="m@v1"}'] == 1
    # A second render with no new rows changes nothing (nothing is counted twice).
    assert samples(fleet.render(db.conn)) == got


def test_http_server_serves_metrics_and_health(control_db_location: str | Path) -> None:
    db = ControlDB(control_db_location)
    stats_row(db, "r1", "d1", 3, 0)
    server = HttpServer(control_db_location, f"127.0.0.1:{free_port()}").start()
    base = f"http://{server.listen}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read().decode()
        assert 'edgeloop_device_requests_total{device="d1",variant="m@v1"} 3' in body
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/nope", timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()


def test_the_lease_holder_and_the_workers_heartbeats(control_db_location: str | Path) -> None:
    from edgeloop_control.daemon.workers import Roster
    from edgeloop_control.infra.lease import Lease

    db = ControlDB(control_db_location)
    fleet = FleetMetrics()
    assert "worker_heartbeat" not in "".join(samples(fleet.render(db.conn)))  # one daemon
    Roster(db, "a", "edgeloop-control-x-a", 1000.0)
    Roster(db, "b", "edgeloop-control-x-b", 1000.0).heartbeat(1010.0)
    assert Lease(db, "policies", "b", ttl_s=15).hold(1010.0)
    got = samples(fleet.render(db.conn))
    assert got['edgeloop_policies_lease_expiry_timestamp_seconds{holder="b"}'] == 1025.0
    assert got['edgeloop_worker_heartbeat_timestamp_seconds{worker="a"}'] == 1000.0
    assert got['edgeloop_worker_heartbeat_timestamp_seconds{worker="b"}'] == 1010.0


@pytest.mark.parametrize("bad", ["0.0.0.0:8765", "192.168.1.5:80", "example.com:80", "8765"])
def test_only_loopback_until_there_is_auth(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(bad)
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:8765") == ("::1", 8765)
