"""Axis arithmetic for the report's charts: tick steps, labels, time formats, colours."""

from __future__ import annotations

import pytest

from edgeloop_control.report.markup import slug, unique_slugs
from edgeloop_control.report.palette import heat
from edgeloop_control.report.scale import LinearScale, LogScale, TimeScale, decimals_for, nice_step
from edgeloop_control.report.timefmt import Clock, elapsed, time_step


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3599, "59:59"), (3600, "1:00:00"), (-5, "-0:05")],
)
def test_elapsed(seconds: float, text: str) -> None:
    assert elapsed(seconds) == text


def test_time_ticks_fall_on_round_elapsed_times() -> None:
    origin = 1764160000.0
    scale = TimeScale(origin + 27.0, origin + 283.0, 50, 350, origin=origin)
    ticks = scale.ticks(6)
    assert [t - origin for t in ticks] == [60.0, 120.0, 180.0, 240.0]
    assert [scale.tick_formatter()(t) for t in ticks] == ["1:00", "2:00", "3:00", "4:00"]
    assert time_step(20, 6) == 5 and time_step(7200, 6) == 1800
    assert Clock(origin).rel(origin + 75) == "+1:15"


def test_linear_ticks_and_labels() -> None:
    scale = LinearScale(0.0, 0.26, 200, 10)  # y runs upwards in SVG
    assert scale.ticks(5) == [0.0, 0.1, 0.2]  # 0.05 would need 5.2 intervals
    assert scale.ticks(6) == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    assert scale.tick_formatter(6)(0.1) == "0.10" and scale.tick_formatter(5)(0.1) == "0.1"
    assert scale(0.0) == 200 and scale(0.26) == pytest.approx(10)
    assert nice_step(1.0, 4) == 0.25 and nice_step(0.0) == 1.0
    assert decimals_for(0.25) == 2 and decimals_for(20) == 0 and decimals_for(0.5) == 1


def test_log_ticks_and_the_floor() -> None:
    scale = LogScale(1e-6, 1.0, 200, 0)
    assert scale.ticks(7) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert len(scale.ticks(3)) <= 4
    assert scale(0.0) == scale(1e-9) == 200  # zero cannot sit on a log axis: drawn at the floor
    assert scale.tick_formatter()(1e-4) == "1e-4" and scale.tick_formatter()(0.01) == "0.01"


def test_ids_from_user_names() -> None:
    assert slug("bearing_temp_c") == "bearing_temp_c"
    assert slug('"><img src=x>') == "img-src-x"
    assert slug("<>") == "x"
    assert unique_slugs(["a b", "a-b", "a b"]) == ["a-b", "a-b-2", "a-b-3"]


def test_heat_ramp() -> None:
    assert heat(0.0, 0.2) == ("#ffffff", "#1a1a1a")
    assert heat(0.2, 0.2)[0] == "#fc8d59"
    assert heat(10.0, 0.2) == ("#7f0000", "#ffffff")  # beyond the ramp stays at its end
