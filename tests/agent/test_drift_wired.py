"""Categorical and multivariate drift inside DriftMonitor: the same window, one family.

Statistics against scipy (chi-square) and scikit-learn (PCA) on the same numbers; a
category band falling from 10 % to 1 % is flagged and an unchanged stream is not; a
correlation break is seen by the PCA row only; old profiles keep working."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig, adjust_pvalues
from edgeloop_agent.wire.profile import ReferenceProfile, build_reference_profile
from edgeloop_agent.wire.profile_sections import fit_pca

NAMES = ["a", "b", "c", "d"]
REF = {"A": 0.5, "B": 0.33, "band": 0.1, "C": 0.07}
DROPPED = {"A": 0.5, "B": 0.33, "band": 0.01, "C": 0.16}


def _numeric(rng: np.random.Generator, n: int, *, broken: bool = False) -> np.ndarray:
    """Two correlated pairs; ``broken``: the same marginals, the first pair's link gone."""
    base = rng.normal(size=(n, 2))
    noise = 0.1 * rng.normal(size=(n, 2))
    a = base[:, 0]
    b = base[:, 0] + noise[:, 0]
    if broken:
        b = rng.permutation(b)
    return np.column_stack([a, b, base[:, 1], -base[:, 1] + noise[:, 1]])


def _cats(rng: np.random.Generator, shares: dict[str, float], n: int) -> list[str]:
    keys = list(shares)
    p = np.array([shares[k] for k in keys])
    return [keys[i] for i in rng.choice(len(keys), size=n, p=p / p.sum())]


def _profile(rng: np.random.Generator, n: int = 4000, *, pca: bool = True) -> dict:
    return build_reference_profile(
        _numeric(rng, n),
        NAMES,
        None,
        categorical={"kind": _cats(rng, REF, n), "colour": _cats(rng, {"r": 0.6, "g": 0.4}, n)},
        max_categories=3,  # "C" falls into the unseen bucket
        pca_variance=0.9 if pca else None,
    )


def _feed(mon: DriftMonitor, X: np.ndarray, kinds: list[str], colours: list[str]):
    cats = np.column_stack([np.array(kinds, dtype=object), np.array(colours, dtype=object)])
    return mon.update(X, categories=cats)


def test_categorical_chi_square_equals_scipy_on_the_same_counts() -> None:
    rng = np.random.default_rng(1)
    prof = _profile(rng)
    section = prof["categorical"][0]
    assert section["categories"] == ["A", "B", "band"] and len(section["counts"]) == 4
    mon = DriftMonitor(prof, DriftConfig(window=WindowConfig("count", 1000)))
    kinds = _cats(rng, DROPPED, 1000)
    kinds[:3] = ["never-seen", "never-seen", None]  # unseen bucket; a missing value
    (rep,) = _feed(mon, _numeric(rng, 1000), kinds, _cats(rng, {"r": 0.6, "g": 0.4}, 1000))
    got = rep.categorical_feature("kind")
    live = np.array([kinds.count("A"), kinds.count("B"), kinds.count("band"), 0], dtype=np.float64)
    live[3] = 1000 - 1 - live[:3].sum()  # C and never-seen share the unseen bucket
    ref = np.array(section["counts"], dtype=np.float64)
    table = np.vstack([ref, live])
    want = stats.chi2_contingency(table, correction=False)
    assert got.chi2 == pytest.approx(want.statistic, rel=1e-12)
    assert got.chi2_p == pytest.approx(want.pvalue, rel=1e-9)
    # The same test as scipy.stats.chisquare on the 2 x k cells against their expected
    # counts, with the k degrees of freedom the estimated margins use up.
    expected = want.expected_freq
    gof = stats.chisquare(table.ravel(), expected.ravel(), ddof=table.shape[1])
    assert got.chi2 == pytest.approx(gof.statistic, rel=1e-12)
    assert got.chi2_p == pytest.approx(gof.pvalue, rel=1e-9)
    assert got.chi2_dof == 3 and got.n == 999
    assert got.missing_rate == pytest.approx(1 / 1000)
    assert got.unseen_rate == pytest.approx(live[3] / 999)
    a, e = live / live.sum(), ref / ref.sum()
    assert got.psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), rel=1e-12)


