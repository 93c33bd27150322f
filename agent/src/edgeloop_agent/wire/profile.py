"""Reference profiles: what "normal" looked like at training time.

A profile is built once, on the control node, from the training data of a model
version, and shipped inside the model artifact as plain JSON. The agent parses it
back with :meth:`ReferenceProfile.from_dict` and compares live windows against it.

Per numeric column (each feature and, optionally, the model output) it holds:

* ``edges``: strictly increasing, finite *fine* bin edges. They are reference
  quantiles (the ``inverted_cdf`` definition, so every edge is an observed value),
  including the reference minimum and maximum. Values that repeat with a noticeable
  mass also get a "guard" edge at the next float below them, so a point mass sits
  alone in its bin ``(prev(v), v]``. Fine bin ``i`` is ``(edges[i-1], edges[i]]``
  with ``edges[-1] = -inf`` and ``edges[len] = +inf``: ``len(edges) + 1`` bins.
* ``counts``: the exact number of reference values in each fine bin, so the
  reference CDF is known exactly at every edge.
* ``psi_starts``: the fine-bin index where each coarse PSI bin starts. Coarse bins
  are unions of fine bins, so one ``searchsorted`` pass on the live side serves both
  PSI and KS.
* ``ks_d_bound``: how far the exact two-sample KS statistic can exceed the one
  computed from these bins (see ``docs/drift.md``); at most about ``1/fine_bins``.
* ``n`` / ``n_missing``: non-missing and missing (NaN or +-inf) reference values.
* ``sample`` (optional, ``exact_sample > 0``): up to ``exact_sample`` raw reference
  values (all of them, or a seeded random subsample), sorted, for the monitor's exact
  KS mode.

Optional sections (``profile_sections.py``; absent in older profiles, which keep working):

* ``categorical``: reference category frequencies of each categorical feature, with an
  "unseen" bucket (``categorical=`` of :func:`build_reference_profile`);
* ``pca``: a PCA of the numeric features and the reference reconstruction-error column
  (``pca_variance=``), for multivariate (correlation) drift.

``X`` holds only numeric features; categorical ones go in ``categorical``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.profile_sections import (
    PCA_ERROR_NAME,
    CategoricalColumnProfile,
    PCAProfile,
    build_categorical_columns,
    fit_pca,
    parse_pca,
    pca_errors,
)

PROFILE_KIND = "edgeloop.drift.reference_profile"
PROFILE_VERSION = 1
OUTPUT_NAME = "__output__"

_MAX_FINE_BINS = 10_000
# Below this many non-missing reference values a column is monitored by KS only: PSI's
# null distribution, (1/n + 1/m) chi2(bins - 1), carries the reference's own sampling noise
# (1/n), and with 100 rows that alone put PSI >= 0.2 on ~15 % of null windows per feature.
# Simulated in bench/sim_drift_null.py; docs/drift.md, 4.1.
MIN_PSI_REFERENCE = 200
_MAX_EXACT_SAMPLE = 100_000


@dataclass(frozen=True)
class ColumnProfile:
    """Reference distribution of one numeric column (a feature or the model output)."""

    name: str
    n: int
    n_missing: int
    edges: np.ndarray  # float64, strictly increasing, finite
    counts: np.ndarray  # int64, len(edges) + 1, sums to n
    psi_starts: np.ndarray  # int64, first fine bin of each PSI bin; starts with 0
    ks_d_bound: float
    sample: np.ndarray | None = None  # sorted raw reference values, exact KS mode

    @property
    def missing_rate(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else 0.0

    @property
    def n_bins(self) -> int:
        return int(self.edges.size + 1)

    @property
    def psi_proportions(self) -> np.ndarray:
        """Reference proportion of non-missing values in each coarse PSI bin."""
        coarse = np.add.reduceat(self.counts, self.psi_starts).astype(np.float64)
        return coarse / self.n if self.n else coarse

    @property
    def cdf_at_edges(self) -> np.ndarray:
        """Reference ECDF evaluated at each fine edge (exact)."""
        cum = np.cumsum(self.counts[:-1]).astype(np.float64)
        return cum / self.n if self.n else cum

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "n": int(self.n),
            "n_missing": int(self.n_missing),
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "psi_starts": [int(s) for s in self.psi_starts],
            "ks_d_bound": float(self.ks_d_bound),
        }
        if self.sample is not None:
            d["sample"] = [float(v) for v in self.sample]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ColumnProfile:
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        missing = {"name", "n", "n_missing", "edges", "counts", "psi_starts", "ks_d_bound"} - set(d)
        if missing:
            raise ValueError(f"{where}: missing field(s) {sorted(missing)}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name: expected a non-empty string, got {json_text(name)}")
        where = f"{where} ({json_text(name)})"
        n = _as_count(d["n"], f"{where}.n")
        n_missing = _as_count(d["n_missing"], f"{where}.n_missing")
        edges = _as_float_array(d["edges"], f"{where}.edges") + 0.0
        if edges.size and not np.all(np.isfinite(edges)):
            raise ValueError(f"{where}.edges: all edges must be finite")
        if edges.size > 1 and not np.all(np.diff(edges) > 0):
            bad = int(np.argmin(np.diff(edges) > 0))
            raise ValueError(
                f"{where}.edges: must be strictly increasing, but "
                f"edges[{bad}]={json_text(edges[bad])} "
                f">= edges[{bad + 1}]={json_text(edges[bad + 1])}"
            )
        counts = _as_int_array(d["counts"], f"{where}.counts")
        if counts.size != edges.size + 1:
            raise ValueError(
                f"{where}.counts: expected len(edges) + 1 = {edges.size + 1} counts, "
                f"got {counts.size}"
            )
        if np.any(counts < 0):
            raise ValueError(f"{where}.counts: counts must be >= 0")
        if int(counts.sum()) != n:
            raise ValueError(f"{where}.counts: counts sum to {int(counts.sum())}, but n={n}")
        if n > 0 and edges.size == 0:
            raise ValueError(f"{where}.edges: a column with n={n} > 0 needs at least one edge")
        starts = _as_int_array(d["psi_starts"], f"{where}.psi_starts")
        if starts.size == 0 or starts[0] != 0:
            raise ValueError(
                f"{where}.psi_starts: must start with 0, got {json_text(starts.tolist())}"
            )
        if np.any(np.diff(starts) <= 0) or starts[-1] >= counts.size:
            raise ValueError(
                f"{where}.psi_starts: must be strictly increasing fine-bin indices "
                f"< {counts.size}, got {json_text(starts.tolist())}"
            )
        bound = d["ks_d_bound"]
        if (
            isinstance(bound, bool)
            or not isinstance(bound, (int, float))
            or not (0.0 <= float(bound) <= 1.0)
        ):
            raise ValueError(
                f"{where}.ks_d_bound: expected a number in [0, 1], got {json_text(bound)}"
            )
        sample = None
        if d.get("sample") is not None:
            sample = np.sort(_as_float_array(d["sample"], f"{where}.sample"))
            if not np.all(np.isfinite(sample)) or sample.size > n:
                raise ValueError(
                    f"{where}.sample: expected at most n={n} finite values, got {sample.size}"
                )
        return cls(name, n, n_missing, edges, counts, starts, float(bound), sample)


@dataclass(frozen=True)
class ReferenceProfile:
    """Parsed, validated reference profile of one model version."""

    features: tuple[ColumnProfile, ...]
    output: ColumnProfile | None
    psi_bins: int
    fine_bins: int
    categorical: tuple[CategoricalColumnProfile, ...] = ()
    pca: PCAProfile | None = None

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def has_output(self) -> bool:
        return self.output is not None

    @property
    def columns(self) -> tuple[ColumnProfile, ...]:
        """Features, then the output if present: the column order used by the monitor."""
        return self.features + ((self.output,) if self.output is not None else ())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "psi_bins": int(self.psi_bins),
            "fine_bins": int(self.fine_bins),
            "features": [c.to_dict() for c in self.features],
            "output": self.output.to_dict() if self.output is not None else None,
        }
        # Written only when present: a profile without them is byte-identical to before.
        if self.categorical:
            d["categorical"] = [c.to_dict() for c in self.categorical]
        if self.pca is not None:
            d["pca"] = self.pca.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ReferenceProfile:
        """Parse and validate a profile dict; raises ``ValueError`` naming the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"profile: expected an object, got {type(d).__name__}")
        if d.get("kind") != PROFILE_KIND:
            raise ValueError(
                f"profile.kind: expected {json_text(PROFILE_KIND)}, got {json_text(d.get('kind'))}"
            )
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"profile.version: this agent reads version {PROFILE_VERSION}, "
                f"got {json_text(d.get('version'))}"
            )
        psi_bins = _as_count(d.get("psi_bins"), "profile.psi_bins")
        fine_bins = _as_count(d.get("fine_bins"), "profile.fine_bins")
        feats = d.get("features")
        if not isinstance(feats, list) or not feats:
            raise ValueError("profile.features: expected a non-empty list")
        features = tuple(
            ColumnProfile.from_dict(f, f"profile.features[{i}]") for i, f in enumerate(feats)
        )
        names = [c.name for c in features]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"profile.features: duplicate feature name(s) {dupes}")
        out = d.get("output")
        output = None if out is None else ColumnProfile.from_dict(out, "profile.output")
        cats = d.get("categorical") or []
        if not isinstance(cats, list):
            raise ValueError("profile.categorical: expected a list")
        categorical = tuple(
            CategoricalColumnProfile.from_dict(c, f"profile.categorical[{i}]")
            for i, c in enumerate(cats)
        )
        every = names + [c.name for c in categorical]
        dupes = sorted({x for x in every if every.count(x) > 1})
        if dupes:
            raise ValueError(f"profile.categorical: name(s) {dupes} also used elsewhere")
        raw_pca = d.get("pca")
        pca = None if raw_pca is None else parse_pca(raw_pca, names, ColumnProfile.from_dict)
        return cls(features, output, psi_bins, fine_bins, categorical, pca)


