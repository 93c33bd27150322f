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


def test_long_spans_switch_to_dates() -> None:
    from edgeloop_control.report.scale import time_domain
    from edgeloop_control.report.timefmt import date_step, date_tick, duration

    day = 86400
    origin = 1796083200.0  # 2026-12-01 00:00:00 UTC
    assert elapsed(720 * 3600) == "30d 00:00:00" and duration(5 * day + 7261) == "5d 02:01:01"
    short, long_ = Clock(origin, origin + day), Clock(origin, origin + 30 * day)
    assert not short.dates and short.rel(origin + 3600) == "+1:00:00"
    assert long_.dates and long_.rel(origin + 3600 * 14.5) == "2026-12-01 14:30"
    assert long_.both(origin) == "2026-12-01 00:00:00 UTC" and "UTC" in long_.axis_label
    scale = TimeScale(origin - 3600, origin + 30 * day, 50, 350, origin=origin, dates=True)
    ticks = scale.ticks(6)
    assert all(t % (7 * day) == 0 or t % day == 0 for t in ticks)  # whole UTC days
    labels = [scale.tick_formatter(6)(t) for t in ticks]
    assert all(len(label) == 6 and label[:3].isalpha() for label in labels), labels
    assert date_step(2 * day, 6) == 12 * 3600 and date_tick(origin + 6 * 3600) == "06:00"
    assert date_tick(origin + 15, 5) == "00:00:15"
    # A short chart on a long page: ticks every few seconds, never an empty axis.
    lo, hi = time_domain([origin, origin + 0.2])
    assert hi - lo == 60.0
    fine = TimeScale(lo, hi, 50, 350, origin=origin - 30 * day, dates=True)
    assert 3 <= len(fine.ticks(6)) <= 7


def test_a_month_long_report_shows_no_elapsed_hours() -> None:
    import re

    from edgeloop_control.report import render_report
    from tests.control.test_report_render import Page, demo_like_data

    data = demo_like_data()
    for w in data["drift"]["windows"]:
        w["t"] += 30 * 86400 * (w["t"] - data["drift"]["windows"][0]["t"]) / 300
    text = " ".join(Page(render_report(data)).text)
    assert not re.search(r"\d{3,}:\d\d:\d\d", text)
    assert re.search(r"\d+d \d\d:\d\d:\d\d long", text)
