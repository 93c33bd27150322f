"""Reference profiles: edges, counts, bounds and validation, checked against direct numpy."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.wire.profile import OUTPUT_NAME, ReferenceProfile, build_reference_profile


def _profile(X: np.ndarray, output: np.ndarray | None = None, **kw: int) -> ReferenceProfile:
    names = [f"x{j}" for j in range(X.shape[1])]
    d = build_reference_profile(X, names, output, **kw)
    # Everything goes through JSON, as it does inside a model artifact.
    return ReferenceProfile.from_dict(json.loads(json.dumps(d, allow_nan=False)))


def test_edges_are_inverted_cdf_quantiles_and_counts_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=5000)
    p = _profile(x[:, None], fine_bins=200)
    col = p.features[0]
    # Fine edges are the inverted-CDF quantiles at k/200: the smallest order statistic
    # x_(j) with j/n >= k/200 (k=0 gives the minimum). Integer arithmetic here, because
    # np.quantile(method="inverted_cdf") evaluates k/200*n in floating point and can step
    # one order statistic too far (0.035 * 5000 = 175.00000000000003).
    v = np.sort(x)
    k = np.arange(201)
    j = np.searchsorted(np.arange(1, v.size + 1) * 200, k * v.size, "left")
    np.testing.assert_array_equal(col.edges, np.unique(v[np.maximum(j, 0)]))
    q = np.quantile(x, k / 200, method="inverted_cdf")
    assert np.mean(np.isin(q, col.edges)) > 0.9  # the same definition, up to that rounding
    # Bin i is (edges[i-1], edges[i]]: the reference CDF at each edge is exact.
    np.testing.assert_array_equal(col.cdf_at_edges, [np.mean(x <= e) for e in col.edges])
    assert col.counts.sum() == x.size and col.n == 5000 and col.n_missing == 0
    # Continuous data: every PSI bin holds 1/10 of the reference, every fine bin <= 1/200.
    np.testing.assert_allclose(col.psi_proportions, 0.1, atol=1e-12)
    assert col.ks_d_bound <= 1 / 200 + 1e-12


def test_missing_values_are_counted_and_left_out_of_the_bins() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=3000)
    x_nan = x.copy()
    x_nan[::4] = np.nan
    x_nan[1::50] = np.inf
    p = _profile(x_nan[:, None])
    col = p.features[0]
    finite = x_nan[np.isfinite(x_nan)]
    assert col.n == finite.size
    assert col.missing_rate == pytest.approx(1 - finite.size / x.size, abs=1e-15)
    np.testing.assert_array_equal(col.cdf_at_edges, [np.mean(finite <= e) for e in col.edges])


def test_constant_feature_gets_degenerate_but_valid_bins() -> None:
    X = np.column_stack([np.full(500, 3.0), np.arange(500.0)])
    p = _profile(X)
    const = p.features[0]
    # The point mass sits alone in (prev(3), 3]: any other live value lands elsewhere.
    np.testing.assert_array_equal(const.edges, [np.nextafter(3.0, -np.inf), 3.0])
    np.testing.assert_array_equal(const.counts, [0, 500, 0])
    assert const.ks_d_bound == 0.0
    np.testing.assert_array_equal(const.psi_proportions, [1.0])


def test_tied_values_get_guard_edges_and_tight_ks_bound() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=4000).astype(float)
    col = _profile(x[:, None]).features[0]
    values = np.arange(5.0)
    guards = np.nextafter(values, -np.inf)
    np.testing.assert_array_equal(col.edges, np.sort(np.concatenate([values, guards])))
    # Each value has its own bin and no reference mass lies strictly between edges.
    assert col.ks_d_bound == 0.0
    share = np.bincount(x.astype(int), minlength=5) / x.size
    # PSI bins never split a value: their proportions are sums of whole value shares.
    sums = np.concatenate([[0], np.cumsum(share)])
    cum = np.cumsum(col.psi_proportions)
    assert all(np.isclose(c, sums).any() for c in cum)
    assert np.all(col.psi_proportions > 0)


def test_all_missing_feature_only_records_the_missing_rate() -> None:
    X = np.column_stack([np.full(100, np.nan), np.arange(100.0)])
    col = _profile(X).features[0]
    assert col.n == 0 and col.n_missing == 100 and col.missing_rate == 1.0
    assert col.edges.size == 0


def test_output_column_and_round_trip() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 3))
    out = rng.random((1000, 1))
    d = build_reference_profile(X, ["a", "b", "c"], out, psi_bins=5, fine_bins=50)
    p = ReferenceProfile.from_dict(d)
    assert p.feature_names == ["a", "b", "c"]
    assert p.has_output and p.output is not None and p.output.name == OUTPUT_NAME
    assert p.psi_bins == 5 and p.fine_bins == 50
    assert p.to_dict() == d
    assert json.loads(json.dumps(d)) == d
    np.testing.assert_array_equal(
        p.output.cdf_at_edges, [np.mean(out[:, 0] <= e) for e in p.output.edges]
    )


def test_negative_zero_is_normalised() -> None:
    X = np.array([[-0.0], [0.0], [1.0], [-1.0]] * 10)
    col = _profile(X).features[0]
    assert not np.any(np.signbit(col.edges) & (col.edges == 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"X": np.zeros((0, 2))}, "at least one row"),
        ({"X": np.zeros(5)}, "2-D"),
        ({"X": np.array([["a", "b"]])}, "numeric"),
        ({"feature_names": ["a"]}, "1 names for X with 2 columns"),
        ({"feature_names": ["a", "a"]}, "duplicate"),
        ({"feature_names": ["a", ""]}, r"feature_names\[1\]"),
        ({"feature_names": "ab"}, "single string"),
        ({"feature_names": ["a", OUTPUT_NAME]}, "reserved"),
        ({"output": np.zeros(3)}, "output: expected shape"),
        ({"psi_bins": 1}, "psi_bins"),
        ({"fine_bins": 5, "psi_bins": 10}, "fine_bins=5 must be >= psi_bins=10"),
        ({"fine_bins": 2.5}, "fine_bins: expected an integer"),
    ],
)
def test_build_rejects_bad_input_naming_the_problem(kwargs: dict, message: str) -> None:
    args = {"X": np.ones((4, 2)), "feature_names": ["a", "b"], "output": None}
    args.update(kwargs)
    X, names, out = args.pop("X"), args.pop("feature_names"), args.pop("output")
    with pytest.raises(ValueError, match=message):
        build_reference_profile(X, names, out, **args)


def _mutations() -> list[tuple[str, object, str]]:
    return [
        ("kind", "other", "profile.kind"),
        ("version", 99, "profile.version"),
        ("features", [], "profile.features"),
        ("features.0.edges", [1.0, 0.5, 2.0], r"features\[0\].*strictly increasing"),
        ("features.0.edges", [1.0, "x"], r"features\[0\].*edges: expected a list of numbers"),
        ("features.0.counts", [1, 2], r"features\[0\].*counts: expected .* counts"),
        ("features.0.n", 7, r"features\[0\].*counts sum to"),
        ("features.0.n", -1, r"features\[0\].*\.n: expected a non-negative integer"),
        ("features.0.psi_starts", [1, 2], r"psi_starts: must start with 0"),
        ("features.0.psi_starts", [0, 0], r"psi_starts: must be strictly increasing"),
        ("features.0.ks_d_bound", 2.0, r"ks_d_bound"),
        ("features.0.name", "", r"features\[0\]\.name"),
        ("features.1.name", "a", "duplicate feature name"),
        ("output", {"name": "o"}, r"profile\.output.*missing field"),
    ]


@pytest.mark.parametrize(("path", "value", "message"), _mutations())
def test_from_dict_rejects_corrupt_profiles_naming_the_field(
    path: str, value: object, message: str
) -> None:
    rng = np.random.default_rng(4)
    good = build_reference_profile(rng.normal(size=(300, 2)), ["a", "b"], rng.random(300))
    bad = copy.deepcopy(good)
    *parents, leaf = path.split(".")
    node: object = bad
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]  # type: ignore[index]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value  # type: ignore[index]
    with pytest.raises(ValueError, match=message):
        ReferenceProfile.from_dict(bad)
    ReferenceProfile.from_dict(good)  # the untouched profile still parses


def test_from_dict_rejects_non_dict() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        ReferenceProfile.from_dict([1, 2])


def test_exact_sample_keeps_raw_values_or_a_random_subsample() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 1))
    x[::10] = np.nan
    full = _profile(x, exact_sample=5000).features[0]
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(full.sample, np.sort(finite))
    sub = _profile(x, exact_sample=500).features[0]
    assert sub.sample is not None and sub.sample.size == 500
    assert np.all(np.diff(sub.sample) >= 0) and np.isin(sub.sample, finite).all()
    # A random subsample, not every k-th order statistic: its quantiles still match.
    assert stats.ks_2samp(sub.sample, finite).pvalue > 0.01
    assert _profile(x).features[0].sample is None
    assert "sample" not in build_reference_profile(x, ["a"], None)["features"][0]


@pytest.mark.parametrize(
    ("sample", "message"), [([1.0, None], "list of numbers"), ([0.0] * 400, "at most n=300")]
)
def test_from_dict_rejects_bad_samples(sample: list, message: str) -> None:
    d = build_reference_profile(np.arange(300.0)[:, None], ["a"], None, exact_sample=10)
    d["features"][0]["sample"] = sample
    with pytest.raises(ValueError, match=message):
        ReferenceProfile.from_dict(d)