def build_reference_profile(
    X: np.ndarray,
    feature_names: Sequence[str],
    output: np.ndarray | None,
    *,
    psi_bins: int = 10,
    fine_bins: int = 200,
    exact_sample: int = 0,
    categorical: Mapping[str, Iterable[str | None]] | None = None,
    max_categories: int = 50,
    pca_variance: float | None = None,
) -> dict[str, Any]:
    """Profile the training data of a model version; returns a JSON-serialisable dict.

    Parameters
    ----------
    X : array of shape (n_rows, n_features), numeric. NaN and +-inf count as missing
        and are left out of the quantiles; the missing rate is recorded.
    feature_names : one unique, non-empty name per column of ``X``.
    output : model output on the same rows (positive-class score or regression
        value), shape (n_rows,) or (n_rows, 1); ``None`` to profile features only.
    psi_bins : number of coarse quantile bins for PSI (fewer for tied data).
    fine_bins : number of fine quantile bins for the KS statistic; the binned KS
        statistic is within about ``1 / fine_bins`` of the exact one.
    exact_sample : also keep up to this many raw values per column (a seeded random
        subsample beyond that) so monitors can run the exact KS test; 0 keeps none.
        Costs about 20 bytes of JSON per value.
    categorical : {name: values} of categorical features on the same rows (strings,
        ``None`` = missing); their ``max_categories`` most frequent categories are kept,
        the rest count as "unseen".
    pca_variance : fit a PCA keeping this share of the variance of the standardised
        features, for multivariate drift; ``None`` (or fewer than
        ``profile_sections.MIN_PCA_ROWS`` complete rows, or one feature) builds none.
    """
    psi_bins = _check_int(psi_bins, "psi_bins", 2, _MAX_FINE_BINS)
    fine_bins = _check_int(fine_bins, "fine_bins", 2, _MAX_FINE_BINS)
    exact_sample = _check_int(exact_sample, "exact_sample", 0, _MAX_EXACT_SAMPLE)
    if fine_bins < psi_bins:
        raise ValueError(f"fine_bins={fine_bins} must be >= psi_bins={psi_bins}")
    X = _as_2d_float(X, "X")
    n_rows, n_features = X.shape
    if n_rows == 0:
        raise ValueError("X: needs at least one row to build a reference profile")
    if isinstance(feature_names, str):
        raise ValueError("feature_names: expected a sequence of strings, got a single string")
    names = list(feature_names)
    if len(names) != n_features:
        raise ValueError(f"feature_names: got {len(names)} names for X with {n_features} columns")
    for i, nm in enumerate(names):
        if not isinstance(nm, str) or not nm:
            raise ValueError(
                f"feature_names[{i}]: expected a non-empty string, got {json_text(nm)}"
            )
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise ValueError(f"feature_names: duplicate name(s) {dupes}")
    if OUTPUT_NAME in names:
        raise ValueError(
            f"feature_names: {json_text(OUTPUT_NAME)} is reserved for the model output"
        )

    out_col = None
    if output is not None:
        out = _as_float(output, "output")
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1 or out.shape[0] != n_rows:
            raise ValueError(
                f"output: expected shape ({n_rows},) or ({n_rows}, 1) to match X, got {out.shape}"
            )
        out_col = _profile_column(out, OUTPUT_NAME, psi_bins, fine_bins, exact_sample)

    profile = ReferenceProfile(
        features=tuple(
            _profile_column(X[:, j], names[j], psi_bins, fine_bins, exact_sample)
            for j in range(n_features)
        ),
        output=out_col,
        psi_bins=psi_bins,
        fine_bins=fine_bins,
        categorical=build_categorical_columns(categorical or {}, max_categories=max_categories),
        pca=_pca_section(X, names, pca_variance, psi_bins, fine_bins, exact_sample),
    )
    small = [c.name for c in profile.columns if 0 < c.n < MIN_PSI_REFERENCE]
    if small:
        warnings.warn(
            f"reference profile: {len(small)} column(s) have fewer than {MIN_PSI_REFERENCE} "
            f"non-missing reference values ({', '.join(small[:5])}"
            f"{', ...' if len(small) > 5 else ''}); they are monitored by KS only (no PSI "
            f"flags), see docs/drift.md",
            SmallReferenceWarning,
            stacklevel=2,
        )
    return profile.to_dict()


