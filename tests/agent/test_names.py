"""The shared name rules: what Mosquitto would refuse never reaches paho."""

from __future__ import annotations

import pytest

from edgeloop_agent.wire.names import (
    InvalidName,
    check_device_id,
    check_model_name,
    check_topic,
    topic_problem,
)


@pytest.mark.parametrize(
    "topic",
    [
        "a\x01b",
        "a\x07",
        "x\x00",
        "bad\ud800",
        "del\x7f",
        "c1\x85",
        "nc\ufffe",
        "nc\ufdd0",
        "a/+/b",
        "a/#",
        "",
        "x" * 1025,
        "é" * 513,  # 1,026 bytes in UTF-8
    ],
)
def test_topics_mosquitto_would_refuse_are_refused(topic: str) -> None:
    assert topic_problem(topic) is not None
    with pytest.raises(InvalidName):
        check_topic("reply_to", topic)


@pytest.mark.parametrize("topic", ["replies/app", "a/b/c", "é/ü", "x" * 1024, "/", "a//b"])
def test_ordinary_topics_pass(topic: str) -> None:
    assert check_topic("reply_to", topic) == topic


def test_non_string_topic() -> None:
    assert topic_problem(5) == "must be a string, got int"


@pytest.mark.parametrize(
    "value",
    ["d\n", "d\x01", "..", ".", "$SYS", "", "x" * 129, "a/b", "a+b", "models", "MODELS", " d"],
)
def test_bad_device_ids(value: str) -> None:
    with pytest.raises(InvalidName, match="device id"):
        check_device_id(value)


@pytest.mark.parametrize("value", ["d1", "pump-1", "loan_2", "a.b", "x" * 128])
def test_good_device_ids(value: str) -> None:
    assert check_device_id(value) == value


def test_model_names_match_whole_string() -> None:
    with pytest.raises(InvalidName, match="letters, digits"):
        check_model_name("model name", "m\n")
    assert check_model_name("model name", "models") == "models"
