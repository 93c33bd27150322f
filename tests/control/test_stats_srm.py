"""Sample-ratio-mismatch check against scipy.stats.chisquare and a published example."""

from __future__ import annotations

import pytest
from scipy import stats

from edgeloop_control.stats import sample_ratio_mismatch


@pytest.mark.parametrize(
    ("observed", "weights"),
    [([5_000, 5_000], [1, 1]), ([9_130, 870], [0.9, 0.1]), ([480, 515, 1_005], [1, 1, 2]),
     ([3, 9], [0.5, 0.5]), ([10_214, 9_786], [50, 50])],
)  # fmt: skip
def test_matches_scipy_chisquare(observed: list[int], weights: list[float]) -> None:
    result = sample_ratio_mismatch(observed, weights)
    total_w = sum(weights)
    expected = [sum(observed) * w / total_w for w in weights]
    ref = stats.chisquare(observed, f_exp=expected)
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-12, abs=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert result.expected == pytest.approx(expected)
    assert result.df == len(observed) - 1
    assert result.mismatch == (ref.pvalue < 0.001)


def test_kohavi_tang_xu_worked_example_is_flagged() -> None:
    # Kohavi, Tang & Xu (2020), "Trustworthy Online Controlled Experiments", ch. 3: a 50/50
    # experiment with 821,588 control and 815,482 treatment users; the book gives
    # p-value 1.8E-6 for a ratio this far from 1 and calls it a sample ratio mismatch.
    result = sample_ratio_mismatch([821_588, 815_482], [0.5, 0.5])
    assert result.p_value == pytest.approx(1.8e-6, rel=0.05)
    assert result.mismatch
    assert "sample ratio mismatch" in result.reason


def test_threshold_is_strict_and_configurable() -> None:
    # 10,214 vs 9,786 at 50/50: chi-square 9.16, p about 0.0025 - suspicious, not flagged.
    result = sample_ratio_mismatch([10_214, 9_786], [1, 1])
    assert 0.001 < result.p_value < 0.01 and not result.mismatch
    assert sample_ratio_mismatch([10_214, 9_786], [1, 1], threshold=0.01).mismatch


def test_mappings_align_by_variant_name() -> None:
    by_name = sample_ratio_mismatch(
        {"challenger": 870, "champion": 9_130}, {"champion": 0.9, "challenger": 0.1}
    )
    by_order = sample_ratio_mismatch([870, 9_130], [0.1, 0.9])
    assert by_name.p_value == pytest.approx(by_order.p_value)
    assert by_name.variants == ("challenger", "champion")


def test_no_traffic_is_not_a_mismatch() -> None:
    result = sample_ratio_mismatch([0, 0], [0.5, 0.5])
    assert (result.p_value, result.mismatch) == (1.0, False)
    assert "no traffic" in result.reason


@pytest.mark.parametrize(
    ("observed", "weights", "exc", "match"),
    [
        ([10, 20], [0.5], ValueError, "observed has 2 variants but weights has 1"),
        ([10], [1.0], ValueError, "at least 2 variants"),
        ([10, -1], [1, 1], ValueError, r"observed\['variant 1'\]"),
        ([10, 2.5], [1, 1], TypeError, r"observed\['variant 1'\] must be a non-negative integer"),
        ([10, 20], [1, 0], ValueError, r"weights\['variant 1'\] must be > 0, got 0\.0"),
        ([10, 20], [1, float("nan")], ValueError, r"weights\['variant 1'\]"),
        ({"a": 1, "b": 2}, {"a": 1, "c": 1}, ValueError, "name different variants"),
        ({"a": 1, "b": 2}, [1, 1], TypeError, "both be mappings"),
        ("ab", "cd", TypeError, "not strings"),
    ],
)
def test_bad_input_names_the_problem(
    observed: object, weights: object, exc: type, match: str
) -> None:
    with pytest.raises(exc, match=match):
        sample_ratio_mismatch(observed, weights)


def test_bad_threshold() -> None:
    with pytest.raises(ValueError, match="threshold must be strictly between 0 and 1"):
        sample_ratio_mismatch([1, 1], [1, 1], threshold=0)