def _pca_section(
    X: np.ndarray,
    names: list[str],
    variance: float | None,
    psi_bins: int,
    fine_bins: int,
    exact_sample: int,
) -> PCAProfile | None:
    if variance is None:
        return None
    fitted = fit_pca(X, variance=variance)
    if fitted is None:
        return None
    mean, sd, comps, held = fitted
    errors = pca_errors(held, mean, sd, comps)
    error = _profile_column(errors, PCA_ERROR_NAME, psi_bins, fine_bins, exact_sample)
    return PCAProfile(tuple(names), mean, sd, comps, error)


class SmallReferenceWarning(UserWarning):
    """A reference profile column too small for PSI; the monitor uses KS only there."""


def _profile_column(
    col: np.ndarray, name: str, psi_bins: int, fine_bins: int, exact_sample: int
) -> ColumnProfile:
    finite = np.isfinite(col)
    # + 0.0 turns -0.0 into +0.0: edges must compare like floats in the agent's integer keys.
    v = np.sort(col[finite]) + 0.0
    n = int(v.size)
    n_missing = int(col.size - n)
    if n == 0:
        # Nothing to compare against: the monitor will only track the missing rate.
        return ColumnProfile(
            name,
            0,
            n_missing,
            np.empty(0),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            1.0,
        )

    # inverted_cdf quantiles at k/fine_bins, k = 0..fine_bins (k=0: the minimum), computed
    # with integer arithmetic so every edge is an observed value and the bound holds.
    k = np.arange(fine_bins + 1, dtype=np.int64)
    idx = np.maximum((k * n + fine_bins - 1) // fine_bins - 1, 0)
    edges = np.unique(v[idx])

    # A value carrying a noticeable point mass gets its own bin (prev(v), v]: without
    # it that mass would widen the KS error bound of the bin it closes.
    ties = np.searchsorted(v, edges, "right") - np.searchsorted(v, edges, "left")
    heavy = (ties >= 2) & (ties * 4 * fine_bins >= n)
    if heavy.any():
        guards = np.nextafter(edges[heavy], -np.inf)
        edges = np.unique(np.concatenate([edges, guards[np.isfinite(guards)]]))

    counts = np.bincount(np.searchsorted(edges, v, "left"), minlength=edges.size + 1)
    counts = counts.astype(np.int64)

    # KS bound: within bin (a, b] the ECDF difference can move by at most the reference
    # mass of that bin, unless no float lies strictly inside (a, b) (guard bins).
    lo = np.concatenate([[-np.inf], edges])
    hi = np.concatenate([edges, [np.inf]])
    has_interior = np.nextafter(lo, np.inf) < hi
    ks_d_bound = float(counts[has_interior].max() / n)

    # PSI boundaries: the fine edge whose reference CDF is nearest each j/psi_bins,
    # restricted to edges with CDF strictly inside (0, 1) so no PSI bin is empty.
    cdf = np.cumsum(counts[:-1]) / n
    inner = np.flatnonzero((cdf > 0) & (cdf < 1))
    starts = [0]
    if inner.size:
        targets = np.arange(1, psi_bins) / psi_bins
        pick = inner[np.argmin(np.abs(cdf[inner][None, :] - targets[:, None]), axis=1)]
        # Equal CDF means an empty coarse bin between the picks: keep the first.
        _, first = np.unique(cdf[pick], return_index=True)
        starts += sorted(int(p) + 1 for p in np.unique(pick[first]))
    sample = None
    if exact_sample:
        # A random subsample (not evenly spaced order statistics) keeps the KS null
        # distribution valid for the smaller reference size; v is sorted, so is this.
        pick = np.arange(n) if n <= exact_sample else _sample_rng(n).choice(n, exact_sample, False)
        sample = v[np.sort(pick)]
    return ColumnProfile(
        name, n, n_missing, edges, counts, np.asarray(starts, np.int64), ks_d_bound, sample
    )


def _sample_rng(n: int) -> np.random.Generator:
    # Seeded by the column size only: the same data always gives the same profile.
    return np.random.default_rng(n)


def _as_2d_float(X: Any, field: str) -> np.ndarray:
    arr = _as_float(X, field)
    if arr.ndim != 2:
        raise ValueError(f"{field}: expected a 2-D array (n_rows, n_features), got ndim={arr.ndim}")
    return arr


def _as_float(a: Any, field: str) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{field}: expected numeric values (categorical columns must be dropped first): {exc}"
        ) from None


def _check_int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{field}: expected an integer, got {json_text(value)}")
    if not (lo <= int(value) <= hi):
        raise ValueError(f"{field}: expected {lo} <= {field} <= {hi}, got {value}")
    return int(value)


def _as_count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: expected a non-negative integer, got {json_text(value)}")
    return value


def _as_float_array(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        raise ValueError(f"{field}: expected a list of numbers")
    return np.asarray(value, dtype=np.float64)


def _as_int_array(value: Any, field: str) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise ValueError(f"{field}: expected a list of integers")
    return np.asarray(value, dtype=np.int64)
