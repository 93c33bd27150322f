"""``edgeloop drift``: PSI, KS p and the verdict per feature; identifiers never truncated."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.cli.layout import print_rows, table_width
from edgeloop_control.demo.sensors import FEATURES
from tests.control.fleet_history import CATEGORICAL, DEVICES, LONG_DEVICE, LONG_FEATURES, History


def run(ws: Path, *args: str, columns: int = 100) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["-w", str(ws), *args], env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def test_json_gives_every_feature_of_the_newest_windows(fleet_history: History) -> None:
    code, stdout, stderr = run(fleet_history.ws.root, "drift", "--json")
    assert code == 0, stderr
    windows = json.loads(stdout)
    streams = {(w["device"], w["variant"]) for w in windows}
    assert streams == {(d, "sensor@v1") for d in [*DEVICES, LONG_DEVICE]}
    assert len(windows) == 3 * len(streams)  # the newest 3 of each stream by default
    for w in windows:
        names = [f["name"] for f in w["features"]]
        expected = [*FEATURES, CATEGORICAL] if w["device"] in DEVICES else LONG_FEATURES
        assert names == expected
        for f in w["features"]:
            assert set(f) >= {"psi", "ks_p", "ks_p_adjusted", "drift", "reasons", "verdict"}
            assert f["verdict"].startswith("drift") == f["drift"]
        # After the sensor change every window flags the vibration feature.
        assert w["dataset_drift"] and w["verdict"].startswith("DATASET DRIFT")
    vib = next(f for f in windows[0]["features"] if "vibration" in f["name"])
    assert vib["drift"] and vib["psi"] > 0.2 and "psi" in vib["reasons"]


def test_device_model_and_count_filters(fleet_history: History) -> None:
    code, stdout, _ = run(
        fleet_history.ws.root, "drift", "-d", DEVICES[1], "-m", "sensor@v1", "-n", "2", "--json"
    )
    assert code == 0
    windows = json.loads(stdout)
    assert len(windows) == 2 and {w["device"] for w in windows} == {DEVICES[1]}
    assert windows[0]["end"] <= windows[1]["end"]
    code, stdout, _ = run(fleet_history.ws.root, "drift", "-m", "sensor@v2", "--json")
    assert code == 0 and json.loads(stdout) == []
    code, stdout, _ = run(fleet_history.ws.root, "drift", "-m", "sensor@v2")
    assert code == 0 and "no drift windows" in stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_tables_never_truncate_identifiers(fleet_history: History, columns: int) -> None:
    code, stdout, stderr = run(fleet_history.ws.root, "drift", "-n", "1", columns=columns)
    assert code == 0, stderr
    assert "…" not in stdout
    for ident in [*DEVICES, "sensor@v1", *FEATURES, CATEGORICAL, *LONG_FEATURES]:
        assert ident in stdout, (columns, ident)
    # The heading of each window is one logical line: the long device id is never cut.
    assert f"{LONG_DEVICE} · sensor@v1 · window ending" in stdout
    for line in stdout.splitlines():
        if "┃" in line or "│" in line:  # table rows fit the terminal
            assert len(line) <= columns, line
    if columns == 80:  # the long feature name cannot fit a table row: vertical layout
        # The value wraps to its own line after the label, whole.
        assert "feature  :" in stdout
        assert any(
            line.strip() == LONG_FEATURES[0] or line == f"feature  : {LONG_FEATURES[0]}"
            for line in stdout.splitlines()
        )
    else:
        assert "feature  :" not in stdout


def test_bad_since_is_one_line(fleet_history: History) -> None:
    code, _, stderr = run(fleet_history.ws.root, "drift", "--since", "3 days")
    assert code == 1 and stderr.count("\n") == 1 and "--since '3 days'" in stderr


def test_layout_fits_then_drops_then_goes_vertical() -> None:
    rows = [["pump-station-1", "sensor@v12", "a-rather-long-feature-name", Text("ok")]]
    columns = ["device", "variant", "feature", "verdict"]
    width = table_width(columns, rows)
    for console_width, droppable, layout in [
        (width, (), "table"),
        (width - 1, ("variant",), "narrow"),
        (width - 1, (), "vertical"),
    ]:
        out = io.StringIO()
        console = Console(file=out, width=console_width, color_system=None)
        assert print_rows(console, "t", columns, rows, droppable=droppable) == layout
        text = out.getvalue()
        assert "pump-station-1" in text and "a-rather-long-feature-name" in text
        assert all(len(line) <= console_width for line in text.splitlines() if "│" in line)
        assert ("sensor@v12" in text) == (layout != "narrow")


def test_terminal_control_characters_from_devices_are_shown_not_obeyed(tmp_path: Path) -> None:
    """A feature name or variant carrying ESC sequences (set the window title, recolour, clear
    the screen) or a right-to-left override is printed escaped, in the table and the heading."""
    from edgeloop_control.fleet.ingest import handle_report
    from edgeloop_control.infra.db import ControlDB
    from edgeloop_control.infra.workspace import Workspace
    from tests.control.fleet_history import _envelope

    hostile = "temp\x1b]0;pwned\x07\x1b[2J\u202eevil"
    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        window = {
            "window": {"kind": "count", "start": 0, "end": 300, "n_rows": 300},
            "enough_data": True, "dataset_drift": True, "variant": f"m@v1{hostile}",
            "version": "v1", "t_end": 1_796_000_000.0,
            "features": [{"name": hostile, "psi": 0.5, "ks_p_adjusted": 1e-6, "drift": True,
                          "reasons": ["psi", "ks"]}],
        }  # fmt: skip
        assert handle_report(db, _envelope("dev-1", 1, 1_796_000_000.0, {"drift": [window]}))
    finally:
        db.close()
    for columns in (80, 200):
        code, stdout, stderr = run(ws.root, "drift", columns=columns)
        assert code == 0, stderr
        assert "\x1b" not in stdout and "\x07" not in stdout and "\u202e" not in stdout
        assert "temp\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil" in stdout
    code, stdout, _ = run(ws.root, "drift", "--json")
    assert json.loads(stdout)[0]["features"][0]["name"] == hostile  # JSON keeps the exact name
