"""Categorical drift: reference frequencies with an "other" bucket, chi-square and PSI,
against scipy.stats on the same counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift.categorical import (
    CategoricalMonitor,
    build_categorical_profile,
    drift_flags,
)


def _draw(rng: np.random.Generator, shares: dict[str, float], n: int) -> list[str]:
    cats = list(shares)
    p = np.array([shares[c] for c in cats])
    return [cats[i] for i in rng.choice(len(cats), size=n, p=p / p.sum())]


REF = {"A": 0.5, "B": 0.3, "band": 0.1, "C": 0.1}


def test_statistics_equal_scipy_on_the_same_counts() -> None:
    rng = np.random.default_rng(1)
    ref = _draw(rng, REF, 5000)
    profile = build_categorical_profile({"kind": ref}, max_categories=3)
    assert profile["columns"][0]["categories"][:2] == ["A", "B"]  # most frequent first
    mon = CategoricalMonitor(profile, window=1000)
    live = _draw(rng, {"A": 0.5, "B": 0.3, "band": 0.01, "C": 0.1, "new": 0.09}, 1000)
    [[rep]] = mon.update([[v] for v in live])
    ref_counts = np.array(profile["columns"][0]["counts"])
    table = np.vstack([ref_counts, np.array(rep.live_counts)])
    want = stats.chi2_contingency(table, correction=False)
    assert rep.chi2 == pytest.approx(want.statistic, rel=1e-12)
    assert rep.p == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert rep.dof == want.dof
    a, e = table[1] / table[1].sum(), table[0] / table[0].sum()
    assert rep.psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-12)


def test_a_category_share_falling_from_10_to_1_percent_is_caught() -> None:
    rng = np.random.default_rng(2)
    profile = build_categorical_profile({"kind": _draw(rng, REF, 5000)})
    mon = CategoricalMonitor(profile, window=1000)
    live = _draw(rng, {"A": 0.55, "B": 0.33, "band": 0.01, "C": 0.11}, 1000)
    [[rep]] = mon.update([[v] for v in live])
    assert rep.p < 1e-10 and rep.psi > 0.1
    # Same test as scipy's goodness-of-fit when the reference is taken as exact, for scale:
    ref = np.array(profile["columns"][0]["counts"], dtype=float)
    cats = profile["columns"][0]["categories"]
    obs = np.array([live.count(c) for c in cats] + [0])
    gof = stats.chisquare(obs[ref > 0], ref[ref > 0] / ref.sum() * obs.sum())
    assert gof.pvalue < 1e-10


def test_null_windows_keep_the_family_wise_rate() -> None:
    rng = np.random.default_rng(3)
    runs, flagged = 300, 0
    profile = build_categorical_profile({f"c{j}": _draw(rng, REF, 2000) for j in range(5)})
    for _ in range(runs):
        mon = CategoricalMonitor(profile, window=300)
        rows = list(zip(*[_draw(rng, REF, 300) for _ in range(5)], strict=True))
        [reps] = mon.update(rows)
        numeric_p = rng.random(10)  # ten numeric features with uniform null p-values
        adj_num, adj_cat = drift_flags(numeric_p, reps)
        flagged += bool((adj_num < 0.05).any() or (adj_cat < 0.05).any())
    assert flagged / runs <= stats.binom.ppf(0.999, runs, 0.05) / runs


def test_unseen_categories_and_missing_values_are_bounded_and_counted() -> None:
    profile = build_categorical_profile({"a": ["x", "y", None, "x"]})
    mon = CategoricalMonitor(profile, window=4)
    before = mon.nbytes
    [[rep]] = mon.update([["x"], ["never-seen"], ["another"], [None]])
    assert rep.live_counts == (1, 0, 2) and rep.n == 3
    assert mon.nbytes == before  # no growth with new categories


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_categorical_profile({"a": [1]}), "categories must be strings"),
        (lambda: build_categorical_profile({"a": ["x"]}, max_categories=0), "max_categories"),
        (lambda: CategoricalMonitor({"kind": "x"}, 10), "build_categorical_profile"),
        (
            lambda: CategoricalMonitor(build_categorical_profile({"a": ["x"]}), 0),
            "window",
        ),
        (
            lambda: CategoricalMonitor(build_categorical_profile({"a": ["x"]}), 5).update(
                [["x", "y"]]
            ),
            "expected 1 values",
        ),
    ],
)
def test_bad_input_is_named(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()
