"""The agent's Prometheus text: cumulative counters, histogram buckets, escaping, outputs."""

from __future__ import annotations

import os
import stat
import urllib.request
from pathlib import Path

import pytest

from edgeloop_agent.metrics import Metrics
from edgeloop_agent.prometheus import MetricsServer, PrometheusExporter, write_textfile
from edgeloop_agent.wire.network import parse_listen


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def interval(latencies: list[float], errors: int = 0, variant: str = "m@v1") -> dict:
    m = Metrics()
    for s in latencies:
        m.record_request(variant, s, predictions=1)
    for _ in range(errors):
        m.record_request(variant, None, error="non_finite", predictions=0)
    return {"metrics": m.snapshot(reset=True)}


def test_counters_accumulate_over_intervals_plus_the_open_one() -> None:
    exp = PrometheusExporter("d1", "0.1.0")
    exp.close_interval(interval([0.001] * 3, errors=2))
    exp.close_interval(interval([0.002] * 4))
    live = interval([0.003] * 5)["metrics"]
    got = samples(exp.render(live))
    assert got['edgeloop_agent_requests_total{variant="m@v1"}'] == 3 + 2 + 4 + 5
    assert got['edgeloop_agent_errors_total{variant="m@v1",code="non_finite"}'] == 2
    assert got['edgeloop_agent_request_duration_seconds_count{variant="m@v1"}'] == 12
    # Rendering the live interval does not fold it into the totals.
    assert samples(exp.render())['edgeloop_agent_requests_total{variant="m@v1"}'] == 9


def test_histogram_buckets_are_cumulative_and_exact_at_their_edges() -> None:
    rng = [0.00005, 0.0004, 0.0009, 0.0011, 0.004, 0.02, 0.3, 3.0, 20.0]
    exp = PrometheusExporter("d1", "0.1.0")
    exp.close_interval(interval(rng))
    got = samples(exp.render())
    buckets = {
        float(k.split('le="')[1].split('"')[0]): v
        for k, v in got.items()
        if "_bucket" in k and 'le="+Inf"' not in k
    }
    assert buckets, "no buckets rendered"
    for le, count in buckets.items():
        assert count == sum(1 for s in rng if s <= le), le
    values = list(buckets.values())
    assert values == sorted(values)
    assert got['edgeloop_agent_request_duration_seconds_bucket{variant="m@v1",le="+Inf"}'] == 9
    assert got['edgeloop_agent_request_duration_seconds_sum{variant="m@v1"}'] == pytest.approx(
        sum(rng)
    )


def test_label_values_are_escaped() -> None:
    exp = PrometheusExporter('dev"1\\', "0.1.0")
    text = exp.render()
    assert 'device="dev\\"1\\\\"' in text


def test_model_drift_process_and_outbox_from_the_report() -> None:
    exp = PrometheusExporter("d1", "0.1.0")
    report = {
        **interval([0.001]),
        "ts": 1_700_000_000.5,
        "revision": 7,
        "variants": {"m@v1": {"name": "m", "version": "v1", "role": "serve"}},
        "drift": [
            {"variant": "m@v1", "dataset_drift": True, "features": [{"name": "temp", "psi": 0.4}]}
        ],
        "concept_drift": {"m@v1": {"detections": 2}},
        "process": {"rss_bytes": 80_000_000, "cpu_seconds": 12.5},
        "outbox": {"depth": 3, "bytes_used": 900, "sent": 10, "dropped": {"sample": 4}},
    }
    exp.close_interval(report)
    got = samples(exp.render())
    assert got['edgeloop_agent_model_info{variant="m@v1",name="m",version="v1",role="serve"}'] == 1
    assert got["edgeloop_agent_desired_revision"] == 7
    assert got['edgeloop_agent_drift_dataset{variant="m@v1"}'] == 1
    assert got['edgeloop_agent_feature_psi{variant="m@v1",feature="temp"}'] == 0.4
    assert got['edgeloop_agent_drift_flagged_windows_total{variant="m@v1"}'] == 1
    assert got['edgeloop_agent_concept_drift_detections_total{variant="m@v1"}'] == 2
    assert got["edgeloop_agent_resident_memory_bytes"] == 80_000_000
    assert got["edgeloop_agent_outbox_depth"] == 3
    assert got['edgeloop_agent_outbox_events_total{event="dropped",kind="sample"}'] == 4


def test_textfile_is_replaced_atomically_and_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = write_textfile(tmp_path, "edgeloop_agent_info 1\n")
    finally:
        os.umask(old)
    assert path.read_text() == "edgeloop_agent_info 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["edgeloop_agent.prom"]


def test_http_endpoint_serves_metrics_only() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: "edgeloop_agent_info 1\n").start()
    host, port = server.address[:2]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            assert resp.read() == b"edgeloop_agent_info 1\n"
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{host}:{port}/", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


@pytest.mark.parametrize("bad", ["9108", "host:", ":9108", "h:99999", "h:x"])
def test_listen_address_is_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(bad)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
