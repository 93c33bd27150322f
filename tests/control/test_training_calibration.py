"""Training calibrates classifiers on the holdout and ships the map in the model metadata;
the agent's parser accepts it, and models without it keep loading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression

from edgeloop_agent.wire.calibration import MAX_BREAKPOINTS, Calibration, estimate
from edgeloop_agent.wire.modelmeta import ModelMeta
from edgeloop_control.training import OnnxPredictor, TrainConfig, train
from edgeloop_control.training.calibration import fit_calibration
from edgeloop_control.training.errors import TrainConfigError


def _frame(n: int, classes: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    if classes == 2:
        y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - x[:, 1])))).astype(int)
    else:
        y = np.argmax(x + rng.normal(size=(n, 3)), axis=1)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})


@pytest.mark.parametrize(
    ("algo", "classes", "n", "method"),
    [("logreg", 2, 1200, "sigmoid"), ("rf", 2, 6000, "isotonic"), ("hgb", 3, 6000, "isotonic")],
)
def test_a_trained_classifier_carries_a_map_the_agent_accepts(
    algo: str, classes: int, n: int, method: str
) -> None:
    params = {"rf": {"n_estimators": 20}, "hgb": {"max_iter": 30}}.get(algo, {})
    result = train(_frame(n, classes), TrainConfig(target="y", algo=algo, params=params))
    section = result.meta.calibration
    assert section is not None and section["method"] == method  # auto: by holdout size
    assert len(json.dumps(section)) < 40_000  # bounded: maps and edges are capped
    cal = Calibration.from_dict(section, classes)
    # The reference is the estimate on the holdout, from the ONNX model's probabilities as
    # the agent sees them; on the rows the map was fitted on it matches realized accuracy.
    holdout = result.holdout_frame
    proba = OnnxPredictor(result.onnx_bytes).predict(holdout).probabilities
    ref = estimate(cal, proba)
    assert section["reference"]["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
    acc = result.metrics["accuracy"]
    assert abs(ref["accuracy"] - acc) <= 3 * np.sqrt(acc * (1 - acc) / len(holdout))
    if classes == 2:
        assert section["reference"]["roc_auc"] == pytest.approx(ref["roc_auc"], abs=1e-6)
        assert ref["roc_auc"] == pytest.approx(result.metrics["roc_auc"], abs=0.03)


def test_regressors_and_calibration_none_carry_no_map_and_old_metadata_still_parses() -> None:
    frame = _frame(600, 2)
    off = train(frame, TrainConfig(target="y", algo="logreg", calibration="none"))
    assert off.meta.calibration is None
    assert "calibration" not in off.meta.to_dict()  # absent, so older bytes are unchanged
    reg = train(frame.assign(y=frame["a"] * 2.0), TrainConfig(target="y", algo="logreg"))
    assert reg.meta.calibration is None
    assert ModelMeta.from_json(off.meta.to_json()).calibration is None
    with pytest.raises(TrainConfigError, match="calibration"):
        TrainConfig(target="y", calibration="beta")


def test_isotonic_maps_are_thinned_to_the_bound_and_stay_close_to_sklearn() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(400_000)
    y = (rng.random(p.size) < p).astype(int)
    section = fit_calibration(np.stack([1 - p, p], axis=1), y, [0, 1], "isotonic")
    assert section is not None
    [m] = section["maps"]
    full = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    assert full.X_thresholds_.size > MAX_BREAKPOINTS  # the thinning was needed
    assert len(m["x"]) <= MAX_BREAKPOINTS
    grid = np.linspace(0, 1, 1001)
    thinned = np.interp(grid, m["x"], m["y"])
    assert np.mean(np.abs(thinned - full.predict(grid))) < 0.02


def test_a_holdout_missing_a_class_gets_no_map() -> None:
    p = np.tile([[0.2, 0.3, 0.5]], (50, 1))
    assert fit_calibration(p, np.array([0, 2] * 25), [0, 1, 2]) is None
