"""What a drift monitor says about one completed window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgeloop_agent.wire.jsontext import json_text


@dataclass(frozen=True)
class ColumnDrift:
    """Drift statistics of one feature (or the model output) over one window.

    ``ks_p_adjusted`` and ``psi_p_adjusted`` are adjusted in one multiple-testing family
    (every judged feature's KS and PSI p-values) for features, and equal ``ks_p`` /
    ``psi_p`` for the output. ``psi_p`` is the chi-square approximation of PSI's null
    distribution; NaN where PSI is not judged (reference below ``MIN_PSI_REFERENCE``
    values, or fewer than ``min_samples`` live ones). Statistics that cannot be computed
    (no reference values, no live values) are NaN. ``reasons`` lists the triggered tests:
    ``"psi"``, ``"ks"``, ``"missing"``.
    """

    name: str
    n: int
    missing_rate: float
    reference_missing_rate: float
    psi: float
    ks_d: float
    ks_d_bound: float
    ks_p: float
    ks_p_adjusted: float
    drift: bool
    reasons: tuple[str, ...]
    psi_p: float = math.nan
    psi_p_adjusted: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "missing_rate": _num(self.missing_rate),
            "reference_missing_rate": _num(self.reference_missing_rate),
            "psi": _num(self.psi),
            "ks_d": _num(self.ks_d),
            "ks_d_bound": _num(self.ks_d_bound),
            "ks_p": _num(self.ks_p),
            "ks_p_adjusted": _num(self.ks_p_adjusted),
            "psi_p": _num(self.psi_p),
            "psi_p_adjusted": _num(self.psi_p_adjusted),
            "drift": self.drift,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class CategoricalDrift:
    """Drift of one categorical feature over one window: Pearson's chi-square homogeneity
    test of reference against live bucket counts (the categories kept in the profile plus
    "unseen"), its p-value adjusted in the window's one family, and PSI on the same buckets.
    ``reasons``: ``"chi2"``, ``"psi"`` (PSI >= threshold and the chi-square significant in
    the family), ``"missing"``. ``unseen_rate``: live share of categories the profile does
    not list."""

    name: str
    n: int
    missing_rate: float
    reference_missing_rate: float
    psi: float
    chi2: float
    chi2_dof: int
    chi2_p: float
    chi2_p_adjusted: float
    unseen_rate: float
    drift: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "n": self.n,
            "missing_rate": _num(self.missing_rate),
            "reference_missing_rate": _num(self.reference_missing_rate),
            "psi": _num(self.psi),
            "chi2": _num(self.chi2),
            "chi2_dof": self.chi2_dof,
            "chi2_p": _num(self.chi2_p),
            "chi2_p_adjusted": _num(self.chi2_p_adjusted),
            "unseen_rate": _num(self.unseen_rate),
            "drift": self.drift,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class DriftReport:
    """Window ``[start, end)`` in rows since the monitor started (count windows) or in
    the caller's clock, seconds (time windows)."""

    window_kind: str
    start: float
    end: float
    n_rows: int
    enough_data: bool
    features: tuple[ColumnDrift, ...]
    output: ColumnDrift | None
    dataset_drift: bool
    ks_mode: str
    correction: str
    alpha: float
    psi_threshold: float
    missing_rate_delta: float | None
    min_samples: int
    # Categorical features (profile.categorical), tested in the same family as the numeric.
    categorical: tuple[CategoricalDrift, ...] = ()
    # PCA reconstruction error (profile.pca) against its reference: one more member of the
    # family (its KS p-value); None without a PCA section.
    multivariate: ColumnDrift | None = None
    pca_components: int = 0

    @property
    def drifted_features(self) -> list[str]:
        named: list[ColumnDrift | CategoricalDrift] = [*self.features, *self.categorical]
        return [f.name for f in named if f.drift]

    def feature(self, name: str) -> ColumnDrift:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {json_text(name)} in this report")

    def categorical_feature(self, name: str) -> CategoricalDrift:
        for f in self.categorical:
            if f.name == name:
                return f
        raise KeyError(f"no categorical feature named {json_text(name)} in this report")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``."""
        return {
            "window": {
                "kind": self.window_kind,
                "start": _num(self.start),
                "end": _num(self.end),
                "n_rows": self.n_rows,
            },
            "enough_data": self.enough_data,
            "dataset_drift": self.dataset_drift,
            "drifted_features": self.drifted_features,
            "features": [f.to_dict() for f in self.features]
            + [c.to_dict() for c in self.categorical],
            "output": self.output.to_dict() if self.output is not None else None,
            "multivariate": self._multivariate_dict(),
            "ks_mode": self.ks_mode,
            "thresholds": {
                "correction": self.correction,
                "alpha": self.alpha,
                "psi": self.psi_threshold,
                "missing_rate_delta": self.missing_rate_delta,
                "min_samples": self.min_samples,
            },
        }

    def _multivariate_dict(self) -> dict[str, Any] | None:
        if self.multivariate is None:
            return None
        return {
            **self.multivariate.to_dict(),
            "method": "pca_reconstruction",
            "components": self.pca_components,
        }


def _num(x: float | None) -> float | None:
    if x is None or math.isnan(x):
        return None
    return float(x)
