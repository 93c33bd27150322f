from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from edgeloop_agent.metrics import OTHER, Metrics, merge_snapshots
from edgeloop_agent.wire.histogram import LatencyHistogram

QS = [0.001, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]


def _samples(kind: str, n: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(11)
    if kind == "lognormal":
        return rng.lognormal(np.log(0.004), 1.2, n)
    if kind == "uniform":
        return rng.uniform(1e-5, 2.0, n)
    # bimodal: a cache hit path and a slow path two decades apart
    return np.concatenate([rng.normal(2e-4, 2e-5, n // 2), rng.normal(0.03, 0.004, n // 2)])


@pytest.mark.parametrize("kind", ["lognormal", "uniform", "bimodal"])
def test_quantiles_match_numpy_within_bucket_resolution(kind: str) -> None:
    x = _samples(kind)
    h = LatencyHistogram()
    for v in x.tolist():
        h.record(v)
    g = 10 ** (1 / h.per_decade)
    for q in QS:
        est = h.quantile(q)
        assert est is not None
        # Same definition (nearest rank): within the stated error, half a bucket.
        exact = float(np.percentile(x, q * 100, method="inverted_cdf"))
        assert abs(est / exact - 1) <= h.relative_error + 1e-9, (q, est, exact)
        # numpy's default interpolates between the two neighbouring samples: the estimate is
        # within one bucket width of that pair.
        below = float(np.percentile(x, q * 100, method="lower"))
        above = float(np.percentile(x, q * 100, method="higher"))
        assert below / g <= est <= above * g, (q, est, below, above)
    assert h.count == len(x)
    assert h.sum == pytest.approx(float(x.sum()))
    assert (h.min, h.max) == (float(x.min()), float(x.max()))


def test_out_of_range_and_invalid_latencies() -> None:
    h = LatencyHistogram()
    for v in [0.0, 1e-9, 5e-7]:
        h.record(v)
    # All below 1 µs: the estimate stays inside the underflow bucket and the observed range.
    assert h.quantile(1.0) == 5e-7 and 0.0 <= h.quantile(0.1) <= 5e-7
    for v in [20.0, 30.0, 45.0]:
        h.record(v)
    assert h.quantile(1.0) == 45.0  # the overflow bucket reports the exact max
    for bad in [float("nan"), -0.001, float("inf"), -math.inf]:
        h.record(bad)
    assert h.count == 6 and h.invalid == 4
    assert LatencyHistogram().quantile(0.5) is None
    with pytest.raises(ValueError, match="quantile q"):
        h.quantile(0.0)


def test_histogram_memory_is_fixed() -> None:
    h = LatencyHistogram()
    size = len(h.to_dict()["counts"])
    for v in np.random.default_rng(1).lognormal(0, 6, 200_000).tolist():
        h.record(v)
    assert len(h._counts) == 142  # 7 decades x 20 + underflow + overflow, however many samples
    assert size == 0 and len(h.to_dict()["counts"]) <= 142


def test_merge_equals_recording_everything_once() -> None:
    x = _samples("lognormal", 20_000)
    a, b, whole = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in x[:7000].tolist():
        a.record(v)
    for v in x[7000:].tolist():
        b.record(v)
    for v in x.tolist():
        whole.record(v)
    a.merge(b)
    got, want = a.to_dict(), whole.to_dict()
    assert got.pop("sum") == pytest.approx(want.pop("sum"))
    assert got == want
    assert [a.quantile(q) for q in QS] == [whole.quantile(q) for q in QS]
    with pytest.raises(ValueError, match="different layouts"):
        a.merge(LatencyHistogram(per_decade=10))
    a.reset()
    assert a.count == 0 and a.quantile(0.5) is None


def test_histogram_json_roundtrip_and_validation() -> None:
    h = LatencyHistogram()
    for v in _samples("bimodal", 5000).tolist():
        h.record(v)
    data = json.loads(json.dumps(h.to_dict(), allow_nan=False))
    back = LatencyHistogram.from_dict(data)
    assert back.to_dict() == h.to_dict()
    with pytest.raises(ValueError, match='missing field "per_decade"'):
        LatencyHistogram.from_dict({"lo": 1e-6, "hi": 10})
    with pytest.raises(ValueError, match=r"bad counts entry \[500, 1\]"):
        LatencyHistogram.from_dict({**data, "counts": [[500, 1]]})
    with pytest.raises(ValueError, match="count 3 != sum of counts"):
        LatencyHistogram.from_dict({**data, "count": 3})
    with pytest.raises(ValueError, match="hi must be"):
        LatencyHistogram(lo=1.0, hi=0.5)


def test_counters_and_outcomes_per_variant() -> None:
    m = Metrics(clock=iter(range(100)).__next__)
    for i in range(100):
        m.record_request("v1", 0.001 * (i + 1), predictions=2)
    m.record_request("v2", None, error="timeout")
    m.record_request("v2", 0.5, error="timeout")
    m.record_request("v2", 0.5, error="bad_input")
    rng = np.random.default_rng(5)
    correct = rng.random(500) < 0.8
    for c in correct.tolist():
        m.record_classification("v1", c)
    err = rng.normal(0.3, 1.0, 400)
    for e in err.tolist():
        m.record_regression("v2", e)
    m.record_regression("v2", float("nan"))

    snap = m.snapshot()
    json.dumps(snap, allow_nan=False)  # JSON-able, strictly
    v1, v2 = snap["variants"]["v1"], snap["variants"]["v2"]
    assert (v1["requests"], v1["predictions"], v1["errors"]) == (100, 200, {})
    assert v1["latency"]["count"] == 100
    assert v1["latency"]["p50"] == pytest.approx(0.050, rel=v1["latency"]["relative_error"])
    assert v1["classification"] == {
        "n": 500,
        "correct": int(correct.sum()),
        "accuracy": pytest.approx(correct.mean()),
    }
    assert v2["errors"] == {"timeout": 2, "bad_input": 1}
    assert v2["latency"]["count"] == 2  # the untimed request is counted, not timed
    reg = v2["regression"]
    assert reg["n"] == 400 and v2["outcome_invalid"] == 1
    assert reg["mae"] == pytest.approx(np.abs(err).mean())
    assert reg["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert v2["classification"]["accuracy"] is None


def test_snapshot_reset_starts_a_new_interval() -> None:
    ticks = iter([10.0, 20.0, 30.0])
    m = Metrics(clock=lambda: next(ticks))
    m.record_request("a", 0.01)
    first = m.snapshot(reset=True)
    assert (first["start"], first["end"]) == (10.0, 20.0)
    assert first["variants"]["a"]["requests"] == 1
    second = m.snapshot()
    assert (second["start"], second["variants"]) == (20.0, {})


def test_variants_and_error_codes_are_capped() -> None:
    m = Metrics(max_variants=4, max_error_codes=3)
    for i in range(1000):
        m.record_request(f"v{i}", 0.001, error=f"E{i % 50}")
    snap = m.snapshot()["variants"]
    assert len(snap) == 5 and OTHER in snap  # four named variants, then the shared slot
    assert snap[OTHER]["requests"] == 996
    assert len(snap[OTHER]["errors"]) == 4  # three codes + OTHER
    assert sum(snap[OTHER]["errors"].values()) == 996


def test_merge_snapshots_equals_one_interval() -> None:
    whole, parts = Metrics(), Metrics()
    snaps = []
    rng = np.random.default_rng(2)
    for _interval in range(3):
        for _ in range(300):
            variant = "a" if rng.random() < 0.7 else "b"
            lat = float(rng.lognormal(-5, 1))
            for m in (whole, parts):
                m.record_request(variant, lat, error="e" if lat > 0.02 else None)
                m.record_classification(variant, bool(lat < 0.01))
                m.record_regression(variant, lat - 0.007)
        snaps.append(json.loads(json.dumps(parts.snapshot(reset=True))))
    merged = merge_snapshots(*snaps)
    expected = whole.snapshot()
    for v in ("a", "b"):
        got, want = merged["variants"][v], expected["variants"][v]
        assert got["latency"]["counts"] == want["latency"]["counts"]
        for key in ("requests", "predictions", "errors", "classification"):
            assert got[key] == want[key]
        assert got["regression"] == pytest.approx(want["regression"])
    with pytest.raises(ValueError, match="snapshot 1: not a metrics snapshot"):
        merge_snapshots(snaps[0], {"foo": 1})
    with pytest.raises(ValueError, match=r'snapshot 0, variant "a": .*missing field "latency"'):
        merge_snapshots(
            {
                "start": 0,
                "end": 1,
                "variants": {"a": {"requests": 1, "predictions": 1, "errors": {}}},
            }
        )


def test_concurrent_recording_and_resets_lose_nothing() -> None:
    m = Metrics()
    n_per_thread = 20_000
    snaps: list[dict] = []
    stop = threading.Event()

    def serve(variant: str) -> None:
        for i in range(n_per_thread):
            m.record_request(variant, 1e-4 * (i % 100 + 1))

    def report() -> None:
        while not stop.is_set():
            snaps.append(m.snapshot(reset=True))

    reporter = threading.Thread(target=report)
    reporter.start()
    servers = [threading.Thread(target=serve, args=(v,)) for v in ("a", "b")]
    for t in servers:
        t.start()
    for t in servers:
        t.join()
    stop.set()
    reporter.join()
    snaps.append(m.snapshot())
    for v in ("a", "b"):
        total = sum(s["variants"].get(v, {}).get("requests", 0) for s in snaps)
        hist = sum(s["variants"].get(v, {}).get("latency", {}).get("count", 0) for s in snaps)
        assert total == hist == n_per_thread
    assert len(snaps) > 2
