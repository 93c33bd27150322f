"""A real Prometheus scrapes a real agent: its /metrics endpoint and, through a real
node_exporter, its textfile; the values read back through Prometheus' query API match
what the agent served."""

from __future__ import annotations

import time
from pathlib import Path

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.integration.models import sample_features, sensor_model
from tests.integration.test_agent_e2e import (
    DEVICE,
    publish_deployment,
    request,
    start_agent,
    wait_status,
)
from tests.mqtt_helpers import Probe
from tests.prometheus_server import NodeExporter, Prometheus, free_port

REQUESTS = 40
BAD = 3


def test_prometheus_reads_the_agents_counters(
    broker: PrivateBroker, probe: Probe, agents, tmp_path: Path
) -> None:
    port = free_port()
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("replies/#")
    start_agent(
        agents,
        broker,
        tmp_path,
        extra=[
            "--metrics",
            f"127.0.0.1:{port}",
            "--metrics-textfile",
            str(textdir),
            "--telemetry-interval",
            "0.5",
        ],
    )
    v1 = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    features = sample_features(1)[0]
    for i in range(REQUESTS):
        assert "prediction" in request(probe, {"id": f"r{i}", "features": features})
    for i in range(BAD):
        first = next(iter(features))
        reply = request(probe, {"id": f"bad{i}", "features": {**features, first: "hot"}})
        assert reply["error"]["code"] == "non_numeric"

    node = NodeExporter(tmp_path / "node", textdir)
    prom = Prometheus(tmp_path / "prom", {"agent": f"127.0.0.1:{port}", "textfile": node.address})
    try:
        for job in ("agent", "textfile"):
            sel = f'job="{job}",variant="sensor@v1"'
            prom.wait_value(f"sum(edgeloop_agent_requests_total{{{sel}}})", REQUESTS + BAD)
            assert prom.value(f'edgeloop_agent_errors_total{{{sel},code="non_numeric"}}') == float(
                BAD
            )
            assert prom.value(f"edgeloop_agent_request_duration_seconds_count{{{sel}}}") == float(
                REQUESTS
            )
            p99 = prom.value(
                f"histogram_quantile(0.99, edgeloop_agent_request_duration_seconds_bucket{{{sel}}})"
            )
            assert p99 is not None and 0 < p99 < 1
            info = prom.query(f'edgeloop_agent_model_info{{job="{job}"}}')
            assert [r["metric"]["version"] for r in info] == ["v1"]
            assert prom.value(f'edgeloop_agent_resident_memory_bytes{{job="{job}"}}') > 10e6
        assert prom.targets_up() == {"agent": "up", "textfile": "up"}
        # The live endpoint counts requests before the next telemetry interval closes.
        t0 = time.monotonic()
        request(probe, {"id": "one-more", "features": features})
        prom.wait_value(
            'sum(edgeloop_agent_requests_total{job="agent",variant="sensor@v1"})',
            REQUESTS + BAD + 1,
        )
        assert time.monotonic() - t0 < 30
    finally:
        prom.stop()
        node.stop()


def test_prometheus_reads_the_fleet_from_the_control_node(
    broker: PrivateBroker, probe: Probe, agents, tmp_path: Path
) -> None:
    import os
    import subprocess

    from edgeloop_control.infra.workspace import Workspace
    from edgeloop_control.registry import Registry
    from tests.integration.test_control_daemon import EDGELOOP, wait_connected

    ws = Workspace.init(tmp_path / "ws")
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[retrain]\nenabled = false\n")
    Registry.for_workspace(ws).register("sensor", sensor_model("v1").data, {"algorithm": "logreg"})
    http = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "control.log", "ab")  # noqa: SIM115
    daemon = subprocess.Popen(
        [
            EDGELOOP,
            "-w",
            str(ws.root),
            "--broker",
            broker.url,
            "serve",
            "--tick",
            "0.5",
            "--http",
            http,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = None
    try:
        # Until its first connection the daemon has no session: reports sent before are
        # not queued for it.
        wait_connected(tmp_path / "control.log", 0)
        probe.subscribe(f"edgeloop/{DEVICE}/status")
        probe.subscribe("replies/#")
        start_agent(
            agents,
            broker,
            tmp_path,
            extra=[
                "--trusted-key",
                str(ws.public_key_path),
                "--telemetry-interval",
                "0.5",
                "--drift-window",
                "200",
            ],
        )
        env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url}
        out = subprocess.run(
            [EDGELOOP, "deploy", "sensor@v1", "--new-device", "--device", DEVICE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
        features = sample_features(1)[0]
        for i in range(REQUESTS):
            assert "prediction" in request(probe, {"id": f"r{i}", "features": features})
        # One batch request fills a drift window, so the fleet has a drift verdict too.
        batch = request(probe, {"id": "batch", "rows": sample_features(250, seed=3)})
        assert len(batch["predictions"]) == 250
        prom = Prometheus(tmp_path / "prom", {"control": http})
        sel = f'job="control",device="{DEVICE}",variant="sensor@v1"'
        prom.wait_value(f"edgeloop_device_requests_total{{{sel}}}", REQUESTS + 1)
        assert prom.value('edgeloop_fleet_devices_online{job="control"}') == 1.0
        assert prom.value(f'edgeloop_device_online{{job="control",device="{DEVICE}"}}') == 1.0
        assert (
            prom.value('edgeloop_request_duration_seconds_count{job="control",variant="sensor@v1"}')
            == REQUESTS + 1
        )
        assert prom.value(f'edgeloop_device_resident_memory_bytes{{device="{DEVICE}"}}') > 10e6
        # The shipped Grafana dashboard's queries are valid PromQL with data behind them.
        # (rate() needs two scrapes of a series, so each query gets a few seconds.)
        for expr in grafana_queries():
            deadline = time.monotonic() + 20
            while not prom.query(expr) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert prom.query(expr), f"no data for the dashboard query {expr}"
    finally:
        if prom is not None:
            prom.stop()
        daemon.terminate()
        daemon.wait(30)
        log.close()


def grafana_queries() -> list[str]:
    """Every PromQL expression of the shipped dashboard, its variables filled in."""
    import json

    path = Path(__file__).resolve().parents[2] / "packaging" / "grafana" / "edgeloop-fleet.json"
    dashboard = json.loads(path.read_text())
    return [
        target["expr"].replace("$device", ".*")
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
