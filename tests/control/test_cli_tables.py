"""Every table of the CLI, rendered from real data at 80 and 200 columns, keeps every
identifier (device ids, versions, stage names, feature names, run ids) whole."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.terminal import table
from edgeloop_control.tracking import Tracker
from tests.control.fleet_history import DEVICES, LONG_DEVICE, LONG_FEATURES, MODEL_FEATURES, History

WIDTHS = [80, 200]
LONG_VIEW_FEATURE = "ambient_humidity_at_the_intake_of_the_north_basin_percent"
LONG_GROUP = "north-basin-pumps-commissioned-in-the-second-phase"


def run(ws: Path, columns: int, *args: str) -> str:
    result = CliRunner().invoke(app, ["-w", str(ws), *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, (args, result.stderr, result.stdout)
    return result.stdout


def whole(out: str, ident: str) -> bool:
    """``ident`` appears with nothing cut: not followed by an ellipsis, not split."""
    return re.search(re.escape(ident) + r"(?![\w@.-])", out) is not None


def check(out: str, columns: int, idents: list[str]) -> None:
    assert "…" not in out and "..." not in out, out
    for line in out.splitlines():  # table rows fit (a soft-wrapped heading may not)
        if "│" in line or "┃" in line:
            assert len(line) <= columns, (columns, line)
    missing = [i for i in idents if not whole(out, i)]
    assert not missing, (columns, missing, out)


@pytest.fixture(scope="module")
def small_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Features (a long feature name), a tracked run and a group with a long name."""
    root = tmp_path_factory.mktemp("tables")
    ws = Workspace.init(root / "ws")
    now = pd.Timestamp.now(tz="UTC").floor("s")
    frame = pd.DataFrame(
        {
            "device": [*DEVICES, LONG_DEVICE],
            "ts": [(now - pd.Timedelta(hours=h)).isoformat() for h in (4, 3, 2, 1)],
            "temp": [1.5, 2.5, 3.5, 4.5],
            LONG_VIEW_FEATURE: [40.0, 41.0, 42.0, 43.0],
        }
    )
    csv = root / "sensors.csv"
    frame.to_csv(csv, index=False)
    run(
        ws.root,
        200,
        "ingest",
        str(csv),
        "--view",
        "sensors",
        "--entity",
        "device",
        "--timestamp",
        "ts",
    )
    run(ws.root, 200, "features", "materialize", "sensors")
    with Tracker(None, ws.local_runs_dir).start_run("loan-default", "train loan@v1") as r:
        r.log_metric("roc_auc", 0.91)
    db = ControlDB(ws.control_db)
    try:
        for device in [*DEVICES, LONG_DEVICE]:
            db.upsert_device(device)
    finally:
        db.close()
    run(ws.root, 200, "group", "set", LONG_GROUP, *DEVICES, LONG_DEVICE)
    return ws


@pytest.mark.parametrize("columns", WIDTHS)
def test_models_tables(fleet_history: History, columns: int) -> None:
    ws = fleet_history.ws.root
    check(run(ws, columns, "models"), columns, ["sensor@v1", "sensor@v2"])
    # The feature list in full: docs/protocol.md sends readers here for the order.
    show = run(ws, columns, "models", "show", "sensor@v1")
    check(show, columns, ["sensor@v1", *MODEL_FEATURES])
    check(run(ws, columns, "models", "diff", "sensor@v1", "sensor@v2"), columns, ["sensor@v1"])


@pytest.mark.parametrize("columns", WIDTHS)
def test_policy_and_fleet_tables(fleet_history: History, columns: int) -> None:
    ws = fleet_history.ws.root
    ids = [*fleet_history.experiments, "sensor@v1", "sensor@v2"]
    check(run(ws, columns, "ab", "status"), columns, ids)
    for exp in fleet_history.experiments:
        check(run(ws, columns, "ab", "status", exp), columns, [exp, "sensor@v1", *DEVICES[:2]])
    check(run(ws, columns, "rollout", "status"), columns, fleet_history.rollouts)
    for ro in fleet_history.rollouts:
        check(run(ws, columns, "rollout", "status", ro), columns, [ro, DEVICES[2]])
    check(run(ws, columns, "fleet", "--timeout", "0.2"), columns, [*DEVICES, LONG_DEVICE])
    drift = run(ws, columns, "drift", "-n", "1")
    check(drift, columns, [*DEVICES, LONG_DEVICE, *LONG_FEATURES])


@pytest.mark.parametrize("columns", WIDTHS)
def test_store_tables(small_ws: Workspace, columns: int) -> None:
    ws = small_ws.root
    check(run(ws, columns, "features", "ls"), columns, ["sensors"])
    check(run(ws, columns, "features", "show", "sensors"), columns, [LONG_VIEW_FEATURE])
    got = run(ws, columns, "features", "get", "sensors", LONG_DEVICE, DEVICES[0])
    check(got, columns, [LONG_VIEW_FEATURE, LONG_DEVICE, DEVICES[0]])
    runs = run(ws, columns, "runs", "ls", "--local")
    run_ids = [r["run_id"] for r in json.loads(run(ws, 200, "runs", "ls", "--local", "--json"))]
    check(runs, columns, [*run_ids, "loan-default"])
    check(run(ws, columns, "group", "ls"), columns, [LONG_GROUP, LONG_DEVICE, *DEVICES])


def test_layouts_in_order_of_preference() -> None:
    """Full width; else free text wraps (never below its longest word); else low-value
    columns go; else vertical."""
    rows = [["pump-station-1", "sensor@v12", "champion, challenger, canary-stage", "9f8e7d6c"]]
    cols = ["device", "version", "stages", "sha256"]

    def render(width: int, **kw: tuple[str, ...]) -> tuple[str, str]:
        out = io.StringIO()
        t = table("t", cols, rows, **kw)
        Console(file=out, width=width, color_system=None).print(t)
        return t.layout, out.getvalue()

    full = len(render(200)[1].splitlines()[2])  # the header line's width
    assert render(full)[0] == "table"
    assert render(full - 5)[0] == "vertical"
    layout, text = render(full - 5, wrap=("stages",))
    assert layout == "wrapped" and "canary-stage" in text and "challenger," in text
    least = full - len("champion, challenger, canary-stage") + len("canary-stage")
    assert render(least, wrap=("stages",))[0] == "wrapped"
    layout, text = render(least - 1, wrap=("stages",), droppable=("sha256",))
    assert layout == "narrow" and "9f8e7d6c" not in text
    layout, text = render(30, wrap=("stages",), droppable=("sha256",))
    assert layout == "vertical" and "pump-station-1" in text and "9f8e7d6c" in text
