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


# -- distinct keys: counts estimated by a sketch -------------------------------------------


def _keys_sketch(keys: list[str]) -> float:
    from edgeloop_agent.wire import keysketch

    registers = keysketch.empty()
    keysketch.add_hashes(registers, keysketch.key_hashes("exp", keys))
    return keysketch.estimate(registers)


@pytest.mark.parametrize(
    ("observed", "weights"),
    [([480, 515, 1_005], [1, 1, 2]), ([9_130, 870], [0.9, 0.1]), ([33, 41, 20, 6], [3, 4, 2, 1])],
)
def test_keys_unit_without_sketch_error_is_pearson(
    observed: list[int], weights: list[float]
) -> None:
    # The Wald statistic with the sketch term vanishing is exactly Pearson's chi-square.
    result = sample_ratio_mismatch(observed, weights, unit="keys", relative_error=1e-15)
    total_w = sum(weights)
    ref = stats.chisquare(observed, f_exp=[sum(observed) * w / total_w for w in weights])
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert result.unit == "keys"


@pytest.mark.parametrize(("n_a", "n_b", "share_b"), [(50_000, 50_000, 0.5), (2_000, 900, 0.3)])
def test_keys_srm_on_sketch_estimates_matches_the_worked_formula(
    n_a: int, n_b: int, share_b: float
) -> None:
    from edgeloop_agent.wire.keysketch import RELATIVE_ERROR as r

    # Two disjoint key sets, estimated by their sketches (as two arms would be).
    a = round(_keys_sketch([f"a{i}" for i in range(n_a)]))
    b = round(_keys_sketch([f"b{i}" for i in range(n_b)]))
    assert abs(a / n_a - 1) < 3 * r and abs(b / n_b - 1) < 3 * r
    result = sample_ratio_mismatch([a, b], [1 - share_b, share_b], unit="keys", relative_error=r)
    # Two arms by hand: d = n_b - N w_b; Var(d) = N w_a w_b (multinomial)
    # + w_a^2 Var(e_b) + w_b^2 Var(e_a), Var(e_i) = (r N w_i)^2 under H0.
    n, wa, wb = a + b, 1 - share_b, share_b
    d = b - n * wb
    var = n * wa * wb + wa**2 * (r * n * wb) ** 2 + wb**2 * (r * n * wa) ** 2
    assert result.statistic == pytest.approx(d * d / var, rel=1e-9)
    assert result.p_value == pytest.approx(stats.chi2.sf(d * d / var, 1), rel=1e-8)
    # The same counts taken as exact (Pearson, scipy) would be far more confident.
    pearson = stats.chisquare([a, b], f_exp=[n * wa, n * wb])
    assert result.p_value >= pearson.pvalue


def test_sketch_error_alone_is_not_a_mismatch() -> None:
    # 2 % imbalance at 400,000 keys: 6.3 binomial sd, but within 1.7 sd once each arm's
    # 0.81 % sketch error is counted. Pearson on the estimates would call it a mismatch.
    counts, weights = [202_000, 198_000], [0.5, 0.5]
    assert stats.chisquare(counts).pvalue < 1e-9
    result = sample_ratio_mismatch(counts, weights, unit="keys", relative_error=1.04 / 128)
    assert not result.mismatch and result.p_value > 0.05
    assert "on keys" in result.reason and "sketch's 0.81% error" in result.reason


def test_too_few_keys_are_not_tested() -> None:
    result = sample_ratio_mismatch([40, 1], [0.9, 0.1], unit="keys", min_expected=5)
    assert (result.checked, result.mismatch, result.p_value) == (False, False, 1.0)
    assert "too few keys" in result.reason
