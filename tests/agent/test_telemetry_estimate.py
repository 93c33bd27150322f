"""The agent's telemetry attaches the label-free estimate to each drift window of a
calibrated model, and a bad calibration section costs the estimate, never the model or its
drift monitoring. Real model (trained by the product's pipeline), real onnxruntime, real
SQLite outbox."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from edgeloop_agent.drift import DriftConfig, WindowConfig
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.outbox import Outbox
from edgeloop_agent.telemetry import Telemetry
from edgeloop_agent.wire.calibration import Calibration, estimate
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.demo.sensors import FEATURES, generate
from edgeloop_control.training.export import embed_calibration
from tests.integration.models import sensor_model

VARIANT = "sensor@v1"


def _telemetry(tmp_path: Path) -> Telemetry:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=10**8, device_id="dev-1")
    return Telemetry(
        topics=Topics("dev-1"),
        outbox=outbox,
        drift_config=DriftConfig(window=WindowConfig("count", 200)),
        capture_rate=0.0,
        feedback_window=100,
        feedback_max_age_s=60.0,
    )


def _model(data: bytes) -> OnnxModel:
    return OnnxModel(data, name="sensor", version="v1", sha256=hashlib.sha256(data).hexdigest())


def _serve(telemetry: Telemetry, model: OnnxModel, n: int) -> np.ndarray:
    """Serve ``n`` rows in batches of 50 through the serving hook; the raw probabilities."""
    frame = generate(n, seed=21)
    rows = frame[FEATURES].to_numpy(float).tolist()
    probs = []
    for a in range(0, n, 50):
        batch = rows[a : a + 50]
        feeds = model.build(batch)
        outputs = model.run(feeds)
        probs.append(outputs.probabilities)
        ids = [f"r{a + i}" for i in range(len(batch))]
        starts = list(range(len(batch)))
        telemetry.on_predictions(VARIANT, model, ids, batch, feeds, outputs, starts)
    return np.concatenate(probs)


def test_each_window_of_a_calibrated_model_carries_its_estimate(tmp_path: Path) -> None:
    model = _model(sensor_model("v1").data)
    telemetry = _telemetry(tmp_path)
    telemetry._variants = {VARIANT: telemetry._variant_state(VARIANT, model, "serve")}
    proba = _serve(telemetry, model, 600)
    windows = list(telemetry._windows)
    assert len(windows) == 3
    cal = Calibration.from_dict(model.meta.calibration, 2)
    for k, doc in enumerate(windows):
        want = estimate(cal, proba[200 * k : 200 * (k + 1)])
        assert doc["estimated"]["n"] == 200 and doc["estimated"]["metric"] == "accuracy"
        assert doc["estimated"]["value"] == pytest.approx(want["accuracy"], abs=1e-12)
        assert doc["estimated"]["roc_auc"]["value"] == pytest.approx(want["roc_auc"], abs=1e-12)
        assert doc["estimated"]["reference"] == cal.reference["accuracy"]


def test_a_bad_calibration_section_turns_off_the_estimate_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = embed_calibration(sensor_model("v1").data, {"version": 1, "method": "beta"})
    model = _model(bad)  # the model itself loads
    telemetry = _telemetry(tmp_path)
    with caplog.at_level(logging.ERROR, "edgeloop.agent.telemetry"):
        state = telemetry._variant_state(VARIANT, model, "serve")
    assert state.estimator is None and state.monitor is not None
    assert "performance estimate off for sensor@v1: calibration.method" in caplog.text
    telemetry._variants = {VARIANT: state}
    _serve(telemetry, model, 400)
    windows = list(telemetry._windows)
    assert len(windows) == 2 and all("estimated" not in w for w in windows)
