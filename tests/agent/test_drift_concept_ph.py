"""Page-Hinkley against River's published example and River's rules, transcribed.

River 0.26, ``river/drift/page_hinkley.py``: the docstring example (random.Random(12345),
1,000 values from {0, 1} then 1,000 from {4..7}) prints "Change detected at index 1006,
input value: 5". River is not a dependency; its example is reproduced with the standard
library's ``random``, which is what River's example uses.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from edgeloop_agent.drift import PageHinkley


def _river_example_stream() -> list[int]:
    rng = random.Random(12345)
    return rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)


def test_rivers_docstring_example() -> None:
    ph = PageHinkley()
    found = []
    for i, val in enumerate(_river_example_stream()):
        ph.update(val)
        if ph.drift_detected:
            found.append((i, val))
    assert found == [(1006, 5)]


class _RiverTranscript:
    """River's update rule as written in its source (stats.Mean is a running mean)."""

    def __init__(
        self, min_instances=30, delta=0.005, threshold=50.0, alpha=1 - 0.0001, mode="both"
    ):  # type: ignore[no-untyped-def]
        self.min_instances, self.delta, self.threshold = min_instances, delta, threshold
        self.alpha, self.mode = alpha, mode
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self.n, self.mean = 0, 0.0
        self.si, self.sd = 0.0, 0.0
        self.mi, self.md = float("inf"), -1

    def update(self, x: float) -> None:
        if self.drift_detected:
            self._reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        dev = x - self.mean
        self.si = self.alpha * self.si + dev - self.delta
        self.sd = self.alpha * self.sd + dev + self.delta
        if self.si < self.mi:
            self.mi = self.si
        if self.sd > self.md:
            self.md = self.sd
        if self.n >= self.min_instances:
            ti, td = self.si - self.mi, self.md - self.sd
            up, down = ti > self.threshold, td > self.threshold
            self.drift_detected = {"up": up, "down": down, "both": up or down}[self.mode]


@pytest.mark.parametrize("mode", ["up", "down", "both"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_equal_rivers_rules_on_random_streams(mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Steps up and down, so every branch and several resets are exercised.
    stream = np.concatenate(
        [rng.normal(mu, 1.0, 700) for mu in (0.0, 2.5, 2.5, -1.0, 3.0, 0.0)]
    ).tolist()
    ours = PageHinkley(threshold=20.0, mode=mode)
    ref = _RiverTranscript(threshold=20.0, mode=mode)
    hits = 0
    for x in stream:
        ours.update(x)
        ref.update(x)
        assert ours.drift_detected == ref.drift_detected
        hits += ours.drift_detected
    assert hits >= 1 and ours.n_detections == hits


def test_up_mode_sees_an_error_rate_increase_and_not_a_decrease() -> None:
    rng = np.random.default_rng(7)
    rise = np.concatenate([rng.random(20_000) < 0.055, rng.random(5000) < 0.09])
    fall = np.concatenate([rng.random(20_000) < 0.09, rng.random(5000) < 0.055])
    for stream, expect in ((rise, True), (fall, False)):
        ph = PageHinkley(mode="up")
        seen = []
        for i, e in enumerate(stream):
            ph.update(bool(e))
            if ph.drift_detected:
                seen.append(i)
        assert bool(seen) == expect, seen
        if expect:
            assert all(i >= 20_000 for i in seen) and seen[0] < 23_000
    assert math.isnan(PageHinkley().error_rate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_instances": 0}, "min_instances"),
        ({"delta": -1}, "delta"),
        ({"threshold": float("nan")}, "threshold"),
        ({"alpha": 0}, "alpha"),
        ({"mode": "sideways"}, "mode"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PageHinkley(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None])
def test_bad_values_are_refused_and_the_state_kept(bad: object) -> None:
    ph = PageHinkley()
    ph.update(1.0)
    with pytest.raises(ValueError, match="x: expected a finite number"):
        ph.update(bad)  # type: ignore[arg-type]
    assert ph.n == 1 and ph.error_rate == 1.0
