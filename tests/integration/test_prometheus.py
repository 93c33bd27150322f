"""A real Prometheus scrapes a real agent: its /metrics endpoint and, through a real
node_exporter, its textfile; the values read back through Prometheus' query API match
what the agent served."""

from __future__ import annotations

import time
from pathlib import Path

from edgeloop_control.broker import PrivateBroker
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
