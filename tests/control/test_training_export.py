"""ONNX export of every algorithm x task, checked against scikit-learn and against an
agent-style reader; the parity gate on real numerical failures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from edgeloop_agent.wire.modelmeta import META_KEY, ModelMeta
from edgeloop_agent.wire.profile import ReferenceProfile
from edgeloop_control.training import (
    ML_OPSET,
    OPSET,
    OnnxPredictor,
    ParityError,
    TrainConfig,
    build_pipeline,
    check_parity,
    export_onnx,
    train,
)

ALGOS = ["logreg", "rf", "hgb"]
TASKS = ["binary", "multiclass", "regression"]
# Small models keep the suite fast; parity does not depend on model size.
SMALL = {"logreg": {}, "rf": {"n_estimators": 15}, "hgb": {"max_iter": 30}}


def make_frame(n: int, task: str, *, seed: int = 0, missing: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, n)
    count = rng.integers(0, 5, n)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    shape = rng.choice(["square", "circle"], n).astype(object)
    signal = x1 + 0.3 * x2 + 1.5 * (colour == "red") - (shape == "square") + 0.2 * count
    noisy = signal + rng.normal(0, 0.7, n)
    if task == "binary":
        y: np.ndarray = np.where(noisy > np.median(noisy), "yes", "no")
    elif task == "multiclass":
        y = np.digitize(noisy, np.quantile(noisy, [1 / 3, 2 / 3]))
    else:
        y = 2.0 * noisy + 5.0
    df = pd.DataFrame(
        {"x1": x1, "colour": colour, "x2": x2, "count": count, "shape": shape, "y": y}
    )
    if missing:
        df.loc[rng.random(n) < 0.1, "x1"] = np.nan
        df.loc[rng.random(n) < 0.1, "x2"] = np.nan
        df.loc[rng.random(n) < 0.1, "colour"] = None
    return df


def sklearn_input(result, frame: pd.DataFrame) -> pd.DataFrame:
    """What the pipeline was fitted on: float32-exact numbers, then strings, "" if missing."""
    cols = {
        c: frame[c].to_numpy(np.float64).astype(np.float32).astype(np.float64)
        for c in result.numeric_features
    }
    cols |= {
        c: frame[c].fillna("").astype(str).to_numpy(object) for c in result.categorical_features
    }
    return pd.DataFrame(cols)


def agent_style_predict(onnx_bytes: bytes, rows: list[dict]) -> list[np.ndarray]:
    """Feed the model the way the agent's contract describes: read the embedded meta,
    gather float32 / string inputs from request dicts in the listed feature order."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    meta = ModelMeta.from_json(sess.get_modelmeta().custom_metadata_map[META_KEY])
    feed = {}
    for spec in meta.inputs:
        if spec.dtype == "float32":
            feed[spec.name] = np.array(
                [[np.nan if r[f] is None else r[f] for f in spec.features] for r in rows],
                dtype=np.float32,
            )
        else:
            feed[spec.name] = np.array(
                [["" if r[f] is None else r[f] for f in spec.features] for r in rows],
                dtype=object,
            )
    return sess.run(list(meta.outputs.values()), feed)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("task", TASKS)
def test_every_algorithm_exports_with_parity(algo: str, task: str) -> None:
    df = make_frame(400, task)
    result = train(df, TrainConfig(target="y", algo=algo, params=SMALL[algo], seed=1))

    expected_task = "regression" if task == "regression" else "classification"
    assert result.task == expected_task
    meta = result.meta
    assert meta.task == expected_task
    assert meta.feature_names == ["x1", "colour", "x2", "count", "shape"]
    assert [(i.name, i.dtype, i.features) for i in meta.inputs] == [
        ("numeric", "float32", ("x1", "x2", "count")),
        ("categorical", "string", ("colour", "shape")),
    ]
    assert meta.handles_missing is True
    assert result.n_holdout == 80 and result.parity["n_rows"] == 80

    # Independent check of the gate: run both sides here and compare.
    holdout = result.holdout_frame
    assert holdout["x1"].isna().any() and holdout["colour"].isna().any()
    out = OnnxPredictor(result.onnx_bytes).predict(holdout)
    x = sklearn_input(result, holdout)
    if expected_task == "classification":
        assert meta.outputs == {"label": "label", "probabilities": "probabilities"}
        assert list(meta.classes) == list(result.pipeline.classes_)
        np.testing.assert_array_equal(out.label, result.pipeline.predict(x))
        diff = np.abs(out.probabilities - result.pipeline.predict_proba(x)).max()
        assert diff <= 1e-4
        assert result.parity["label_mismatches"] == 0
        assert result.parity["max_prob_diff"] == pytest.approx(diff, abs=1e-12)
    else:
        assert meta.outputs == {"value": "variable"} and meta.classes is None
        expected = result.pipeline.predict(x)
        rel = np.abs(out.value - expected) / np.maximum(np.abs(expected), np.std(expected))
        assert rel.max() <= 1e-4
        assert result.parity["max_rel_diff"] == pytest.approx(rel.max(), rel=1e-6, abs=1e-12)
    assert result.parity["passed"] is True