def test_one_family_covers_numeric_categorical_and_pca_tests() -> None:
    rng = np.random.default_rng(2)
    mon = DriftMonitor(_profile(rng), DriftConfig(window=WindowConfig("count", 1000)))
    X = _numeric(rng, 1000)
    X[:, 0] += 0.15  # something for the numeric side to see
    (rep,) = _feed(mon, X, _cats(rng, DROPPED, 1000), _cats(rng, {"r": 0.6, "g": 0.4}, 1000))
    assert rep.multivariate is not None
    family = np.array(
        [f.ks_p for f in rep.features]
        + [f.psi_p for f in rep.features]
        + [c.chi2_p for c in rep.categorical]
        + [rep.multivariate.ks_p]
    )
    want = adjust_pvalues(family, "bh")
    got = np.array(
        [f.ks_p_adjusted for f in rep.features]
        + [f.psi_p_adjusted for f in rep.features]
        + [c.chi2_p_adjusted for c in rep.categorical]
        + [rep.multivariate.ks_p_adjusted]
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    doc = json.loads(json.dumps(rep.to_dict()))
    kinds = {f["name"]: f.get("kind", "numeric") for f in doc["features"]}
    assert kinds == {
        **dict.fromkeys(NAMES, "numeric"),
        "kind": "categorical",
        "colour": "categorical",
    }
    assert doc["multivariate"]["method"] == "pca_reconstruction"
    assert doc["multivariate"]["components"] == rep.pca_components >= 1


def test_a_band_falling_from_10_to_1_percent_is_flagged_an_unchanged_stream_is_not() -> None:
    rng = np.random.default_rng(3)
    mon = DriftMonitor(_profile(rng), DriftConfig(window=WindowConfig("count", 1000)))
    colours = {"r": 0.6, "g": 0.4}
    null = []
    for _ in range(60):
        null += _feed(mon, _numeric(rng, 1000), _cats(rng, REF, 1000), _cats(rng, colours, 1000))
    assert len(null) == 60
    rate = np.mean([r.dataset_drift for r in null])
    assert rate <= stats.binom.ppf(0.999, 60, 0.05) / 60
    shifted = []
    for _ in range(10):
        shifted += _feed(
            mon, _numeric(rng, 1000), _cats(rng, DROPPED, 1000), _cats(rng, colours, 1000)
        )
    for rep in shifted:
        band = rep.categorical_feature("kind")
        assert rep.dataset_drift and band.drift and "chi2" in band.reasons
        assert "kind" in rep.drifted_features
        assert not rep.categorical_feature("colour").drift


def test_a_correlation_break_is_flagged_by_the_pca_row_only() -> None:
    rng = np.random.default_rng(4)
    mon = DriftMonitor(_profile(rng), DriftConfig(window=WindowConfig("count", 1000)))
    kinds, colours = _cats(rng, REF, 1000), _cats(rng, {"r": 0.6, "g": 0.4}, 1000)
    (rep,) = _feed(mon, _numeric(rng, 1000, broken=True), kinds, colours)
    assert not any(f.drift for f in rep.features)  # every marginal is unchanged
    assert rep.multivariate is not None and rep.multivariate.drift
    assert rep.multivariate.ks_p_adjusted < 1e-10
    assert rep.dataset_drift and rep.drifted_features == []


def test_pca_section_equals_sklearn_pca_on_the_same_rows() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(5)
    X = _numeric(rng, 2000)
    prof = ReferenceProfile.from_dict(build_reference_profile(X, NAMES, None, pca_variance=0.9))
    assert prof.pca is not None
    k = prof.pca.components.shape[0]
    # The fitting half, as fit_pca draws it.
    order = np.random.default_rng(0).permutation(2000)
    fit, held = X[order[:1000]], X[order[1000:]]
    z = (fit - fit.mean(0)) / fit.std(0, ddof=1)
    sk = PCA(n_components=k).fit(z)
    assert k == int(np.searchsorted(np.cumsum(sk.explained_variance_ratio_), 0.9) + 1) or k == 3
    zh = (held - fit.mean(0)) / fit.std(0, ddof=1)
    want = np.linalg.norm(zh - sk.inverse_transform(sk.transform(zh)), axis=1)
    np.testing.assert_allclose(prof.pca.errors(held), want, rtol=1e-9, atol=1e-12)
    # The reference error column is those held-out errors, binned like a feature.
    assert prof.pca.error.n == 1000
    assert prof.pca.error.edges[0] == pytest.approx(want.min())
    assert prof.pca.error.edges[-1] == pytest.approx(want.max())
    fitted = fit_pca(X, variance=0.9)
    assert fitted is not None and fitted[3].shape == (1000, 4)


def test_profiles_without_the_new_sections_keep_working() -> None:
    rng = np.random.default_rng(6)
    X = _numeric(rng, 2000)
    old = build_reference_profile(X, NAMES, None)
    assert "categorical" not in old and "pca" not in old  # byte-identical to before
    mon = DriftMonitor(old, DriftConfig(window=WindowConfig("count", 500)))
    (rep,) = mon.update(_numeric(rng, 500), categories=[["x"]] * 500)  # ignored: none profiled
    assert rep.categorical == () and rep.multivariate is None
    doc = rep.to_dict()
    assert doc["multivariate"] is None and [f["name"] for f in doc["features"]] == NAMES
    assert all("kind" not in f for f in doc["features"])
    # And a profile with the sections round-trips through JSON.
    new = _profile(rng)
    again = ReferenceProfile.from_dict(json.loads(json.dumps(new))).to_dict()
    assert again == new


def test_memory_is_fixed_whatever_the_stream_sends() -> None:
    rng = np.random.default_rng(7)
    mon = DriftMonitor(_profile(rng), DriftConfig(window=WindowConfig("count", 1000, slide=250)))
    _feed(mon, _numeric(rng, 1000), _cats(rng, REF, 1000), ["r"] * 1000)
    before = mon.nbytes
    for i in range(20):  # thousands of categories no profile has seen
        kinds = [f"new-{i}-{j}" for j in range(1000)]
        reps = _feed(mon, _numeric(rng, 1000), kinds, ["g"] * 1000)
        assert reps[-1].categorical_feature("kind").unseen_rate == 1.0
    assert mon.nbytes == before


def test_time_windows_carry_categorical_counts_in_their_panes() -> None:
    rng = np.random.default_rng(8)
    cfg = DriftConfig(window=WindowConfig("time", 60.0, slide=30.0))
    mon = DriftMonitor(_profile(rng), cfg)
    reps = []
    for t in range(0, 300, 10):
        shares = DROPPED if t < 120 else REF
        cats = np.column_stack([_cats(rng, shares, 200), _cats(rng, {"r": 0.6, "g": 0.4}, 200)])
        reps += mon.update(_numeric(rng, 200), categories=cats, now=float(t))
    assert reps[0].categorical_feature("kind").drift  # the dropped band, in its window
    assert not reps[-1].categorical_feature("kind").drift  # gone once the window moved on


@pytest.mark.parametrize(
    ("cats", "match"),
    [
        (np.array([["A"]] * 10, dtype=object), r"categories: expected shape \(10, 2\)"),
        ([[["A"], "r"]] * 10, '"kind" holds a value that is not a category'),
    ],
)
def test_bad_categories_are_one_clear_error_and_nothing_is_counted(cats, match) -> None:
    rng = np.random.default_rng(9)
    mon = DriftMonitor(_profile(rng), DriftConfig(window=WindowConfig("count", 20)))
    with pytest.raises(ValueError, match=match):
        mon.update(_numeric(rng, 10), categories=cats)
    assert mon.rows_seen == 0
