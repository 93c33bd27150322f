"""PSI and multiple-testing corrections against direct numpy / scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import adjust_pvalues, psi
from edgeloop_agent.drift.psi import psi_segments


def _direct_psi(expected: np.ndarray, counts: np.ndarray, eps: float) -> float:
    total = 0.0
    for e, c in zip(expected, counts / counts.sum(), strict=True):
        a, r = max(c, eps), max(e, eps)
        total += (a - r) * np.log(a / r)
    return total


def test_psi_equals_the_textbook_sum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(2, 20))
        expected = rng.dirichlet(np.ones(k))
        counts = rng.multinomial(int(rng.integers(1, 500)), rng.dirichlet(np.ones(k)))
        for eps in (1e-4, 1e-2):
            assert psi(expected, counts, eps) == pytest.approx(
                _direct_psi(expected, counts.astype(float), eps), rel=1e-12, abs=1e-15
            )


def test_psi_worked_example() -> None:
    # Ten equal reference bins; live mass moved from the lowest to the highest bin.
    expected = np.full(10, 0.1)
    counts = np.array([50, 100, 100, 100, 100, 100, 100, 100, 100, 150])
    # (0.05 - 0.1) ln(0.05/0.1) + (0.15 - 0.1) ln(0.15/0.1) = 0.05 ln 2 + 0.05 ln 1.5 = 0.05 ln 3
    by_hand = 0.05 * np.log(3.0)
    assert psi(expected, counts) == pytest.approx(by_hand, rel=1e-12)


def test_empty_bins_use_the_epsilon_floor() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    counts = np.array([10, 0, 10])
    eps = 1e-4
    by_hand = (eps - 0.5) * np.log(eps / 0.5) + (0.5 - eps) * np.log(0.5 / eps)
    assert psi(expected, counts, eps) == pytest.approx(by_hand, rel=1e-12)
    assert np.isfinite(psi(expected, counts, eps))


def test_psi_segments_equals_per_column_psi() -> None:
    rng = np.random.default_rng(1)
    sizes = [3, 10, 1, 7]
    exp = [rng.dirichlet(np.ones(k)) for k in sizes]
    cnt = [rng.multinomial(300, rng.dirichlet(np.ones(k))).astype(float) for k in sizes]
    cnt[2] = np.zeros(1)  # a column without live values gives NaN
    starts = np.cumsum([0, *sizes[:-1]])
    totals = np.repeat([c.sum() for c in cnt], sizes)
    out = psi_segments(np.concatenate(exp), np.concatenate(cnt), totals, starts, 1e-4)
    for j in (0, 1, 3):
        assert out[j] == pytest.approx(psi(exp[j], cnt[j]), rel=1e-12)
    assert np.isnan(out[2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.5, 0.5], [1, 2, 3]), "same length"),
        (([0.5, 0.5], [1, -2]), ">= 0"),
        (([0.5, 0.5], [0, 0]), "no live values"),
        (([0.5, 0.5], [1, 1], 0.0), "eps"),
    ],
)
def test_psi_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psi(*args)


def test_bh_matches_scipy_false_discovery_control() -> None:
    rng = np.random.default_rng(2)
    for k in (1, 2, 5, 33, 200):
        p = np.concatenate([rng.random(k), rng.random(max(1, k // 4)) * 1e-4])
        p[rng.integers(0, p.size)] = p[0]  # ties
        np.testing.assert_allclose(
            adjust_pvalues(p, "bh"), stats.false_discovery_control(p, method="bh"), rtol=1e-12
        )


def test_bonferroni_and_nan_handling() -> None:
    p = np.array([0.01, np.nan, 0.2, 0.6])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), [0.03, np.nan, 0.6, 1.0])
    valid = ~np.isnan(p)
    np.testing.assert_allclose(
        adjust_pvalues(p, "bh")[valid], stats.false_discovery_control(p[valid]), rtol=1e-12
    )
    assert np.isnan(adjust_pvalues(np.array([np.nan, np.nan]))).all()


@pytest.mark.parametrize(
    ("p", "method", "message"),
    [
        (np.array([0.1, 1.5]), "bh", r"\[0, 1\]"),
        (np.ones((2, 2)), "bh", "1-D"),
        (np.array([0.1]), "holm", "method"),
    ],
)
def test_adjust_rejects_bad_input(p: np.ndarray, method: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adjust_pvalues(p, method)  # type: ignore[arg-type]