def test_agent_style_inputs_unknown_categories_and_missing_values() -> None:
    df = make_frame(300, "binary")
    result = train(df, TrainConfig(target="y", algo="hgb", params=SMALL["hgb"]))
    rows = [
        {"x1": 0.5, "colour": "red", "x2": 3.0, "count": 2, "shape": "circle"},
        # A category never seen in training and a missing numeric value: no crash,
        # the one-hot block is all zeros and the value takes the learnt NaN branch.
        {"x1": None, "colour": "purple", "x2": 7.5, "count": 0, "shape": "square"},
        {"x1": -1.0, "colour": None, "x2": None, "count": 4, "shape": "triangle"},
    ]
    label, proba = agent_style_predict(result.onnx_bytes, rows)
    frame = pd.DataFrame(rows)
    ours = OnnxPredictor(result.onnx_bytes).predict(frame)
    np.testing.assert_array_equal(label, ours.label)
    np.testing.assert_allclose(proba, ours.probabilities, rtol=0, atol=0)
    sk = result.pipeline.predict_proba(sklearn_input(result, frame))
    np.testing.assert_allclose(proba, sk, atol=1e-4)
    assert set(label) <= {"no", "yes"}


def test_onnx_file_metadata_and_profile() -> None:
    df = make_frame(300, "multiclass")
    result = train(df, TrainConfig(target="y", algo="rf", params=SMALL["rf"]))
    model = onnx.load_from_string(result.onnx_bytes)
    assert model.producer_name == "edgeloop-control"
    assert model.graph.name == "edgeloop_model"
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) == {META_KEY}
    assert ModelMeta.from_json(props[META_KEY]) == result.meta
    imports = {d.domain or "ai.onnx": d.version for d in model.opset_import}
    assert imports["ai.onnx"] <= OPSET and imports["ai.onnx.ml"] <= ML_OPSET
    assert imports == result.opset

    extra = result.meta.extra
    assert extra["data_hash"] == result.data_hash
    assert extra["target"] == "y" and extra["algo"] == "rf"
    assert extra["params"]["n_estimators"] == 15
    json.dumps(extra)

    # Drift profile: numeric features only, plus the model output (top probability).
    profile = ReferenceProfile.from_dict(result.meta.profile)
    assert profile.feature_names == ["x1", "x2", "count"]
    assert profile.output is not None
    assert profile.output.n == result.n_holdout
    x1 = profile.features[0]
    assert x1.n + x1.n_missing == result.n_holdout
    assert x1.n_missing == int(result.holdout_frame["x1"].isna().sum())


def test_numeric_only_and_categorical_only_models() -> None:
    df = make_frame(300, "regression", missing=False)
    numeric = train(df, TrainConfig(target="y", algo="logreg", features=["x1", "x2"]))
    assert [i.name for i in numeric.meta.inputs] == ["numeric"]
    assert numeric.parity["passed"]

    categorical = train(
        df, TrainConfig(target="y", algo="rf", features=["colour", "shape"], params=SMALL["rf"])
    )
    assert [i.name for i in categorical.meta.inputs] == ["categorical"]
    assert categorical.meta.profile is None  # nothing numeric to profile
    assert categorical.parity["passed"]
    # 4 colours (missing ones are "") x 2 shapes: the model can only tell 8 cells apart.
    values = OnnxPredictor(categorical.onnx_bytes).predict(categorical.holdout_frame).value
    assert 1 < len(np.unique(values)) <= 8


def _tamper(onnx_bytes: bytes, op_type: str, attribute: str, factor: float) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    node = next(n for n in model.graph.node if n.op_type == op_type)
    attr = next(a for a in node.attribute if a.name == attribute)
    attr.floats[0] = attr.floats[0] * factor + 0.05
    return model.SerializeToString()


def test_tampered_coefficients_fail_parity() -> None:
    df = make_frame(300, "binary", missing=False)
    result = train(df, TrainConfig(target="y", algo="logreg"))
    tampered = _tamper(result.onnx_bytes, "LinearClassifier", "coefficients", 1.5)

    with pytest.raises(ParityError) as err:
        check_parity(result.pipeline, tampered, result.holdout_frame)
    assert err.value.report["max_prob_diff"] > 1e-4
    assert err.value.report["passed"] is False
    assert "max |prob diff|" in str(err.value)

    report = check_parity(result.pipeline, tampered, result.holdout_frame, raise_on_failure=False)
    assert not report.passed and report.n_rows == result.n_holdout
    # The untampered file still passes on the same rows.
    assert check_parity(result.pipeline, result.onnx_bytes, result.holdout_frame).passed


