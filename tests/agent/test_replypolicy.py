"""The reply policy: which topics an agent may publish a reply on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.replypolicy import INVALID_REPLY_TO, REPLY_TO_REFUSED, ReplyPolicy
from edgeloop_agent.wire.names import topic_problem


@pytest.fixture
def policy() -> ReplyPolicy:
    return ReplyPolicy(prefix="edgeloop", device="d1")


@pytest.mark.parametrize(
    "topic",
    [
        "edgeloop/d1/predictions",
        "edgeloop/d1/errors",
        "edgeloop/d1/replies/app",
        "edgeloop/d1/replies/app/r/1",
        "edgeloop/d1/replies",  # MQTT: "a/#" matches "a" too
        "replies/x",
        "legacy/replies",
        "x",
        "edgeloopx/d1/desired",  # another prefix, not this product's tree
        "Edgeloop/d1/desired",  # topics are case-sensitive
        "caf\u00e9/\U0001f600",
    ],
)
def test_default_allows_own_reply_subtree_and_ordinary_topics(policy, topic):
    assert policy.problem(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        *(
            f"edgeloop/{d}/{leaf}"
            for d in ("d1", "d2")
            for leaf in (
                "predict",
                "feedback",
                "desired",
                "status",
                "telemetry",
                "samples",
                "labels",
                "events",
            )
        ),
        "edgeloop/d2/predictions",
        "edgeloop/d2/replies/app",
        "edgeloop/models/m/v2",
        "edgeloop/models",
        "edgeloop",
        "edgeloop/",
        "edgeloop/d1",
        "$foo/bar",
        "$SYS/broker/x",
        "$share/g/t",
    ],
)
def test_default_refuses_the_products_own_topics(policy, topic):
    verdict = policy.problem(topic)
    assert verdict is not None and verdict[0] == REPLY_TO_REFUSED, verdict


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("a\x01", "control character U+0001"),
        ("a\x07", "control character U+0007"),
        ("a\x00b", "U+0000"),
        ("a\ud800", "surrogate"),
        ("a/+", "wildcards"),
        ("a/#", "wildcards"),
        ("a\ufffe", "non-character"),
        ("x" * 2000, "limit"),
        ("", "empty"),
    ],
)
def test_malformed_topics_are_invalid(policy, topic, needle):
    verdict = policy.problem(topic)
    assert verdict is not None and verdict[0] == INVALID_REPLY_TO
    assert needle in verdict[1]


def test_verdict_cache_is_bounded():
    policy = ReplyPolicy(prefix="edgeloop", device="d1", cache_size=8)
    for i in range(100):
        assert policy.problem(f"t/{i}") is None
    assert len(policy._cache) == 8
    assert policy.problem("edgeloop/d1/desired") is not None
    assert policy.problem("edgeloop/d1/desired") is not None  # cached verdict, same answer


def test_operator_filters_and_outside_prefix_switch():
    policy = ReplyPolicy(
        prefix="site/el",
        device="d1",
        allowed=["{prefix}/{device}/replies/+", "{prefix}/shared/#"],
        outside_prefix=False,
    )
    assert policy.problem("site/el/d1/replies/a") is None
    assert policy.problem("site/el/shared/x/y") is None
    assert policy.problem("site/el/d1/replies/a/b") is not None
    assert policy.problem("site/el/d1/predictions") is not None
    assert policy.problem("apps/x")[0] == REPLY_TO_REFUSED
    # Product topics stay refused even when a filter covers them.
    wide = ReplyPolicy(prefix="edgeloop", device="d1", allowed=["{prefix}/#"])
    assert wide.problem("edgeloop/d2/replies/x") is None
    for topic in ("edgeloop/d1/desired", "edgeloop/d2/predict", "edgeloop/models/m/v1"):
        assert wide.problem(topic)[0] == REPLY_TO_REFUSED


@given(st.text(max_size=60))
def test_never_allows_what_the_broker_would_refuse_or_a_product_topic(topic):
    policy = ReplyPolicy(prefix="edgeloop", device="d1")
    verdict = policy.problem(topic)
    if verdict is None:
        assert topic_problem(topic) is None
        assert not topic.startswith("$")
        levels = topic.split("/")
        if levels[0] == "edgeloop":
            assert levels[1:2] == ["d1"] and (
                levels[2:] in (["predictions"], ["errors"]) or levels[2:3] == ["replies"]
            )


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"reply_topics": ["{prefix}/{device}/a#"]}, "'#' must be a whole level"),
        ({"reply_topics": ["{prefix}/{device}/a+"]}, "'+' must be a whole level"),
        ({"reply_topics": ["{prefix}/#/x"]}, "'#' must be a whole level"),
        ({"reply_topics": ["elsewhere/#"]}, "must lie under the topic prefix"),
        ({"reply_topics": ["{prefix}/{other}"]}, "placeholders"),
        ({"reply_topics": ["{prefix}/\x01"]}, "control character"),
        ({"reply_topics": [""]}, "non-empty"),
        ({"reply_topics": "edgeloop/#"}, "must be a list"),
        ({"reply_outside_prefix": "yes"}, "true or false"),
    ],
)
def test_bad_policy_settings_fail_at_start_with_one_clear_error(settings, needle):
    with pytest.raises(ConfigError, match="reply_"):
        try:
            AgentConfig.from_mapping({"device_id": "d1", **settings}).validate()
        except ConfigError as exc:
            assert needle in str(exc)
            raise


def test_default_config_policy():
    policy = AgentConfig(device_id="d1").validate().reply_policy()
    assert policy.allowed == [
        "edgeloop/d1/predictions",
        "edgeloop/d1/errors",
        "edgeloop/d1/replies/#",
    ]
    assert policy.outside_prefix is True
