"""A request that misspells a feature is told both names: the missing one and the unknown
one it sent, with the close match."""

from __future__ import annotations

import pytest

from edgeloop_agent.model import OnnxModel
from edgeloop_agent.protocol import Code, RequestError
from tests.integration.models import sensor_model


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    art = sensor_model()
    return OnnxModel(art.data, name=art.name, version=art.version, sha256=art.sha256)


def test_a_misspelled_feature_names_the_unknown_one_and_the_close_match(model: OnnxModel) -> None:
    row = {n: 1.0 for n in model.feature_names if n != "vibration_mm_s"}
    row["vibration"] = 1.0
    with pytest.raises(RequestError) as err:
        model.validate_row(row)
    assert err.value.code == Code.MISSING_FEATURE
    assert err.value.message == (
        "missing features: vibration_mm_s; unknown features: vibration "
        "(did you mean vibration_mm_s?)"
    )


def test_missing_without_unknown_says_only_missing(model: OnnxModel) -> None:
    row = {n: 1.0 for n in model.feature_names[1:]}
    with pytest.raises(RequestError) as err:
        model.validate_row(row)
    assert err.value.message == f"missing features: {model.feature_names[0]}"


def test_an_unrelated_unknown_name_gets_no_suggestion(model: OnnxModel) -> None:
    row = {n: 1.0 for n in model.feature_names[1:]}
    row["zzz"] = 0.0
    with pytest.raises(RequestError) as err:
        model.validate_row(row)
    assert err.value.message.endswith("; unknown features: zzz")
