"""Categorical and multivariate drift windows on the control node: ``history.feature_p``
reads the categorical chi-square p-value, the report's drift section and ``edgeloop drift``
show categorical features and the PCA row. Windows come from the agent's real DriftMonitor,
stored through the real ingest path."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import build_reference_profile
from edgeloop_control.cli import app
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report import history, render_report
from edgeloop_control.report.collect import collect_report, drift_section
from tests.control.fleet_history import _envelope

NAMES = ["a", "b", "c"]


def _windows() -> list[dict]:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 1))
    X = np.column_stack(
        [base[:, 0], base[:, 0] + 0.1 * rng.normal(size=3000), rng.normal(size=3000)]
    )
    kinds = rng.choice(["A", "B", "band"], size=3000, p=[0.6, 0.3, 0.1]).tolist()
    profile = build_reference_profile(X, NAMES, None, categorical={"kind": kinds}, pca_variance=0.9)
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 1000)))
    live = rng.choice(["A", "B", "band"], size=1000, p=[0.69, 0.3, 0.01])
    Y = np.column_stack([base[:1000, 0], rng.permutation(X[:1000, 1]), rng.normal(size=1000)])
    (rep,) = mon.update(Y, categories=live.reshape(-1, 1).astype(object))
    doc = rep.to_dict()
    doc.update(variant="m@v1", version="v1", t_start=1_796_000_000.0, t_end=1_796_000_100.0)
    return [doc]


def test_categorical_p_value_and_pca_row_reach_history_report_and_cli(tmp_path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        assert handle_report(db, _envelope("dev-1", 1, 1_796_000_100.0, {"drift": _windows()}))
        found = history.drift_windows(db, history.Selection())
        data = collect_report(ws, db, history.Selection())
    finally:
        db.close()
    (w,) = found
    kind = next(f for f in w["features"] if f["name"] == "kind")
    assert kind["kind"] == "categorical" and kind["drift"]
    # Before: feature_p knew only KS keys and gave None for a categorical feature.
    assert history.feature_p(kind) == kind["chi2_p_adjusted"] < 1e-6
    assert w["multivariate"]["name"] == history.MULTIVARIATE and w["multivariate"]["drift"]
    section = drift_section(None, found)
    assert section is not None
    assert section["features"] == [*NAMES, "kind", history.MULTIVARIATE]
    (row,) = section["windows"]
    assert row["ks_p"]["kind"] == kind["chi2_p_adjusted"]
    assert row["ks_p"][history.MULTIVARIATE] == w["multivariate"]["ks_p_adjusted"]
    assert row["psi"]["kind"] == kind["psi"] > 0.1
    page = render_report(data)  # validated, then rendered: a chart per row, PCA row included
    assert "PSI of kind over time" in page and "multivariate (PCA reconstruction)" in page
    result = CliRunner().invoke(app, ["-w", str(ws.root), "drift"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "kind (categorical)" in result.output
    assert "multivariate (PCA reconstruction)" in result.output
    assert "DATASET DRIFT: kind, multivariate (PCA reconstruction)" in result.output
