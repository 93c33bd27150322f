"""The agent's chi-square tail against scipy.stats.chi2 on the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift.chi2 import chi2_sf


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9, 10, 19, 50, 101, 400])
def test_chi2_sf_matches_scipy(k: int) -> None:
    for q in (0.999, 0.9, 0.5, 0.05, 1e-3, 1e-6, 1e-12, 1e-30, 1e-100):
        x = float(stats.chi2.isf(q, k))
        assert chi2_sf(x, k) == pytest.approx(float(stats.chi2.sf(x, k)), rel=1e-10, abs=1e-300)
    for x in np.linspace(0.01, 3 * k + 30, 25):
        assert chi2_sf(float(x), k) == pytest.approx(float(stats.chi2.sf(x, k)), rel=1e-10)


def test_chi2_sf_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(-1.0, 3) == 1.0
    assert chi2_sf(float("inf"), 3) == 0.0
    assert np.isnan(chi2_sf(float("nan"), 3))
    assert chi2_sf(5000.0, 2) == 0.0  # far below the smallest double


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_chi2_sf_rejects_bad_degrees_of_freedom(k: object) -> None:
    with pytest.raises(ValueError, match="k: expected an integer number of degrees of freedom"):
        chi2_sf(1.0, k)  # type: ignore[arg-type]
