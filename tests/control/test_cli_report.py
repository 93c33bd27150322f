"""``edgeloop report``: writes one file and exits 0; bad filters are one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.report.history import HistoryError, parse_when
from tests.control.fleet_history import DEVICES, History
from tests.control.test_report_render import Page


def run(ws: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["-w", str(ws), *args], env={"COLUMNS": "100"})
    return result.exit_code, result.stdout, result.stderr


def test_report_writes_a_self_contained_file(fleet_history: History, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "fleet.html"
    code, stdout, stderr = run(fleet_history.ws.root, "report", "-o", str(out))
    assert code == 0, stderr
    assert str(out) in stdout and "2 experiments, 2 rollouts" in stdout
    document = out.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    assert "ab-metric-chart-2" in Page(document).svg_ids()


def test_filters_and_json(fleet_history: History, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, stdout, stderr = run(
        fleet_history.ws.root,
        "report", "--since", "2d", "--until", "now", "--device", DEVICES[0],
        "-d", DEVICES[1], "--model", "sensor", "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["path"] == str(out) and out.is_file()
    summary = info["summary"]
    assert summary["devices"] == 2 and summary["experiments"] == 2
    assert "devices pump-1, pump-2" in summary["selection"]
    assert 0 < summary["drift windows"] < 40  # the last two days of two devices' windows


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday-ish"], "--since 'yesterday-ish': not a date/time"),
        (["--until", "2026-13-45"], "--until '2026-13-45'"),
        (["--since", "2030-01-01", "--until", "2020-01-01"], "is after --until"),
        (["--device", "pump/1"], "device id"),
        (["--device", "+"], "device id"),
        (["--model", "sensor@"], "model version"),
        (["--model", "bad name"], "model name"),
    ],
)
def test_bad_filters_are_one_clear_line(
    fleet_history: History, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "never.html"
    code, stdout, stderr = run(fleet_history.ws.root, "report", *args, "-o", str(out))
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], stderr
    assert "Traceback" not in stderr + stdout and not out.exists()


def test_unwritable_output_is_an_error_not_a_traceback(
    fleet_history: History, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, stderr = run(fleet_history.ws.root, "report", "-o", str(blocker / "r.html"))
    assert code == 1 and "cannot write" in stderr and "Traceback" not in stderr


def test_times_parse_as_documented() -> None:
    now = 1_800_000_000.0
    assert parse_when("2h", now=now) == now - 7200
    assert parse_when("7d", now=now) == now - 7 * 86400
    assert parse_when("1.5w", now=now) == now - 1.5 * 7 * 86400
    assert parse_when("now", now=now) == now
    assert parse_when("2026-12-01") == 1796083200.0  # midnight UTC
    assert parse_when("2026-12-01T14:00Z") == 1796083200.0 + 14 * 3600
    assert parse_when("2026-12-01T14:00+02:00") == 1796083200.0 + 12 * 3600
    for bad in ("", "2", "-2h", "2 hours", "tomorrow"):
        with pytest.raises(HistoryError):
            parse_when(bad, now=now)
