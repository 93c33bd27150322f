"""Optional sections of a reference profile: categorical features and PCA reconstruction.

Both are optional so profiles of older models (numeric features only) still parse, and a
profile without them monitors exactly as before.

``categorical``: per categorical feature, the ``max_categories`` most frequent reference
categories with their counts, plus one **"unseen"** bucket (last) for every other
category, including those never seen at training time, and the number of missing values.
Memory on the device is fixed whatever the live stream sends: (categories + 2) counters per
column and pane.

``pca``: a PCA fitted on the standardised reference rows (one half of them), the kept
components (enough for ``variance`` of the variance, at least one direction left out) and
the reconstruction errors of the *other* half, profiled as one more numeric column
(quantile bins, like a feature), so the live errors are tested with the same binned KS
in the same window. Size: k x d components plus one column's bins, whatever the reference
size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop_agent.wire.jsontext import json_text

if TYPE_CHECKING:  # profile.py imports this module; at run time the column is passed in
    from edgeloop_agent.wire.profile import ColumnProfile

MAX_CATEGORIES = 1000
PCA_ERROR_NAME = "__pca_error__"
# Below this many complete reference rows no PCA section is built: half of them fit the
# components, the other half give the reference errors, and each half needs to be large
# enough for its own noise not to look like drift (the numeric PSI floor, profile.py).
MIN_PCA_ROWS = 400


@dataclass(frozen=True)
class CategoricalColumnProfile:
    """Reference frequencies of one categorical feature; ``counts[-1]`` is "unseen"."""

    name: str
    categories: tuple[str, ...]
    counts: np.ndarray  # int64, len(categories) + 1
    n_missing: int

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def missing_rate(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "categories": list(self.categories),
            "counts": [int(c) for c in self.counts],
            "n_missing": int(self.n_missing),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> CategoricalColumnProfile:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name: expected a non-empty string, got {json_text(name)}")
        where = f"{where} ({json_text(name)})"
        cats = d.get("categories")
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ValueError(f"{where}.categories: expected a list of strings")
        if len(set(cats)) != len(cats) or len(cats) > MAX_CATEGORIES:
            raise ValueError(f"{where}.categories: expected at most {MAX_CATEGORIES} distinct")
        counts = d.get("counts")
        if (
            not isinstance(counts, list)
            or len(counts) != len(cats) + 1
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        ):
            raise ValueError(
                f"{where}.counts: expected {len(cats) + 1} non-negative integers "
                "(one per category, then the unseen bucket)"
            )
        n_missing = d.get("n_missing")
        if isinstance(n_missing, bool) or not isinstance(n_missing, int) or n_missing < 0:
            raise ValueError(f"{where}.n_missing: expected a non-negative integer")
        return cls(name, tuple(cats), np.asarray(counts, dtype=np.int64), n_missing)


def build_categorical_columns(
    columns: Mapping[str, Iterable[str | None]], *, max_categories: int = 50
) -> tuple[CategoricalColumnProfile, ...]:
    """Reference frequencies of categorical columns (``None`` = missing)."""
    if isinstance(max_categories, bool) or not isinstance(max_categories, int):
        raise ValueError(
            f"max_categories: expected an integer >= 1, got {json_text(max_categories)}"
        )
    if not 1 <= max_categories <= MAX_CATEGORIES:
        raise ValueError(f"max_categories: expected 1..{MAX_CATEGORIES}, got {max_categories}")
    out = []
    for name, values in columns.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"column names must be non-empty strings, got {json_text(name)}")
        counts: Counter[str] = Counter()
        missing = 0
        for v in values:
            if v is None:
                missing += 1
            elif isinstance(v, str):
                counts[v] += 1
            else:
                raise ValueError(
                    f"column {json_text(name)}: categories must be strings, got {json_text(v)}"
                )
        # Most frequent first, ties by name: the profile does not depend on row order.
        kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
        unseen = sum(counts.values()) - sum(c for _, c in kept)
        out.append(
            CategoricalColumnProfile(
                name,
                tuple(k for k, _ in kept),
                np.asarray([c for _, c in kept] + [unseen], dtype=np.int64),
                missing,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class PCAProfile:
    """Standardisation, kept components and the reference reconstruction errors."""

    features: tuple[str, ...]
    mean: np.ndarray  # (d,)
    sd: np.ndarray  # (d,), > 0
    components: np.ndarray  # (k, d), orthonormal rows
    error: ColumnProfile  # the held-out reference errors, binned like a feature

    def errors(self, X: np.ndarray) -> np.ndarray:
        """Reconstruction error (Euclidean, standardised units) of each row; NaN rows stay NaN."""
        return pca_errors(X, self.mean, self.sd, self.components)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": [float(v) for v in self.mean],
            "sd": [float(v) for v in self.sd],
            "components": [[float(v) for v in row] for row in self.components],
            "error": self.error.to_dict(),
        }


def pca_errors(X: np.ndarray, mean: np.ndarray, sd: np.ndarray, comps: np.ndarray) -> np.ndarray:
    z = (X - mean) / sd
    back = (z @ comps.T) @ comps
    out: np.ndarray = np.sqrt(np.sum((z - back) ** 2, axis=1))
    return out


def parse_pca(
    d: Any, features: Sequence[str], column: Callable[[Any, str], ColumnProfile]
) -> PCAProfile:
    """``profile.pca``; ``column`` is ``ColumnProfile.from_dict`` (passed in: no cycle)."""
    where = "profile.pca"
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    names = d.get("features")
    if names != list(features):
        raise ValueError(f"{where}.features: expected the profile's features {list(features)}")
    dim = len(features)
    arrays = {}
    for key, shape in (("mean", (dim,)), ("sd", (dim,)), ("components", (-1, dim))):
        try:
            arr = np.asarray(d.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}: expected numbers") from None
        ok = arr.ndim == len(shape) and all(
            s in (-1, a) for s, a in zip(shape, arr.shape, strict=False)
        )
        if not ok or not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}.{key}: expected finite numbers of shape {shape}")
        arrays[key] = arr
    if not np.all(arrays["sd"] > 0):
        raise ValueError(f"{where}.sd: standard deviations must be > 0")
    if not 1 <= arrays["components"].shape[0] < dim:
        raise ValueError(f"{where}.components: expected 1..{dim - 1} components")
    error = column(d.get("error"), f"{where}.error")
    return PCAProfile(tuple(features), arrays["mean"], arrays["sd"], arrays["components"], error)


def fit_pca(
    X: np.ndarray, *, variance: float = 0.9, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean, sd, components, held-out rows) of the complete rows of ``X``; ``None`` when
    there are fewer than :data:`MIN_PCA_ROWS` complete rows or fewer than 2 features."""
    if not 0.0 < variance < 1.0:
        raise ValueError(f"pca_variance: expected a share in (0, 1), got {json_text(variance)}")
    rows = X[np.isfinite(X).all(axis=1)]
    if X.shape[1] < 2 or rows.shape[0] < MIN_PCA_ROWS:
        return None
    order = np.random.default_rng(seed).permutation(rows.shape[0])
    half = rows.shape[0] // 2
    fit, held = rows[order[:half]], rows[order[half:]]
    mean = fit.mean(axis=0)
    sd = fit.std(axis=0, ddof=1)
    sd[~(sd > 0)] = 1.0  # a constant feature: nothing to standardise
    _, s, vt = np.linalg.svd((fit - mean) / sd, full_matrices=False)
    explained = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
    k = int(np.searchsorted(explained, variance) + 1)
    k = max(1, min(k, vt.shape[0] - 1))  # one direction left out, or every error is 0
    return mean, sd, vt[:k], held
