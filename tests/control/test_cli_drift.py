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
        assert f"feature     : {LONG_FEATURES[0]}" in stdout
    else:
        assert "feature     :" not in stdout


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
