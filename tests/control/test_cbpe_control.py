"""The label-free performance estimate on the control node: ingested through the daemon's
write path with the drift window, checked at the boundary, shown by ``edgeloop drift``, and
used by the retrain trigger (signal ``estimated_performance``) and the A/B guardrail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.drift.performance import PerformanceEstimator
from edgeloop_agent.telemetry import json_safe
from edgeloop_agent.wire.calibration import Calibration
from edgeloop_agent.wire.profile import ReferenceProfile
from edgeloop_control.cli import app
from edgeloop_control.demo.sensors import TARGET, generate
from edgeloop_control.errors import ConfigError
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.fleet.messages import PoisonMessage, parse_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.experiments import ExperimentConfig
from edgeloop_control.policies.experiments.estimated import estimated_arms, estimated_guardrail
from edgeloop_control.policies.experiments.evaluate import guardrails
from edgeloop_control.policies.experiments.totals import ArmTotals
from edgeloop_control.policies.retrain.config import RetrainConfig
from edgeloop_control.policies.retrain.trigger import DriftEvidence, DriftTrigger
from edgeloop_control.training import OnnxPredictor
from tests.integration.models import sensor_model

T0 = 1_780_000_000.0
VARIANT = "sensor@v1"


@pytest.fixture
def ws_db(tmp_path: Path) -> Iterator[tuple[Workspace, ControlDB]]:
    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    try:
        yield ws, db
    finally:
        db.close()


def _report(device: str, seq: int, ts: float, windows: list[dict[str, Any]]) -> dict[str, Any]:
    rid = f"{device}:boot:{seq}"
    variants = {w["variant"] for w in windows}
    payload = {
        "report_id": rid,
        "device": device,
        "ts": ts,
        "revision": 1,
        "variants": {v: {"name": "sensor", "version": v.split("@")[1], "role": "serve"}
                     for v in variants},
        "metrics": {"variants": {}},
        "drift": windows,
        "concept_drift": {},
        "outbox": {"depth": 0, "dropped": 0},
        "process": {"rss_bytes": 1.0, "cpu_percent": 1.0},
    }  # fmt: skip
    return json.loads(
        json.dumps({"id": rid, "device_id": device, "kind": "report", "ts": ts,
                    "payload": json_safe(payload)})
    )  # fmt: skip


def _agent_windows(n_rows: int, seed: int) -> list[dict[str, Any]]:
    """Window documents as the agent's telemetry builds them, from the real sensor model:
    its drift profile and its calibration map, through DriftMonitor and PerformanceEstimator."""
    predictor = OnnxPredictor(sensor_model("v1").data)
    assert predictor.meta.calibration is not None
    cal = Calibration.from_dict(predictor.meta.calibration, 2)
    profile = ReferenceProfile.from_dict(predictor.meta.profile)
    window = WindowConfig("count", 200)
    monitor = DriftMonitor(profile, DriftConfig(window=window))
    estimator = PerformanceEstimator(cal, window)
    frame = generate(n_rows, seed=seed)
    proba = predictor.predict(frame).probabilities
    assert proba is not None
    reports = monitor.update(frame[profile.feature_names].to_numpy(float), proba[:, 1])
    estimates = {(e.start, e.end): e for e in estimator.update(proba)}
    docs = []
    for k, r in enumerate(reports):
        doc = r.to_dict()
        doc["estimated"] = estimates[(r.start, r.end)].to_dict()
        doc.update(variant=VARIANT, version="v1", t_start=T0 + 60 * k, t_end=T0 + 60 * (k + 1))
        docs.append(doc)
    # The realized accuracy on the same rows is within sampling error of the estimates.
    realized = np.mean((proba[:, 1] >= 0.5) == frame[TARGET].to_numpy().astype(bool))
    mean_est = np.mean([d["estimated"]["value"] for d in docs])
    assert abs(mean_est - realized) < 4 * np.sqrt(realized * (1 - realized) / n_rows)
    return docs


def run(ws: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["-w", str(ws), *args], env={"COLUMNS": "120"})
    return result.exit_code, result.stdout, result.stderr


def test_the_estimate_travels_with_its_window_to_edgeloop_drift(
    ws_db: tuple[Workspace, ControlDB],
) -> None:
    ws, db = ws_db
    docs = _agent_windows(1000, seed=5)
    assert handle_report(db, _report("pump-1", 1, T0 + 600, docs))
    code, stdout, stderr = run(ws.root, "drift", "--json", "-n", "10")
    assert code == 0, stderr
    shown = json.loads(stdout)
    assert [w["estimated"] for w in shown] == [d["estimated"] for d in docs]
    assert all(w["estimated"]["metric"] == "accuracy" and w["estimated"]["n"] == 200
               for w in shown)  # fmt: skip
    code, stdout, _ = run(ws.root, "drift", "-n", "1")
    last = docs[-1]["estimated"]
    assert code == 0
    assert f"estimated accuracy {last['value']:.3f} (training {last['reference']:.3f})" in stdout
    assert f"ROC AUC {last['roc_auc']['value']:.3f}" in stdout
    # The report's drift section charts it beside the training reference.
    out = ws.root / "report.html"
    code, _, stderr = run(ws.root, "report", "-o", str(out))
    assert code == 0, stderr
    html = out.read_text()
    assert "estimated accuracy (no labels)" in html
    lowest = min(d["estimated"]["value"] for d in docs)
    assert f"{len(docs)} windows with an estimate; lowest {lowest:.3f}" in html
    assert f"training holdout {last['reference']:.3f}" in html


@pytest.mark.parametrize(
    ("estimated", "needle"),
    [
        ({"metric": "accuracy", "value": 1.5, "n": 200}, "estimated.value must be within"),
        ({"metric": "accuracy", "value": "high", "n": 200}, "estimated.value must be a number"),
        ({"value": 0.9, "n": 200}, "estimated.metric"),
        ({"metric": "accuracy", "value": 0.9, "n": -1}, "estimated.n"),
        ({"metric": "accuracy", "value": 0.9, "roc_auc": {"value": 2}}, "roc_auc.value"),
        ([0.9], "estimated must be"),
    ],
)
def test_a_malformed_estimate_is_poison_named_by_its_field(estimated: Any, needle: str) -> None:
    doc = _agent_windows(200, seed=6)[0]
    doc["estimated"] = estimated
    with pytest.raises(PoisonMessage, match=needle):
        parse_report("pump-1", _report("pump-1", 1, T0, [doc]))


def _window(variant: str, k: int, value: float, *, reference: float = 0.9, n: int = 500) -> dict:
    """A minimal agent window document carrying an estimate."""
    return {
        "variant": variant, "version": variant.split("@")[1], "enough_data": True,
        "dataset_drift": False, "features": [], "output": None,
        "window": {"kind": "count", "start": 0, "end": n, "n_rows": n},
        "t_start": T0 + 60 * k, "t_end": T0 + 60 * (k + 1),
        "estimated": {"metric": "accuracy", "value": value, "n": n, "reference": reference,
                      "method": "cbpe", "roc_auc": {"value": value, "reference": reference}},
    }  # fmt: skip


def _serve(db: ControlDB, device: str) -> None:
    model = {"name": "sensor", "variant": VARIANT, "role": "serve", "weight": 100}
    db.set_desired(device, {"revision": 1, "models": [model]})
    db.upsert_device(device, groups=[])


@pytest.mark.parametrize("metric", ["accuracy", "roc_auc"])
def test_retrain_signal_fires_when_the_estimate_stays_below_training_by_the_drop(
    ws_db: tuple[Workspace, ControlDB], metric: str
) -> None:
    _, db = ws_db
    _serve(db, "pump-1")
    values = [0.88, 0.84, 0.83, 0.82]  # reference 0.9: the last three are >= 0.05 below
    for k, v in enumerate(values):
        assert handle_report(db, _report("pump-1", k, T0 + 60 * k, [_window(VARIANT, k, v)]))
    on = RetrainConfig(signals=["estimated_performance"], estimated_metric=metric)
    episode = DriftTrigger(db, on).detect(VARIANT)
    assert episode is not None
    assert episode.drifting["pump-1"] == DriftEvidence("estimated_performance", [], T0 + 60)
    assert f"estimated {metric} (no labels) at least 0.05 below training" in episode.message
    # Not by default (opt-in), not with a larger drop, not with four windows in a row.
    assert DriftTrigger(db, RetrainConfig()).detect(VARIANT) is None
    strict = RetrainConfig(signals=["estimated_performance"], estimated_drop=0.075)
    assert DriftTrigger(db, strict).detect(VARIANT) is None
    longer = RetrainConfig(signals=["estimated_performance"], consecutive_windows=4)
    assert DriftTrigger(db, longer).detect(VARIANT) is None


def test_retrain_signal_ignores_windows_without_an_estimate(
    ws_db: tuple[Workspace, ControlDB],
) -> None:
    _, db = ws_db
    _serve(db, "pump-1")
    for k in range(3):
        w = _window(VARIANT, k, 0.5)
        del w["estimated"]  # an uncalibrated model or an older agent
        assert handle_report(db, _report("pump-1", k, T0 + 60 * k, [w]))
    cfg = RetrainConfig(signals=["estimated_performance"])
    assert DriftTrigger(db, cfg).detect(VARIANT) is None


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("estimated_metric", "f1", "retrain.estimated_metric"),
        ("estimated_drop", 0, "retrain.estimated_drop"),
        ("estimated_drop", 1.5, "retrain.estimated_drop"),
        ("estimated_drop", "5%", "retrain.estimated_drop"),
    ],
)
def test_retrain_estimate_settings_are_validated(key: str, value: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RetrainConfig(signals=["estimated_performance"], **{key: value})


CHALLENGER = "sensor@v2"


def test_ab_guardrail_on_the_estimated_gap_between_arms(
    ws_db: tuple[Workspace, ControlDB],
) -> None:
    _, db = ws_db
    for k in range(4):  # both arms report in the same report; the challenger 0.08 lower
        docs = [_window(VARIANT, k, 0.90), _window(CHALLENGER, k, 0.82, n=300)]
        assert handle_report(db, _report("pump-1", k, T0 + 60 * k, docs))
    # A challenger window with no champion window in its report does not count.
    assert handle_report(db, _report("pump-2", 9, T0, [_window(CHALLENGER, 9, 0.1)]))
    arms = estimated_arms(db, VARIANT, CHALLENGER, ["pump-1", "pump-2"], 0)
    assert arms is not None
    assert (arms.windows, arms.n_champion, arms.n_challenger) == (4, 2000, 1200)
    assert arms.gap == pytest.approx(0.08)
    failed = estimated_guardrail(arms, 0.05, 50)
    assert not failed.passed and "gap +0.080 > limit 0.05" in failed.reason
    assert estimated_guardrail(arms, 0.1, 50).passed
    assert estimated_guardrail(arms, 0.05, 5000).passed  # too few rows to judge yet
    assert estimated_guardrail(None, 0.05, 50).passed
    # Through the experiment's guardrail list: present only when configured.
    names = [g.name for g in guardrails(ExperimentConfig(), ArmTotals(), [], arms)]
    assert "estimated_performance" not in names
    on = ExperimentConfig(max_estimated_gap=0.05)
    [g] = [g for g in guardrails(on, ArmTotals(), [], arms) if g.name == "estimated_performance"]
    assert not g.passed
    assert ExperimentConfig.from_dict({"max_estimated_gap": 0}).max_estimated_gap is None
    with pytest.raises(ConfigError, match="max_estimated_gap"):
        ExperimentConfig(max_estimated_gap=1.5)


def test_train_cli_refuses_an_unknown_calibration_in_one_line(
    ws_db: tuple[Workspace, ControlDB],
) -> None:
    ws, _ = ws_db
    code, _, stderr = run(
        ws.root, "train", "--view", "sensors", "--target", "fault", "--calibration", "beta"
    )
    assert code == 2 and stderr.count("\n") == 1 and "unknown calibration 'beta'" in stderr
