"""`edgeloop drift` never calls a feature "ok" that the agent did not judge.

Found by tests/integration/test_loop_real_data.py: with 200-row windows, a debt ratio
with 7 % missing values had 186 values per window, under the monitor's 200, so the
agent judged it not at all (no adjusted p-value, no flag) though its PSI was 7.4 —
and `edgeloop drift` printed "ok" beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.telemetry import json_safe
from edgeloop_agent.wire.profile import build_reference_profile
from edgeloop_control.cli import app
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace

NAMES = ["open_accounts", "debt_ratio"]


def _window(rng: np.random.Generator, n: int, *, scale: float) -> np.ndarray:
    debt = rng.beta(2.0, 4.0, n) * scale
    debt[rng.random(n) < 0.08] = np.nan  # ~16 of 200 missing: fewer than 200 values left
    return np.column_stack([rng.poisson(3.0, n).astype(float), debt])


def test_a_feature_with_too_few_values_is_not_judged_not_ok(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ws = Workspace.init(tmp_path / "ws", broker="mqtt://127.0.0.1:1")
    profile = build_reference_profile(_window(rng, 3000, scale=1.0), NAMES, None)
    monitor = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 200)))
    (report,) = monitor.update(_window(rng, 200, scale=100.0))  # the debt ratio in percent
    doc = {**report.to_dict(), "variant": "loan@v1", "version": "v1", "t_start": 1.0}
    doc["t_end"] = 2.0
    debt = next(f for f in doc["features"] if f["name"] == "debt_ratio")
    assert report.enough_data and debt["n"] < 200 and debt["psi"] > 1 and not debt["drift"]

    payload = {"report_id": "loan-1:b:1", "device": "loan-1", "ts": 2.0, "revision": 1,
               "variants": {"loan@v1": {"name": "loan", "version": "v1", "role": "serve"}},
               "metrics": {"variants": {}}, "drift": [doc], "concept_drift": {}}  # fmt: skip
    db = ControlDB(ws.control_db)
    assert handle_report(
        db,
        json.loads(json.dumps({"id": "loan-1:b:1", "device_id": "loan-1", "kind": "report",
                               "ts": 2.0, "payload": json_safe(payload)})),
    )  # fmt: skip
    db.close()

    out = CliRunner().invoke(app, ["-w", str(ws.root), "drift", "--json"])
    assert out.exit_code == 0, out.stderr
    (window,) = json.loads(out.stdout)
    verdicts = {f["name"]: f["verdict"] for f in window["features"]}
    assert verdicts["debt_ratio"] == f"not judged ({debt['n']} values < 200)"
    assert verdicts["open_accounts"] == "ok"
    assert window["verdict"] == "no drift; not judged: debt_ratio"

    table = CliRunner().invoke(app, ["-w", str(ws.root), "drift"], env={"COLUMNS": "120"})
    assert "not judged" in table.stdout and "debt_ratio" in table.stdout
