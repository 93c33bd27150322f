"""Multivariate drift: PCA reconstruction error (numpy only).

Standalone version. The agent runs the wired one: ``DriftMonitor`` with the profile's
``categorical`` / ``pca`` sections (``wire/profile_sections.py``, ``categorical_counts.py``),
in the same window and multiple-testing family as the numeric features (docs/drift.md).

Per-feature tests cannot see a change in how features move together (two sensors that
always agreed start to disagree, each still with its usual distribution). Reconstruction
error can: a PCA fitted on the standardised reference keeps the directions that explain
``variance`` of it; rows that follow the reference's correlation structure are
reconstructed from those directions with a small error, rows that break it are not.

Profile (``build_pca_profile``, on the control node): the reference's means and standard
deviations, the kept components, fitted on one half of the reference rows, and the sorted
reconstruction errors of the *other* half (up to ``max_errors`` of them), so the reference
errors are out-of-sample like the live ones. Rows with a missing value are left out.

Monitor (``PCAMonitor``): per tumbling count window, the two-sample KS test of the window's
reconstruction errors against the reference errors (``ks.ks_pvalue``, exact where scipy is).
The p-value is meant to join the per-feature family (``multitest.adjust_pvalues``), like the
categorical p-values. Memory: components (k x d), two d-vectors, the reference errors and one
window of errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop_agent.drift.ks import ks_pvalue, ks_statistic
from edgeloop_agent.wire.jsontext import json_text

KIND = "edgeloop.drift.pca_profile"


def build_pca_profile(
    X: np.ndarray,
    feature_names: Sequence[str],
    *,
    variance: float = 0.9,
    max_errors: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """PCA profile of the reference rows (JSON-ready)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names) or X.shape[1] < 2:
        raise ValueError(
            f"X: expected (rows, {len(feature_names)}) with at least 2 features, got {X.shape}"
        )
    if not 0.0 < variance < 1.0:
        raise ValueError(f"variance: expected a share in (0, 1), got {json_text(variance)}")
    rows = X[np.isfinite(X).all(axis=1)]
    if rows.shape[0] < 200:
        raise ValueError(
            f"X: needs at least 200 complete rows for a PCA profile, got {rows.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows.shape[0])
    fit, held = rows[order[: rows.shape[0] // 2]], rows[order[rows.shape[0] // 2 :]]
    mean = fit.mean(axis=0)
    sd = fit.std(axis=0, ddof=1)
    sd[~(sd > 0)] = 1.0  # a constant feature: nothing to standardise
    z = (fit - mean) / sd
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, variance) + 1)
    k = min(k, vt.shape[0] - 1)  # at least one direction left out, or the error is always 0
    components = vt[:k]
    errors = np.sort(_errors(held, mean, sd, components))
    if errors.size > max_errors:
        errors = np.sort(rng.choice(errors, max_errors, replace=False))
    return {
        "kind": KIND,
        "version": 1,
        "features": list(feature_names),
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "components": components.tolist(),
        "reference_errors": errors.tolist(),
    }


def _errors(X: np.ndarray, mean: np.ndarray, sd: np.ndarray, comps: np.ndarray) -> np.ndarray:
    z = (X - mean) / sd
    back = (z @ comps.T) @ comps
    return np.sqrt(np.sum((z - back) ** 2, axis=1))


@dataclass(frozen=True)
class PCADrift:
    n: int
    mean_error: float
    reference_mean_error: float
    ks_d: float
    p: float


class PCAMonitor:
    """Tumbling count windows of reconstruction errors against the reference errors."""

    def __init__(self, profile: Mapping[str, Any], window: int) -> None:
        if not isinstance(profile, Mapping) or profile.get("kind") != KIND:
            raise ValueError("profile: expected the dict from build_pca_profile")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(
                f"window: expected an integer number of rows >= 2, got {json_text(window)}"
            )
        self.features = list(profile["features"])
        self._mean = np.asarray(profile["mean"], dtype=np.float64)
        self._sd = np.asarray(profile["sd"], dtype=np.float64)
        self._comps = np.asarray(profile["components"], dtype=np.float64)
        self._ref = np.asarray(profile["reference_errors"], dtype=np.float64)
        d = len(self.features)
        if self._mean.shape != (d,) or self._sd.shape != (d,) or self._comps.shape[1:] != (d,):
            raise ValueError("profile: mean, sd and components do not match the features")
        self.window = window
        self._buf = np.empty(window)
        self._filled = 0

    @property
    def nbytes(self) -> int:
        return int(
            self._mean.nbytes + self._sd.nbytes + self._comps.nbytes + self._ref.nbytes
            + self._buf.nbytes
        )  # fmt: skip

    def update(self, X: np.ndarray) -> list[PCADrift]:
        """Add rows (complete rows only count); reports of the windows they complete."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"X: expected (rows, {len(self.features)}), got {X.shape}")
        X = X[np.isfinite(X).all(axis=1)]
        errors = _errors(X, self._mean, self._sd, self._comps)
        reports = []
        i = 0
        while i < errors.size:
            take = min(self.window - self._filled, errors.size - i)
            self._buf[self._filled : self._filled + take] = errors[i : i + take]
            self._filled += take
            i += take
            if self._filled == self.window:
                reports.append(self._report())
                self._filled = 0
        return reports

    def _report(self) -> PCADrift:
        live = self._buf
        d = ks_statistic(self._ref, live)
        p = ks_pvalue(min(d, 1.0), self._ref.size, live.size)
        ref_mean = float(self._ref.mean()) if self._ref.size else math.nan
        return PCADrift(int(live.size), float(live.mean()), ref_mean, d, p)
