"""Error-rate detectors vs vectorised re-statements of the published rules, and their
behaviour on streams with and without a known change point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeloop_agent.drift import DDM, HDDM_A

Detector = DDM | HDDM_A


def _ddm_reference(e: np.ndarray, warm: int = 30, wt: float = 2.0, dt: float = 3.0):  # type: ignore[no-untyped-def]
    """Gama et al. (2004) over a whole prefix with cumulative numpy arrays."""
    n = np.arange(1, e.size + 1)
    p = np.cumsum(e) / n
    s = np.sqrt(p * (1.0 - p) / n)
    ps = p + s
    eligible = (n >= warm) & (s > 0)
    ps_e = np.where(eligible, ps, np.inf)
    ps_min = np.minimum.accumulate(ps_e)
    last = np.maximum.accumulate(np.where(eligible & (ps_e == ps_min), n - 1, -1))
    s_min = np.where(last >= 0, s[np.maximum(last, 0)], np.inf)
    active = (n >= warm) & (last >= 0)
    drift = active & (ps >= ps_min + (dt - 1) * s_min)
    warn = active & ~drift & (ps >= ps_min + (wt - 1) * s_min)
    return drift, warn


def _hddm_reference(e: np.ndarray, delta: float = 0.001, delta_w: float = 0.005):  # type: ignore[no-untyped-def]
    """Frías-Blanco et al. (2015), A-test, over a whole prefix with numpy arrays."""
    n = np.arange(1, e.size + 1)
    mean = np.cumsum(e) / n
    bound = mean + np.sqrt(math.log(1.0 / delta) / (2.0 * n))
    run = np.minimum.accumulate(bound)
    cut = np.maximum.accumulate(np.where(bound == run, n - 1, -1))
    k = cut + 1
    gap = mean - mean[cut]
    m = (n - k) / (2.0 * k * n)
    drift = (k < n) & (gap >= np.sqrt(m * math.log(2.0 / delta)))
    warn = (k < n) & ~drift & (gap >= np.sqrt(m * math.log(2.0 / delta_w)))
    return drift, warn


def _run(det: Detector, e: np.ndarray) -> tuple[int | None, list[bool]]:
    warnings = []
    for i, x in enumerate(e):
        det.update(bool(x))
        warnings.append(det.warning_detected)
        if det.drift_detected:
            return i, warnings
    return None, warnings


def _stream(seed: int, change: int = 1000, n: int = 3000, p0: float = 0.1, p1: float = 0.3):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(change) < p0, rng.random(n - change) < p1]).astype(float)


@pytest.mark.parametrize(
    ("make", "reference"),
    [(DDM, _ddm_reference), (HDDM_A, _hddm_reference)],
    ids=["DDM", "HDDM_A"],
)
def test_detector_equals_its_vectorised_definition(make, reference) -> None:  # type: ignore[no-untyped-def]
    for seed in range(40):
        e = _stream(seed) if seed % 2 else _stream(seed, change=3000)
        first, warns = _run(make(), e)
        drift, warn = reference(e)
        expected_first = int(np.argmax(drift)) if drift.any() else None
        assert first == expected_first
        upto = e.size if first is None else first
        assert warns[:upto] == warn[:upto].tolist()


def _first_drifts(make, seeds: range, **stream_kw) -> list[int | None]:  # type: ignore[no-untyped-def]
    return [_run(make(), _stream(s, **stream_kw))[0] for s in seeds]


def test_hddm_detects_the_change_after_it_happens() -> None:
    firsts = _first_drifts(HDDM_A, range(200))
    after = [f - 1000 for f in firsts if f is not None and f >= 1000]
    before = sum(f is not None and f < 1000 for f in firsts)
    assert len(after) >= 0.95 * 200  # error rate 0.1 -> 0.3 at t = 1000
    assert before <= 0.05 * 200
    assert float(np.median(after)) < 250


def test_hddm_false_alarm_rate_is_low_on_a_stationary_stream() -> None:
    n_seeds = 200
    alarms = sum(f is not None for f in _first_drifts(HDDM_A, range(n_seeds), change=3000))
    slack = 3 * math.sqrt(0.05 * 0.95 / n_seeds)
    assert alarms / n_seeds <= 0.05 + slack  # over 3000 outcomes each


def test_ddm_detects_the_change_mostly_after_it_happens() -> None:
    firsts = _first_drifts(DDM, range(200))
    after = sum(f is not None and f >= 1000 for f in firsts)
    assert after > 100  # most seeds; early false alarms take the rest (see docs)


def test_ddm_false_alarms_accumulate_more_than_hddm() -> None:
    # Why HDDM_A is the recommended default: same stationary streams, same length.
    seeds = range(100)
    ddm = sum(f is not None for f in _first_drifts(DDM, seeds, change=3000))
    hddm = sum(f is not None for f in _first_drifts(HDDM_A, seeds, change=3000))
    assert hddm < ddm


@pytest.mark.parametrize("make", [DDM, HDDM_A], ids=["DDM", "HDDM_A"])
def test_state_restarts_after_a_drift(make) -> None:  # type: ignore[no-untyped-def]
    det = make()
    e = _stream(3)
    first, _ = _run(det, e)
    assert first is not None and det.drift_detected and det.n_detections == 1
    assert det.error_rate == pytest.approx(float(np.mean(e[: first + 1])), abs=1e-15)
    det.update(False)
    assert not det.drift_detected and det.n == 1 and det.error_rate == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: DDM(warm_start=0), "warm_start"),
        (lambda: DDM(warning_threshold=-1), "warning_threshold"),
        (lambda: DDM(warning_threshold=3, drift_threshold=2), "must exceed"),
        (lambda: HDDM_A(drift_confidence=0), "drift_confidence"),
        (lambda: HDDM_A(drift_confidence=0.01, warning_confidence=0.005), "must exceed"),
        (lambda: DDM().update("yes"), "error: expected a boolean"),  # type: ignore[arg-type]
        (lambda: HDDM_A().update(0.5), "error: expected a boolean"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_clear_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()
    assert math.isnan(DDM().error_rate)
