"""The JSON experiment report: every number checked against scipy on the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from edgeloop_control.stats import (
    BinaryStats,
    ContinuousStats,
    Guardrail,
    MixtureSPRT,
    experiment_report,
)


def _strict_json(report: dict) -> dict:
    return json.loads(json.dumps(report, allow_nan=False))


def _binary_experiment(seed: int = 4) -> tuple[MixtureSPRT, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.random(3_000) < 0.85, rng.random(2_900) < 0.89
    test = MixtureSPRT("binary", alpha=0.05)
    for ca, cb in zip(np.array_split(a, 10), np.array_split(b, 10), strict=True):
        test.update(BinaryStats.from_outcomes(ca), BinaryStats.from_outcomes(cb))
    return test, a, b


def test_binary_report_numbers_match_scipy() -> None:
    test, a, b = _binary_experiment()
    report = _strict_json(
        experiment_report(test, weights=(0.5, 0.5), guardrails=[Guardrail("error_rate", True)])
    )
    for arm, data in (("champion", a), ("challenger", b)):
        ci = stats.binomtest(int(data.sum()), data.size).proportion_ci(0.95, method="wilson")
        variant = report["variants"][arm]
        assert variant["n"] == data.size and variant["successes"] == int(data.sum())
        assert variant["metric"] == pytest.approx(data.mean())
        assert variant["ci"] == pytest.approx([ci.low, ci.high], rel=1e-10)
    table = [[b.sum(), b.size - b.sum()], [a.sum(), a.size - a.sum()]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    fixed = report["fixed_horizon"]
    assert fixed["statistic"] ** 2 == pytest.approx(chi2, rel=1e-10)
    assert fixed["p_value"] == pytest.approx(p, rel=1e-9)
    assert report["difference"]["estimate"] == pytest.approx(b.mean() - a.mean())
    assert report["difference"]["relative"] == pytest.approx((b.mean() - a.mean()) / a.mean())
    seq = report["sequential"]
    assert seq["p_value"] == test.p_value and seq["looks"] == test.looks == 10
    assert seq["confidence_sequence"] == list(test.confidence_sequence)
    ref = stats.chisquare([a.size, b.size], f_exp=[(a.size + b.size) / 2] * 2)
    assert report["srm"]["p_value"] == pytest.approx(ref.pvalue)
    assert report["srm"]["source"] == "labels" and not report["srm"]["mismatch"]
    assert report["decision"] == test.decision().to_dict()
    assert report["decision"]["action"] == "promote"


def test_continuous_report_numbers_match_scipy() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(0, 1.0, 400) ** 2, rng.normal(0, 1.1, 380) ** 2
    test = MixtureSPRT("continuous", alpha=0.1, tau=0.2)
    test.update(ContinuousStats.from_values(a), ContinuousStats.from_values(b))
    report = _strict_json(experiment_report(test))
    for arm, data in (("champion", a), ("challenger", b)):
        ci = stats.ttest_1samp(data, 0.0).confidence_interval(confidence_level=0.9)
        variant = report["variants"][arm]
        assert variant["metric"] == pytest.approx(data.mean())
        assert variant["std"] == pytest.approx(data.std(ddof=1))
        assert variant["ci"] == pytest.approx([ci.low, ci.high], rel=1e-9)
        assert variant["ci_confidence"] == pytest.approx(0.9)
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert report["fixed_horizon"]["statistic"] == pytest.approx(welch.statistic, rel=1e-9)
    assert report["fixed_horizon"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert report["fixed_horizon"]["df"] == pytest.approx(welch.df, rel=1e-9)
    assert report["metric"] == "loss" and report["higher_is_better"] is False
    assert report["sequential"]["tau"] == 0.2 and report["sequential"]["tau_source"] == "configured"
    assert report["srm"] is None


def test_sample_ratio_mismatch_rolls_back() -> None:
    test, _, _ = _binary_experiment()
    # Configured 90/10 but routed 50/50 (e.g. a router bug): the comparison is not trustworthy.
    report = _strict_json(experiment_report(test, weights=(0.9, 0.1), assignments=(50_210, 49_790)))
    ref = stats.chisquare([50_210, 49_790], f_exp=[90_000, 10_000])
    assert report["srm"]["p_value"] == pytest.approx(ref.pvalue, abs=1e-300)
    assert report["srm"]["mismatch"] and report["srm"]["source"] == "assignments"
    assert report["guardrails"][-1]["name"] == "sample_ratio"
    assert report["decision"]["action"] == "rollback"
    assert "sample_ratio" in report["decision"]["reason"]


def test_report_before_any_label_is_valid_json_and_says_continue() -> None:
    report = _strict_json(experiment_report(MixtureSPRT("binary"), weights=(0.8, 0.2)))
    assert report["variants"]["champion"]["metric"] is None
    assert report["variants"]["challenger"]["ci"] == [None, None]
    assert report["fixed_horizon"]["p_value"] is None
    assert report["sequential"]["confidence_sequence"] == [None, None]
    assert report["sequential"]["tau"] is None
    assert report["decision"]["action"] == "continue"
    assert "no labelled outcomes" in report["decision"]["reason"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"assignments": (10, 10)}, ValueError, "assignments were given without weights"),
        ({"weights": (0.5,)}, ValueError, "weights must have 2 entries"),
        ({"weights": (0.5, 0.5), "assignments": 7}, TypeError, "assignments must be a"),
        ({"weights": (0.5, -0.5)}, ValueError, r"weights\['challenger'\] must be > 0"),
        ({"weights": {"a": 1}}, TypeError, r"weights must be a \(champion, challenger\) pair"),
        ({"guardrails": "drift"}, TypeError, "guardrails must be a sequence of Guardrail"),
    ],
)
def test_report_input_errors(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        experiment_report(MixtureSPRT("binary"), **kwargs)
    with pytest.raises(TypeError, match="test must be a MixtureSPRT"):
        experiment_report({"p_value": 0.1})  # type: ignore[arg-type]
