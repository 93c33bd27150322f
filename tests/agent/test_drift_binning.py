"""The one-pass flat binner against per-column np.searchsorted on adversarial values."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop_agent.drift.binning import FlatBinner

SPECIALS = np.array(
    [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308,
     -1.7976931348623157e308, 2.2250738585072014e-308]
)  # fmt: skip


def _edge_sets(rng: np.random.Generator, n_cols: int) -> list[np.ndarray]:
    out = []
    for c in range(n_cols):
        kind = c % 5
        if kind == 0:
            e = np.unique(rng.normal(size=rng.integers(1, 300)))
        elif kind == 1:  # adjacent floats: keys collide after the column shift
            base = rng.normal() * 10.0 ** rng.integers(-5, 5)
            e = np.unique(base + np.arange(40) * np.abs(np.spacing(base)))
        elif kind == 2:  # point masses with guard edges, around zero
            v = np.arange(-3.0, 4.0)
            e = np.unique(np.concatenate([v, np.nextafter(v, -np.inf)]))
        elif kind == 3:  # huge and tiny magnitudes of both signs
            e = np.array([-1e300, -1e-300, 0.0, 1e-310, 1e-300, 1e300])
        else:
            e = np.array([float(rng.normal())])
        out.append(np.asarray(e, dtype=np.float64))
    return out


def _values(rng: np.random.Generator, edges: np.ndarray, n: int) -> np.ndarray:
    near = np.concatenate(
        [edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf), edges * (1 + 1e-15)]
    )
    pool = np.concatenate([near, SPECIALS, rng.normal(size=50) * 1e3])
    return rng.choice(pool, size=n)


@pytest.mark.parametrize("n_cols", [1, 2, 3, 33, 64, 65, 130])
def test_slots_equal_per_column_searchsorted(n_cols: int) -> None:
    rng = np.random.default_rng(n_cols)
    edges = _edge_sets(rng, n_cols)
    binner = FlatBinner(edges)
    X = np.column_stack([_values(rng, e, 3000) for e in edges])
    slots = binner.transform(X)
    assert slots.shape == X.shape
    for c, e in enumerate(edges):
        x = X[:, c]
        lo, hi = binner.low_slots[c], binner.high_slots[c]
        finite = np.isfinite(x)
        # Finite values: bin (e[i-1], e[i]] exactly as searchsorted(side="left") says.
        expected = binner.slot_offsets[c] + 1 + np.searchsorted(e, x[finite], "left")
        np.testing.assert_array_equal(slots[finite, c], expected)
        # Missing values go to the two outer slots and nowhere else.
        assert np.all((slots[~finite, c] == lo) | (slots[~finite, c] == hi))
        assert np.all((slots[finite, c] > lo) & (slots[finite, c] < hi))


def test_single_rows_and_non_contiguous_input() -> None:
    rng = np.random.default_rng(7)
    edges = _edge_sets(rng, 9)
    binner = FlatBinner(edges)
    X = np.column_stack([_values(rng, e, 50) for e in edges])
    whole = binner.transform(X)
    for i in range(X.shape[0]):
        np.testing.assert_array_equal(binner.transform(X[i : i + 1]), whole[i : i + 1])
    wide = np.repeat(X, 2, axis=1)[:, ::2]  # a strided view
    np.testing.assert_array_equal(binner.transform(wide), whole)


def test_column_without_edges_has_one_bin() -> None:
    binner = FlatBinner([np.empty(0), np.array([1.0])])
    s = binner.transform(np.array([[5.0, 0.5], [np.nan, 2.0]]))
    assert s[0, 0] == 1 and s[1, 0] == binner.high_slots[0]
    assert binner.n_slots == 3 + 4


@pytest.mark.parametrize(
    "edges", [[], [np.array([1.0, 1.0])], [np.array([np.nan])], [np.array([[1.0]])]]
)
def test_rejects_bad_edges(edges: list) -> None:
    with pytest.raises(ValueError, match="edges"):
        FlatBinner(edges)


def test_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(n_rows, 2\)"):
        FlatBinner([np.array([0.0]), np.array([1.0])]).transform(np.zeros((3, 3)))
