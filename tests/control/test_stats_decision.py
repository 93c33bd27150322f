"""promote / rollback / continue from the always-valid p-value, direction and guardrails."""

from __future__ import annotations

import math

import pytest

from edgeloop_control.stats import Decision, Guardrail, decide

ENOUGH = {"n_champion": 5_000, "n_challenger": 5_000, "min_samples_per_arm": 100}


def test_failed_guardrails_roll_back_before_anything_else() -> None:
    guardrails = [
        Guardrail("error_rate", True, "0.1% <= 1%"),
        Guardrail("latency_p99", False, "challenger p99 48 ms > limit 30 ms"),
        Guardrail("drift", False, "PSI 0.31 > 0.2 on feature temp"),
    ]
    # Even a significantly better challenger, and even before any label arrives.
    for kwargs in (
        {"p_value": 1e-9, "effect": 0.05, **ENOUGH},
        {"p_value": 1.0, "effect": math.nan, "n_champion": 0, "n_challenger": 0},
    ):
        d = decide(**kwargs, guardrails=guardrails)
        assert d.action == "rollback"
        assert "latency_p99 (challenger p99 48 ms > limit 30 ms)" in d.reason
        assert "drift (PSI 0.31 > 0.2 on feature temp)" in d.reason
        assert "error_rate" not in d.reason


def test_no_labels_means_continue_and_says_so() -> None:
    d = decide(p_value=1.0, effect=math.nan, n_champion=0, n_challenger=0)
    assert d.action == "continue"
    assert "no labelled outcomes yet for the champion or the challenger" in d.reason
    assert "labels" in d.reason
    one = decide(p_value=1.0, effect=math.nan, n_champion=700, n_challenger=0)
    assert one.action == "continue" and "for the challenger (" in one.reason


def test_too_few_samples_per_arm_means_continue() -> None:
    d = decide(p_value=1e-6, effect=0.1, n_champion=5_000, n_challenger=99, min_samples_per_arm=100)
    assert d.action == "continue"
    assert "at least 100" in d.reason and "challenger n=99" in d.reason


@pytest.mark.parametrize(
    ("effect", "higher_is_better", "action"),
    [(0.02, True, "promote"), (-0.02, True, "rollback"),  # accuracy
     (-0.1, False, "promote"), (0.1, False, "rollback")],  # loss
)  # fmt: skip
def test_significant_difference_follows_the_configured_direction(
    effect: float, higher_is_better: bool, action: str
) -> None:
    d = decide(p_value=0.001, effect=effect, higher_is_better=higher_is_better, **ENOUGH)
    assert d.action == action
    assert ("better" if action == "promote" else "worse") in d.reason
    assert "p=0.001 <= alpha=0.05" in d.reason


def test_p_value_at_alpha_decides_and_above_continues() -> None:
    assert decide(p_value=0.05, effect=0.01, **ENOUGH).action == "promote"
    d = decide(p_value=0.0501, effect=0.01, interval=(-0.001, 0.03), **ENOUGH)
    assert d.action == "continue"
    assert "no significant difference" in d.reason and "[-0.001, 0.03]" in d.reason
    assert decide(p_value=0.01, effect=0.01, alpha=0.005, **ENOUGH).action == "continue"


def test_empty_confidence_sequence_needs_review() -> None:
    d = decide(p_value=1e-8, effect=-0.2, interval=(0.3, 0.1), metric="loss", **ENOUGH)
    assert d.action == "continue" and "loss difference has not been stable" in d.reason


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"p_value": 1.5}, ValueError, r"p_value must be in \[0, 1\], got 1\.5"),
        ({"p_value": math.nan}, ValueError, "p_value must be a finite number"),
        ({"effect": math.inf}, ValueError, "effect must be finite or NaN"),
        ({"effect": "up"}, TypeError, "effect must be a number"),
        ({"n_champion": -5}, ValueError, "n_champion"),
        ({"alpha": 5}, ValueError, "alpha must be strictly between 0 and 1"),
        ({"higher_is_better": "yes"}, TypeError, "higher_is_better"),
        ({"guardrails": Guardrail("x", True)}, TypeError, "guardrails must be a sequence"),
        ({"guardrails": [("drift", False)]}, TypeError, r"guardrails\[0\] must be a Guardrail"),
        ({"interval": (0.1,)}, TypeError, "interval must be a"),
        ({"metric": None}, ValueError, "metric must be a non-empty string"),
        ({"interval": (math.nan, 1.0)}, ValueError, r"interval\[0\]"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, exc: type, match: str) -> None:
    base = {"p_value": 0.5, "effect": 0.0, **ENOUGH}
    with pytest.raises(exc, match=match):
        decide(**{**base, **kwargs})


def test_guardrail_and_decision_validation() -> None:
    with pytest.raises(ValueError, match=r"Guardrail\.name must be a non-empty string"):
        Guardrail("", True)
    with pytest.raises(TypeError, match=r"Guardrail\('drift'\)\.passed must be True or False"):
        Guardrail("drift", "no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Decision\.action must be one of"):
        Decision("ship it", "because")  # type: ignore[arg-type]
    assert Decision("continue", "why").to_dict() == {"action": "continue", "reason": "why"}
