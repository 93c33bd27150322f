"""Each feature type end to end: a model trained by the product on a frame with bool,
int, float and categorical columns, served by a real agent over a real Mosquitto.

The contract (docs/protocol.md, "How each feature type is sent"): numbers as JSON
numbers, bool features as JSON true/false (or 0/1), categories as strings; every
refusal quotes the offending value as JSON (``got true``, never ``got True``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.training import OnnxPredictor, TrainConfig, train
from tests.integration.models import Artifact
from tests.integration.test_agent_e2e import publish_deployment, request, start_agent, wait_status
from tests.mqtt_helpers import Probe

DEVICE = "pump-1"
FEATURES = ["promo", "age", "income", "band"]


def loan_frame(n: int = 600, seed: int = 3) -> pd.DataFrame:
    """A loan book: a boolean column that matters, an int, a float and string bands."""
    rng = np.random.default_rng(seed)
    promo = rng.random(n) < 0.4
    age = rng.integers(18, 80, n)
    income = rng.normal(40_000, 12_000, n)
    band = rng.choice(["A", "B", "C"], n)
    logit = 2.5 * promo - 0.03 * (age - 45) + (income - 40_000) / 20_000 + (band == "A")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"promo": promo, "age": age, "income": income, "band": band, "y": y})


@functools.cache
def loan_model() -> tuple[Artifact, bytes]:
    result = train(loan_frame(), TrainConfig(target="y", algo="logreg", seed=0, split="random"))
    return Artifact("loan", "v1", result.onnx_bytes, FEATURES), result.onnx_bytes


@pytest.fixture
def loan_serving(broker: PrivateBroker, probe: Probe, agents, tmp_path: Path):
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("replies/#")
    start_agent(agents, broker, tmp_path)
    model, onnx_bytes = loan_model()
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    return onnx_bytes


def test_training_marks_the_boolean_column_in_the_model_metadata():
    _, onnx_bytes = loan_model()
    meta = OnnxPredictor(onnx_bytes).meta
    assert {f.name: f.dtype for f in meta.features} == {
        "promo": "bool",
        "age": "float",
        "income": "float",
        "band": "string",
    }
    # The graph still takes the flag as a number in the float32 input.
    assert [(i.dtype, set(i.features)) for i in meta.inputs] == [
        ("float32", {"promo", "age", "income"}),
        ("string", {"band"}),
    ]


def test_json_booleans_are_served_exactly_as_training_converted_them(loan_serving, probe):
    onnx_bytes = loan_serving
    rows = [
        {"promo": True, "age": 30, "income": 52_000.5, "band": "A"},
        {"promo": False, "age": 61, "income": 21_000.0, "band": "C"},
    ]
    # What the control node's own ONNX evaluation gives on a bool column.
    expected = OnnxPredictor(onnx_bytes).predict(pd.DataFrame(rows)).probabilities
    assert expected is not None
    reply = request(probe, {"id": "batch", "rows": rows})
    got = [list(p["probabilities"].values()) for p in reply["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got[0] != got[1]
    # The list form, and 1/0 from a client that keeps flags as numbers, are the same.
    as_list = request(probe, {"id": "list", "features": [True, 30, 52_000.5, "A"]})
    as_number = request(probe, {"id": "one", "features": {**rows[0], "promo": 1}})
    assert (
        as_list["probabilities"]
        == as_number["probabilities"]
        == reply["predictions"][0]["probabilities"]
    )


@pytest.mark.parametrize(
    ("features", "code", "message"),
    [
        # A boolean is not a number: a numeric feature refuses it (a flag in a number's
        # slot is most often a list-form row in the wrong order).
        ({"age": True}, "non_numeric", 'feature "age" must be a number, got true'),
        ({"income": "abc"}, "non_numeric", 'feature "income" must be a number, got "abc"'),
        ({"income": [1, 2]}, "non_numeric", 'feature "income" must be a number, got [1, 2]'),
        (
            {"income": float("inf")},
            "non_finite",
            'feature "income" is Infinity, which is not finite',
        ),
        (
            {"promo": "yes"},
            "non_boolean",
            'feature "promo" must be true or false (or 0/1), got "yes"',
        ),
        ({"promo": 2}, "non_boolean", 'feature "promo" must be true or false (or 0/1), got 2'),
        ({"band": 3}, "non_string", 'feature "band" must be a string (a category), got 3'),
        ({"band": False}, "non_string", 'feature "band" must be a string (a category), got false'),
    ],
)
def test_refusals_quote_the_value_as_json(loan_serving, probe, features, code, message):
    good = {"promo": True, "age": 30, "income": 52_000.5, "band": "A"}
    reply = request(probe, {"id": "bad", "features": {**good, **features}})
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"].startswith(message), reply
    for python in ("True", "False", "None", "'"):
        assert python not in reply["error"]["message"], reply


def test_a_misspelt_feature_is_named_as_unknown(loan_serving, probe):
    row = {"promo": True, "agee": 30, "income": 1.0, "band": "A"}
    reply = request(probe, {"id": "typo", "features": row})
    assert reply["error"] == {
        "code": "missing_feature",
        "message": "missing features: age; unknown features: agee (did you mean age?)",
    }


def test_captured_samples_carry_the_boolean_as_json(broker, probe, agents, tmp_path):
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe(f"edgeloop/{DEVICE}/samples")
    probe.subscribe("replies/#")
    start_agent(agents, broker, tmp_path, extra=["--capture-rate", "1"])
    model, _ = loan_model()
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    request(probe, {"id": "cap", "features": {"promo": 1, "age": 30, "income": 2.5, "band": "B"}})
    msg = probe.next(30, topic=f"edgeloop/{DEVICE}/samples")
    record = json.loads(msg.payload)["payload"]
    assert record["features"] == {"promo": True, "age": 30, "income": 2.5, "band": "B"}
    assert record["features"]["promo"] is True  # not 1: the store types the column bool
