"""The report collector on a real workspace: five days of drift, two experiments, two rollouts.

The history is written through the real modules (``fleet_history.py``); the page is checked
for content with the stdlib HTML parser and rendered once in headless Chromium.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report import render_report, write_report
from edgeloop_control.report.collect import collect_report
from edgeloop_control.report.history import Selection, feature_order
from edgeloop_control.report.markup import unique_slugs
from tests.chromium import run_chromium
from tests.control.fleet_history import (
    CATEGORICAL,
    DEVICES,
    LONG_DEVICE,
    LONG_FEATURES,
    MODEL_FEATURES,
    UNMONITORED,
    History,
)
from tests.control.test_report_render import Page, assert_self_contained, decode_png, near

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


def collect(history: History, sel: Selection | None = None) -> dict[str, Any]:
    db = ControlDB(history.ws.control_db)
    try:
        return collect_report(history.ws, db, sel or Selection())
    finally:
        db.close()


def text_of(page: Page) -> str:
    return " ".join(page.text)


def test_every_feature_experiment_rollout_and_device_is_on_the_page(
    fleet_history: History,
) -> None:
    data = collect(fleet_history)
    features = data["drift"]["features"]
    # Model order from the registry (including the categorical feature), then the features
    # only another device's windows name.
    assert features == [*MODEL_FEATURES, *LONG_FEATURES]
    document = render_report(data)
    page = Page(document)
    assert_self_contained(document, page)
    ids = page.svg_ids()
    for slug in unique_slugs(features):
        assert f"drift-chart-{slug}" in ids
    assert page.inside(f"drift-chart-{CATEGORICAL}", "circle", "point")  # a categorical feature
    # A feature no window reports still has its chart, which says why it is empty.
    assert not page.inside(f"drift-chart-{UNMONITORED}", "circle", "point")
    assert "the agent does not monitor this feature" in " ".join(page.text)
    for chart in ("ab-metric-chart", "ab-cs-chart", "ab-pvalue-chart"):
        assert chart in ids and f"{chart}-2" in ids
    assert "rollout-chart" in ids and "rollout-chart-2" in ids
    assert len(ids) == len(set(ids))
    text = text_of(page)
    for ident in [*fleet_history.experiments, *fleet_history.rollouts, *DEVICES, LONG_DEVICE]:
        assert ident in text, ident
    assert "completed" in text and "rolled_back" in text
    db = ControlDB(fleet_history.ws.control_db)
    try:
        stored_events = len(db.events(limit=100_000))
    finally:
        db.close()
    assert len(data["events"]) == stored_events
    assert data["summary"]["drift windows"] == fleet_history.windows
    fleet = document[document.index('<table class="data fleet">') :]
    fleet = fleet[: fleet.index("</table>")]
    assert "74.0" in fleet and "outbox" in fleet  # RSS and outbox depth from the telemetry


def test_a_long_span_reads_as_dates_not_elapsed_hours(fleet_history: History) -> None:
    data = collect(fleet_history)
    page = Page(render_report(data))
    text = text_of(page)
    assert not re.search(r"\+\d+:\d\d", text), "elapsed times on a five-day page"
    assert data["summary"]["span covered"].startswith("5d ")
    ticks = [t.text for t in page.inside("drift-chart-vibration_mm_s", "text", "tick")]
    dates = [t for t in ticks if re.fullmatch(r"[A-Z][a-z]{2} \d\d", t)]
    assert len(dates) >= 4, ticks
    expected = time.strftime("%b %d", time.gmtime(fleet_history.shift_at + 86400))
    assert expected in dates
    assert "date and time (UTC)" in text
    heat = [e.text for e in page.elements if e.tag == "th" and re.match(r"\d{4}-\d\d-\d\d", e.text)]
    assert heat, "heat table columns are labelled with dates"


def test_filters_narrow_every_section_and_say_why_one_is_empty(fleet_history: History) -> None:
    data = collect(fleet_history, Selection(devices=("pump-3",)))
    assert {w["device"] for w in data["drift"]["windows"]} == {"pump-3"}
    assert [d["device"] for d in data["devices"]] == ["pump-3"]
    assert data["experiments"] == []  # both ran on pump-1 and pump-2
    assert len(data["rollouts"]) == 2
    assert "no experiment ran for the selected devices/models" in text_of(Page(render_report(data)))

    data = collect(fleet_history, Selection(models=("sensor@v2",)))
    assert data["drift"]["windows"] == []  # every window is sensor@v1's
    assert len(data["experiments"]) == 2  # sensor@v2 is their challenger
    assert [r["model"] for r in data["rollouts"]] == ["sensor@v2"]
    page = Page(render_report(data))
    assert "no drift windows were reported for the selected devices/models" in text_of(page)

    shift = fleet_history.shift_at
    data = collect(fleet_history, Selection(since=shift, until=shift + 86400))
    ends = [w["t"] for w in data["drift"]["windows"]]
    assert ends and min(ends) >= shift and max(ends) <= shift + 86400
    assert data["experiments"] == [] and data["rollouts"] == []
    text = text_of(Page(render_report(data)))
    assert "no experiment ran in the selected range" in text
    assert "no rollout ran in the selected range" in text


def test_an_empty_workspace_says_why_each_section_is_empty(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        data = collect_report(ws, db, Selection())
    finally:
        db.close()
    page = Page(render_report(data))
    assert page.svg_ids() == []
    text = text_of(page)
    for message in (
        "no devices reported",
        "no drift windows were reported",
        "no experiment ran",
        "no rollout ran",
        "no control-node events were recorded",
    ):
        assert message in text
    assert "span covered" not in data["summary"]  # nothing covered: no made-up duration


def test_feature_order_takes_the_model_order_then_what_windows_add() -> None:
    windows = [
        {"variant": "m@v2", "features": [{"name": "z"}, {"name": "a"}, {"name": "new"}]},
        {"variant": "m@v1", "features": [{"name": "a"}, {"name": "b"}]},
    ]
    known = {"m@v1": ["b", "a", "colour"], "m@v2": ["z", "a", "b"]}
    assert feature_order(windows, known) == ["z", "a", "b", "colour", "new"]
    assert feature_order(windows, {}) == ["z", "a", "new", "b"]


def test_chromium_renders_the_workspace_report(fleet_history: History, tmp_path: Path) -> None:
    path = write_report(collect(fleet_history), tmp_path / "report.html")
    dom = Page(run_chromium(["--dump-dom", path.as_uri()], tmp_path))
    assert "ab-metric-chart-2" in dom.svg_ids() and "rollout-chart-2" in dom.svg_ids()
    png = tmp_path / "report.png"
    run_chromium(
        ["--hide-scrollbars", f"--screenshot={png}", "--window-size=1280,3000", path.as_uri()],
        tmp_path,
    )
    image = decode_png(png.read_bytes())
    assert (image.min(axis=2) < 235).mean() > 0.03
    assert near(image, "#d62728") > 200  # drift-flagged points after the shift
    # The fleet table wraps long ids instead of running off the right edge.
    assert np.all(image[:, -24:].min(axis=2) > 200)


def test_nonsense_from_an_agent_does_not_cost_the_page(tmp_path: Path) -> None:
    """Negative counts, text for numbers, markup in names: the page is still written."""
    from edgeloop_control.fleet.ingest import handle_report
    from edgeloop_control.fleet.messages import PoisonMessage
    from tests.control.fleet_history import _envelope

    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        window = {
            "window": {"kind": "count", "start": 0, "end": 100, "n_rows": -5},
            "enough_data": True, "dataset_drift": True, "variant": "m@v1", "version": "v1",
            "t_end": 1_796_000_000.0,
            "features": [{"name": "<b>x</b>", "psi": "high", "ks_p": None, "drift": True},
                         {"name": "ok", "psi": 0.4, "ks_p_adjusted": 0.001, "drift": True}],
        }  # fmt: skip
        payload = {"drift": [window], "metrics": {"variants": {"m@v1": {"requests": -3}}}}
        # The daemon refuses such a report at the boundary now...
        with pytest.raises(PoisonMessage):
            handle_report(db, _envelope("dev-1", 1, 1_796_000_000.0, payload))
        # ...but a database written before that (or by hand) may still hold one.
        db.conn.execute(
            "INSERT INTO drift_windows(report_id, idx, device, variant, version, start, end, "
            "n, enough_data, dataset_drift, output_drift, drifted, doc) "
            "VALUES ('r1', 0, 'dev-1', 'm@v1', 'v1', NULL, ?, -5, 1, 1, 0, ?, ?)",
            (1_796_000_000.0, json.dumps(["<b>x</b>", "ok"]), json.dumps(window)),
        )
        db.conn.execute(
            "INSERT INTO variant_stats(report_id, variant, device, ts, requests) "
            "VALUES ('r1', 'm@v1', 'dev-1', ?, -3)",
            (1_796_000_000.0,),
        )
        data = collect_report(ws, db, Selection())
    finally:
        db.close()
    document = render_report(data)
    page = Page(document)
    assert data["drift"]["features"] == ["<b>x</b>", "ok"]
    assert "<b>x</b>" not in document and "&lt;b&gt;x&lt;/b&gt;" in document
    assert page.inside("drift-chart-ok", "circle", "point")


def test_a_broken_experiment_config_costs_only_that_section(
    fleet_history: History, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(fleet_history.ws.root, tmp_path / "ws", symlinks=True)
    with open(tmp_path / "ws" / "edgeloop.toml", "a", encoding="utf-8") as fh:
        fh.write("\n[experiment]\nalpha = 7\n")
    ws = Workspace.open(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        data = collect_report(ws, db, Selection())
    finally:
        db.close()
    text = text_of(Page(render_report(data)))
    assert "the experiments could not be read" in text and "alpha" in text
    assert len(data["rollouts"]) == 2 and data["drift"]["windows"]