def test_tampered_tree_leaf_fails_parity() -> None:
    df = make_frame(300, "regression", missing=False)
    result = train(df, TrainConfig(target="y", algo="rf", params={"n_estimators": 3}))
    model = onnx.load_from_string(result.onnx_bytes)
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
    weights = next(a for a in node.attribute if a.name == "target_weights")
    for i in range(len(weights.floats)):
        weights.floats[i] *= 1.01  # a 1% shift, far beyond the 1e-4 tolerance
    with pytest.raises(ParityError) as err:
        check_parity(result.pipeline, model.SerializeToString(), result.holdout_frame)
    assert err.value.report["max_rel_diff"] > 1e-3


def test_float32_precision_edge_is_refused() -> None:
    # Epoch seconds as a raw feature: float32 resolves only 128 s near 1.7e9, and the
    # ONNX scaler subtracts the float32-rounded mean. scikit-learn in float64 and
    # onnxruntime in float32 then disagree far beyond 1e-4: train() must refuse.
    rng = np.random.default_rng(3)
    n = 400
    seconds = 1.7e9 + np.sort(rng.uniform(0, 3000, n)).round()
    df = pd.DataFrame({"epoch_s": seconds, "x": rng.normal(size=n)})
    df["y"] = 0.01 * (df["epoch_s"] - 1.7e9) + df["x"] + rng.normal(0, 0.1, n)
    with pytest.raises(ParityError) as err:
        train(df, TrainConfig(target="y", algo="logreg"))
    assert err.value.report["max_rel_diff"] > 1e-4
    assert "epoch_s" in str(err.value)  # the hint names the culprit

    # The documented fix (a small-magnitude offset) passes the same gate.
    df["epoch_s"] = df["epoch_s"] - 1.7e9
    assert train(df, TrainConfig(target="y", algo="logreg")).parity["passed"]


def test_pandas_column_types_map_to_float_and_string_inputs() -> None:
    rng = np.random.default_rng(4)
    n = 300
    df = pd.DataFrame(
        {
            "flag": rng.random(n) < 0.5,
            "visits": pd.array(rng.integers(0, 9, n), dtype="Int64"),
            "tier": pd.Categorical(rng.choice(["gold", "silver", "bronze"], n)),
            "zone": pd.Series(rng.choice(["n", "s"], n), dtype="string"),
            "code": pd.Categorical(rng.choice([10, 20, 30], n)),  # integer categories
        }
    )
    df.loc[rng.random(n) < 0.1, "visits"] = pd.NA
    df["y"] = (df["flag"].astype(float) + (df["tier"] == "gold") + rng.normal(0, 0.5, n)) > 1
    result = train(df, TrainConfig(target="y", algo="rf", params=SMALL["rf"]))
    assert result.classes == [0, 1]  # a boolean target becomes 0/1
    assert result.numeric_features == ["flag", "visits"]
    assert result.categorical_features == ["tier", "zone", "code"]
    assert result.parity["passed"]
    # The agent sends integer category codes as text; both spellings score alike.
    as_text = result.holdout_frame.assign(code=result.holdout_frame["code"].astype(str))
    predictor = OnnxPredictor(result.onnx_bytes)
    np.testing.assert_array_equal(
        predictor.predict(as_text).probabilities,
        predictor.predict(result.holdout_frame).probabilities,
    )


def test_hgb_thresholds_are_exact_on_grid_valued_features() -> None:
    # Prices on a cent grid; the older (training) rows only ever saw even cents, so
    # HGB splits fall on odd cents, which are exactly what the newer rows hold.
    rng = np.random.default_rng(0)
    n = 1500
    cents = rng.integers(100, 300, n)
    cut = int(n * 0.8)
    cents[:cut] = cents[:cut] // 2 * 2
    cents[cut:] = cents[cut:] // 2 * 2 + 1
    df = pd.DataFrame({"ts": np.arange(n), "price": cents / 100})
    df["y"] = np.sin(df["price"] * 7) + rng.normal(0, 0.1, n)
    config = TrainConfig(target="y", algo="hgb", timestamp="ts", params={"max_iter": 40})
    result = train(df, config)
    assert result.parity["passed"] and result.parity["max_rel_diff"] <= 1e-4

    # The same model without snapping its thresholds to float32: scikit-learn predicts
    # the same on float32 inputs, but skl2onnx's nearest rounding breaks parity.
    plain = build_pipeline("hgb", "regression", 1, 0, seed=0, params={"max_iter": 40})
    older = df.iloc[:cut]
    plain.fit(older[["price"]].astype(np.float32).astype(np.float64), older["y"])
    holdout = result.holdout_frame[["price"]].astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(plain.predict(holdout), result.pipeline.predict(holdout))
    unsnapped = export_onnx(plain, ["price"])
    with pytest.raises(ParityError):
        check_parity(plain, unsnapped, result.holdout_frame)
