"""OIP v2 tensors <-> edgeloop rows: decoding, encoding and the error codes (oip.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop_agent import oip
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.protocol import Code, RequestError
from tests.integration.models import sensor_model, strict_model


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def parse(doc: Any, **kw: Any) -> oip.InferRequest:
    return oip.parse_infer(
        doc if isinstance(doc, bytes) else body(doc),
        max_bytes=kw.pop("max_bytes", 65536),
        max_rows=kw.pop("max_rows", 16),
        **kw,
    )


def code_of(doc: Any, **kw: Any) -> str:
    with pytest.raises(RequestError) as info:
        parse(doc, **kw)
    return info.value.code


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.fixture(scope="module")
def strict() -> OnnxModel:
    art = strict_model("v1")
    return OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)


def test_inputs_by_name_become_one_row_per_batch_entry():
    req = parse(
        {
            "id": "r1",
            "inputs": [
                tensor("a", [2], "FP32", [1.0, 2.0]),
                tensor("b", [2, 1], "INT64", [[3], [4]]),
                tensor("c", [2], "BOOL", [True, False]),
                tensor("s", [2], "BYTES", ["x", "y"]),
            ],
        }
    )
    assert req.predict.id == "r1" and req.predict.batch and req.outputs is None
    assert req.predict.rows == [
        {"a": 1.0, "b": 3, "c": 1.0, "s": "x"},
        {"a": 2.0, "b": 4, "c": 0.0, "s": "y"},
    ]


def test_one_matrix_input_holds_every_feature_in_model_order(strict: OnnxModel):
    req = parse({"inputs": [tensor("features", [2, 3], "FP32", [[1, 2, 3], [4, 5, 6]])]})
    assert req.predict.rows == [[1, 2, 3], [4, 5, 6]]
    # The model's own row check takes lists in model order, as on MQTT.
    assert strict.validate_row(req.predict.rows[1]) == [4, 5, 6]
    assert req.predict.id.startswith("http-")


def test_routing_key_from_parameters_before_the_header():
    doc = {"inputs": [tensor("a", [1], "FP32", [1])]}
    assert parse(doc, header_key="h").predict.key == "h"
    assert parse({**doc, "parameters": {"key": "p"}}, header_key="h").predict.key == "p"
    assert code_of({**doc, "parameters": {"key": 5}}) == Code.INVALID_KEY


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (b"{", Code.INVALID_JSON),
        (b"[]", Code.NOT_AN_OBJECT),
        ('{"inputs": []}'.encode("utf-16"), Code.INVALID_ENCODING),
        (b'{"inputs":' + b"[" * 100 + b"]" * 100 + b"}", Code.TOO_DEEP),
        ({}, Code.MISSING_FEATURES),
        ({"inputs": {}}, Code.INVALID_FEATURES),
        ({"id": 7, "inputs": []}, Code.INVALID_ID),
        ({"inputs": [tensor("a", [2], "FP32", [1])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1, 2, 1], "FP32", [1, 2])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1, 2], "FP32", [1, 2])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [-1], "FP32", [])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [0], "FP32", [])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1], "FP8", [1])]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1], "FP32", 1)]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1], "FP32", [{"x": 1}])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [2], "FP32", [[1], {"x": 1}])]}, Code.INVALID_FEATURES),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}, Code.MISSING_FEATURES),
        ({"inputs": [tensor("a", [1], "FP32", ["1"])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [1], "FP32", [True])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [1], "INT32", [1.5])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [1], "UINT8", [-1])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [1], "BOOL", [1])]}, Code.NON_NUMERIC),
        ({"inputs": [tensor("a", [1], "BYTES", [1])]}, Code.NON_STRING),
        ({"inputs": [tensor("a", [20], "FP32", [1] * 20)]}, Code.BATCH_TOO_LARGE),
        (
            {"inputs": [tensor("a", [1], "FP32", [1]), tensor("a", [1], "FP32", [1])]},
            Code.INVALID_FEATURES,
        ),
        (
            {"inputs": [tensor("a", [1], "FP32", [1]), tensor("b", [2], "FP32", [1, 2])]},
            Code.INVALID_FEATURES,
        ),
        (
            {
                "inputs": [
                    tensor("features", [1, 2], "FP32", [1, 2]),
                    tensor("b", [1], "FP32", [1]),
                ]
            },
            Code.INVALID_FEATURES,
        ),
        ({"inputs": [tensor("a", [1], "FP32", [1])], "outputs": ["label"]}, Code.INVALID_FEATURES),
        ({"inputs": [tensor("a", [1], "FP32", [1])], "parameters": []}, Code.INVALID_FEATURES),
    ],
)
def test_malformed_requests_get_the_mqtt_codes(doc: Any, code: str):
    assert code_of(doc) == code


def test_oversized_body_is_refused_before_parsing():
    assert code_of(b"{" + b" " * 100 + b"}", max_bytes=64) == Code.PAYLOAD_TOO_LARGE


def test_request_id_travels_with_errors_after_it_is_read():
    with pytest.raises(RequestError) as info:
        parse({"id": "mine", "inputs": [tensor("a", [1], "FP32", ["x"])]})
    assert info.value.request_id == "mine"


def test_values_left_to_the_model_get_the_model_codes(strict: OnnxModel):
    # NaN (legal in Python's JSON) and float32 overflow pass the tensor layer and are
    # refused by the model's row check with the same codes as an MQTT request.
    req = parse(
        b'{"inputs":[{"name":"a","shape":[2],"datatype":"FP64","data":[NaN,1e300]},'
        b'{"name":"b","shape":[2],"datatype":"FP64","data":[1,1]},'
        b'{"name":"c","shape":[2],"datatype":"FP64","data":[1,1]}]}'
    )
    for row in req.predict.rows:
        with pytest.raises(RequestError) as info:
            strict.validate_row(row)
        assert info.value.code == Code.NON_FINITE


def test_infer_response_for_a_classifier_and_output_selection():
    reply = {
        "id": "r",
        "model": "m",
        "version": "v1",
        "variant": "m@v1",
        "predictions": [
            {"prediction": 1, "probabilities": {"0": 0.25, "1": 0.75}},
            {"prediction": 0, "probabilities": {"0": 0.5, "1": 0.5}},
        ],
        "ms": 0.5,
    }
    doc = oip.infer_response(reply, None)
    assert doc["model_name"] == "m" and doc["model_version"] == "v1" and doc["id"] == "r"
    assert doc["parameters"] == {"variant": "m@v1", "ms": 0.5}
    assert doc["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [2, 2],
            "data": [0.25, 0.75, 0.5, 0.5],
        },
    ]
    only = oip.infer_response(reply, ["probabilities"])
    assert [o["name"] for o in only["outputs"]] == ["probabilities"]
    strs = {**reply, "predictions": [{"prediction": "a", "probabilities": {"a": 1.0}}]}
    assert oip.infer_response(strs, None)["outputs"][0]["datatype"] == "BYTES"


def test_infer_response_for_a_regressor():
    reply = {"id": "r", "model": "m", "version": "v", "variant": "m@v", "ms": 1.0}
    reply["predictions"] = [{"prediction": 2.5}]
    assert oip.infer_response(reply, None)["outputs"] == [
        {"name": "value", "datatype": "FP64", "shape": [1], "data": [2.5]}
    ]


def test_metadata_and_output_names_of_a_real_model():
    art = sensor_model("v1")
    model = OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)
    meta = oip.model_metadata("sensor", [model])
    assert meta["versions"] == ["v1"] and meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == art.features
    assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}
    oip.check_outputs(["label"], model)
    with pytest.raises(RequestError) as info:
        oip.check_outputs(["value"], model)
    assert info.value.code == oip.UNKNOWN_OUTPUT


def test_error_form_and_statuses():
    assert json.loads(oip.error_body("non_finite", "x is NaN")) == {"error": "non_finite: x is NaN"}
    assert oip.http_status(Code.NON_FINITE) == 400
    assert oip.http_status(Code.PAYLOAD_TOO_LARGE) == 413
    assert oip.http_status(Code.NO_MODEL) == 503
    assert oip.http_status("unknown_model") == 404
    assert oip.http_status(Code.INFERENCE_FAILED) == 500


def test_http_listen_setting_is_checked_at_start():
    from edgeloop_agent.config import AgentConfig, ConfigError

    AgentConfig(device_id="d", http_listen="127.0.0.1:8000").validate()
    with pytest.raises(ConfigError, match="http_listen"):
        AgentConfig(device_id="d", http_listen="8000").validate()
    with pytest.raises(ConfigError, match="http_listen"):
        AgentConfig.from_mapping({"device_id": "d", "http_listen": 8000})


# -- property: whatever the body, a RequestError or rows the model can judge -------------


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
_data = st.recursive(
    st.lists(_scalars, max_size=6), lambda kids: st.lists(kids, max_size=3), max_leaves=12
)
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["a", "b", "c", "features", "zz"]), _scalars),
        "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=3), _scalars),
        "datatype": st.one_of(st.sampled_from(sorted(oip.DATATYPES)), _scalars),
        "data": st.one_of(_data, _scalars),
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=3), _scalars),
        "inputs": st.one_of(st.lists(_tensor, max_size=4), _scalars),
        "parameters": st.one_of(st.fixed_dictionaries({}, optional={"key": _scalars}), _scalars),
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)})), _scalars
        ),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_body)
def test_any_body_ends_in_rows_or_a_request_error(doc: dict[str, Any], strict: OnnxModel):
    try:
        raw = json.dumps(doc).encode()  # NaN/Infinity as Python's JSON writes them
        req = oip.parse_infer(raw, max_bytes=65536, max_rows=16)
        for row in req.predict.rows:
            strict.validate_row(row)
    except RequestError as exc:
        assert exc.code and exc.message
