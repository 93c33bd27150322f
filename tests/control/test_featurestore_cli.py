"""``edgeloop features`` and ``ingest_file`` against a real workspace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from edgeloop_control.cli.features import app, ingest_file
from edgeloop_control.featurestore import FeatureStore, FeatureStoreError
from edgeloop_control.infra.workspace import Workspace

NOW = pd.Timestamp.now(tz="UTC").floor("s")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "device": ["a", "b", "a", "c"],
            "ts": [(NOW - pd.Timedelta(h)).isoformat() for h in ("30h", "5h", "2h", "1h")],
            "temp": [1.5, 2.5, 3.5, 4.5],
            "mode": ["eco", "eco", "boost", "eco"],
        }
    )
    path = tmp_path / "sensors.csv"
    frame.to_csv(path, index=False)
    return path


def run(ws: Workspace, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"EDGELOOP_WORKSPACE": str(ws.root)})
    return result.exit_code, result.stdout, result.stderr


def ingest(ws: Workspace, csv: Path, *extra: str) -> dict:
    code, out, err = run(ws, "ingest", str(csv), "--view", "sensors", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_ingest_reingest_and_new_version(ws: Workspace, csv: Path, tmp_path: Path) -> None:
    first = ingest(ws, csv, "-e", "device", "-t", "ts", "--ttl", "1d")
    assert (first["ref"], first["accepted"], first["created_version"]) == ("sensors@v1", 4, True)
    again = ingest(ws, csv)
    assert (again["accepted"], again["duplicates"]) == (0, 4)

    changed = tmp_path / "changed.csv"
    pd.read_csv(csv).assign(hum=0.4).to_csv(changed, index=False)
    code, out, err = run(ws, "ingest", str(changed), "--view", "sensors")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "new columns ['hum']" in err and "--new-version" in err
    assert "evolve=True" not in err  # the Python API's wording stays out of the CLI
    second = ingest(ws, changed, "--new-version")
    assert (second["ref"], second["created_version"]) == ("sensors@v2", True)


def test_ls_and_show(ws: Workspace, csv: Path) -> None:
    code, out, _ = run(ws, "ls")
    assert code == 0 and "no feature views" in out
    ingest(ws, csv, "-e", "device", "-t", "ts")
    code, out, _ = run(ws, "ls", "--json")
    (listed,) = json.loads(out)
    assert (listed["ref"], listed["rows"], listed["entity"]) == ("sensors@v1", 4, ["device"])
    assert len(listed["fingerprint"]) == 64
    code, out, _ = run(ws, "ls")
    assert code == 0 and "sensors" in out and listed["fingerprint"][:12] in out

    code, out, _ = run(ws, "show", "sensors@v1", "--json")
    shown = json.loads(out)
    assert [c["name"] for c in shown["schema"]] == ["device", "ts", "temp", "mode"]
    assert sum(p["rows"] for p in shown["partitions"]) == shown["rows"] == 4
    assert shown["timestamp"] == "ts" and shown["ttl_seconds"] is None
    code, out, _ = run(ws, "show", "sensors")
    assert code == 0 and "fingerprint" in out and "partitions" in out


def test_materialize_and_get(ws: Workspace, csv: Path) -> None:
    ingest(ws, csv, "-e", "device", "-t", "ts", "--ttl", "1d")
    code, out, _ = run(ws, "get", "sensors", "a")
    assert code == 0 and "1 key(s) not materialised yet: run `edgeloop features materialize" in out
    code, out, _ = run(ws, "materialize", "sensors", "--json")
    assert code == 0 and json.loads(out)["written"] == 3
    code, out, _ = run(ws, "get", "sensors", "a", "b", "zz", "--json")
    got = {r["device"]: r for r in json.loads(out)}
    assert got["a"]["temp"] == 3.5 and got["a"]["mode"] == "boost"
    assert pd.Timestamp(got["a"]["ts"]) == NOW - pd.Timedelta("2h")
    assert got["b"]["temp"] == 2.5
    assert got["zz"]["ts"] is None and got["zz"]["temp"] is None
    code, out, _ = run(ws, "get", "sensors", "a", "zz")
    # Right after materialising, a missing key is an unknown entity, not "run materialize".
    assert code == 0 and "1 key(s) not among the materialised entities" in out
    assert "materialize" not in out

    start = (NOW - pd.Timedelta("90min")).isoformat()
    code, out, _ = run(ws, "materialize", "sensors", "--start", start, "--json")
    assert json.loads(out)["written"] == 0  # the only newer row (c) is already online


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "unknown view 'nope'"),
        (["show", "sensors@v9"], "no version v9"),
        (["get", "nope", "a"], "unknown view 'nope'"),
        (["materialize", "sensors", "--start", "someday"], "start 'someday' is not a timestamp"),
        (["ingest", "missing.csv", "--view", "x"], "no such file"),
    ],
)
def test_failures_exit_non_zero_with_one_line(
    ws: Workspace, csv: Path, args: list[str], message: str
) -> None:
    ingest(ws, csv, "-e", "device", "-t", "ts")
    code, out, err = run(ws, *args)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_ingest_file_function_reports_clear_errors(
    ws: Workspace, csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ingest_file(ws, csv, "sensors", ["device"], "ts")
    assert (result.accepted, result.version) == (4, 1)
    assert "sensors@v1 (new version): 4 row(s) stored" in capsys.readouterr().out
    ingest_file(ws, csv, "pairs", ["device,mode"], "ts", key="device, ts")
    pairs = FeatureStore(ws.feature_store_dir).view("pairs")
    assert (pairs.entity, pairs.key_columns) == (("device", "mode"), ("device", "ts"))

    bad = tmp_path / "bad.csv"
    pd.read_csv(csv).assign(ts=["2025-01-01", "later", "2025-01-02", "2025-01-03"]).to_csv(
        bad, index=False
    )
    # The function raises; the CLI's one handler (cli/common.py) prints the line.
    with pytest.raises(FeatureStoreError, match="'ts'"):
        ingest_file(ws, bad, "other", ["device"], "ts")
    with pytest.raises(FeatureStoreError, match=re.escape("entity column(s) ['site'] not in")):
        ingest_file(ws, csv, "other", ["site"], "ts")
    assert capsys.readouterr().err == ""


def test_materialising_a_range_without_rows_still_counts(ws: Workspace, csv: Path) -> None:
    """A materialize whose range holds no row used to leave no online table, so the next
    `features get` told the user to run the materialize they had just run."""
    ingest(ws, csv, "-e", "device", "-t", "ts")
    future = (NOW + pd.Timedelta("1d")).isoformat()
    code, out, _ = run(ws, "materialize", "sensors", "--start", future, "--json")
    assert code == 0 and json.loads(out)["written"] == 0
    code, out, _ = run(ws, "get", "sensors", "a")
    assert code == 0 and "1 key(s) not among the materialised entities" in out
    assert "materialize" not in out
