"""Streaming data-drift monitor: one per model variant.

``update(X, output)`` bins a micro-batch (one ``searchsorted`` for all columns, see
``binning.py``) into the open pane of a window ring (``window.py``); every window
that completes yields a :class:`DriftReport` with, per feature and for the output,
PSI on the coarse bins, the binned two-sample KS statistic and its p-value, the
missing rate and a drift flag, plus a dataset-level decision corrected for testing
many features. Memory is fixed at construction: O(columns x fine bins x panes).

Categorical features (``profile.categorical``) are counted into extra slots of the same
pane ring, so they share the window (count or time, tumbling or sliding) and its memory
bound; their chi-square p-values join the numeric features' family. A PCA section
(``profile.pca``) adds the batch's reconstruction errors as one derived column, binned and
KS-tested like a feature, its p-value one more member of the same family.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgeloop_agent.drift.binning import FlatBinner
from edgeloop_agent.drift.categorical_counts import CategoricalCounts
from edgeloop_agent.drift.chi2 import chi2_sf
from edgeloop_agent.drift.ks import MAX_AUTO_N, KsMethod, ks_pvalue, ks_statistic
from edgeloop_agent.drift.multitest import Correction, adjust_pvalues
from edgeloop_agent.drift.psi import DEFAULT_EPS, psi_segments
from edgeloop_agent.drift.report import ColumnDrift, DriftReport
from edgeloop_agent.drift.window import PaneRing, RowRing, WindowConfig
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.profile import MIN_PSI_REFERENCE, ReferenceProfile

_MAX_BUFFER_ROWS = 4096
# Exact KS mode keeps window.size x columns raw floats: 2e6 values is 16 MB.
MAX_EXACT_VALUES = 2_000_000

KsMode = Literal["binned", "exact"]


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and window of a :class:`DriftMonitor` (defaults in ``docs/drift.md``).

    A feature drifts when its corrected KS p-value < ``alpha``, or its PSI >=
    ``psi_threshold``, or its missing rate exceeds the reference one by at least
    ``missing_rate_delta`` (``None`` disables that check). No column is judged on fewer
    than ``min_samples`` non-missing values, and no window with fewer rows.
    ``ks_method="auto"`` is scipy's choice (exact if max(n, m) <= 10 000) but falls back
    to the asymptotic distribution once ``n * m > ks_exact_max_nm``, to bound report cost.
    ``ks_mode="exact"`` (count windows only) keeps the raw window and tests it against
    the raw reference sample stored in the profile (``exact_sample``) instead of bins.
    """

    window: WindowConfig = field(default_factory=WindowConfig)
    psi_threshold: float = 0.2
    alpha: float = 0.05
    correction: Correction = "bh"
    min_samples: int = 200
    psi_eps: float = DEFAULT_EPS
    missing_rate_delta: float | None = 0.1
    ks_method: KsMethod = "auto"
    ks_exact_max_nm: int = 100_000
    ks_mode: KsMode = "binned"

    def __post_init__(self) -> None:
        if not isinstance(self.window, WindowConfig):
            raise ValueError(f"window: expected a WindowConfig, got {type(self.window).__name__}")
        _check_range(self.psi_threshold, "psi_threshold", 0.0, math.inf, lo_open=True)
        _check_range(self.alpha, "alpha", 0.0, 1.0, lo_open=True, hi_open=True)
        _check_range(self.psi_eps, "psi_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.correction not in ("bh", "bonferroni"):
            raise ValueError(
                f"correction: expected 'bh' or 'bonferroni', got {json_text(self.correction)}"
            )
        if self.ks_mode not in ("binned", "exact"):
            raise ValueError(
                f"ks_mode: expected 'binned' or 'exact', got {json_text(self.ks_mode)}"
            )
        if self.ks_mode == "exact" and self.window.kind != "count":
            raise ValueError("ks_mode='exact' needs a count window (window.kind='count')")
        if self.ks_method not in ("auto", "exact", "asymp"):
            raise ValueError(
                f"ks_method: expected 'auto', 'exact' or 'asymp', got {json_text(self.ks_method)}"
            )
        for name in ("min_samples", "ks_exact_max_nm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {json_text(v)}")
        if self.missing_rate_delta is not None:
            _check_range(self.missing_rate_delta, "missing_rate_delta", 0.0, 1.0, lo_open=True)


class DriftMonitor:
    """Data drift of one model variant against its training-time reference profile."""

    def __init__(
        self,
        profile: ReferenceProfile | dict[str, Any],
        config: DriftConfig | None = None,
    ) -> None:
        if isinstance(profile, dict):
            profile = ReferenceProfile.from_dict(profile)
        if not isinstance(profile, ReferenceProfile):
            raise ValueError(
                f"profile: expected a ReferenceProfile or its dict, got {type(profile).__name__}"
            )
        config = DriftConfig() if config is None else config
        if not isinstance(config, DriftConfig):
            raise ValueError(f"config: expected a DriftConfig, got {type(config).__name__}")
        self.profile = profile
        self.config = config
        self._pca = profile.pca
        # Monitored numeric columns: features, the output if profiled, the PCA error if any.
        cols = profile.columns + ((self._pca.error,) if self._pca is not None else ())
        self._columns = cols
        self._n_features = len(profile.features)
        self._n_cols = len(cols)
        self._binner = FlatBinner([c.edges for c in cols])
        self._cat = CategoricalCounts(profile.categorical, self._binner.n_slots)
        self._ring = PaneRing(config.window.n_panes, self._binner.n_slots + self._cat.n_slots)
        self._buf = np.empty((0, self._n_cols))
        self._rows_seen = 0
        self._pane_id: int | None = None  # time windows: index of the open pane
        self._latest: DriftReport | None = None
        self._rows: RowRing | None = None
        if config.ks_mode == "exact":
            self._rows = self._exact_ring()
        self._prepare_report_tables()

    # ------------------------------------------------------------------ public API
    @property
    def feature_names(self) -> list[str]:
        return self.profile.feature_names

    @property
    def rows_seen(self) -> int:
        return self._rows_seen

    @property
    def nbytes(self) -> int:
        """Bytes held by the monitor's arrays (window ring, edge tables, buffers)."""
        tables = sum(
            a.nbytes
            for a in (
                self._ref_cdf,
                self._edge_slot,
                self._edge_base,
                self._edge_col,
                self._edge_starts,
                self._psi_take,
                self._psi_starts_all,
                self._psi_ref,
                self._psi_col,
                self._psi_col_starts,
                self._psi_judged,
                self._psi_ref_n,
            )
        )
        raw = self._rows.nbytes if self._rows is not None else 0
        samples = sum(c.sample.nbytes for c in self._columns if c.sample is not None)
        cat = self._cat.nbytes
        pca = 0 if self._pca is None else self._pca.components.nbytes + 2 * self._pca.mean.nbytes
        return int(
            self._binner.nbytes
            + self._ring.nbytes
            + self._buf.nbytes
            + tables
            + raw
            + samples
            + cat
            + pca
        )

    def update(
        self,
        X: np.ndarray,
        output: np.ndarray | None = None,
        now: float | None = None,
        categories: Any = None,
    ) -> list[DriftReport]:
        """Add a micro-batch; return the reports of windows this batch completed.

        ``X``: (n_rows, n_features) or one row (n_features,), numeric, NaN allowed.
        ``output``: (n_rows,) model outputs if the profile has an output column; when
        omitted the output counts as missing. ``now``: the batch's timestamp in seconds
        (time windows; defaults to ``time.time()``). An empty batch only advances time.
        ``categories``: (n_rows, n_categorical) values of the profile's categorical
        features, in its order (strings; ``None`` = missing); omitted: all missing.
        """
        vals = self._batch(X, output)
        n = vals.shape[0]
        # An empty batch skips the binner; its slots are an empty array of the same shape.
        slots = self._binner.transform(vals) if n else np.empty((0, *vals.shape[1:]), np.int64)
        if self._cat.n_slots:
            slots = np.concatenate([slots, self._cat.slots(categories, n)], axis=1)
        reports: list[DriftReport] = []
        win = self.config.window
        if win.kind == "count":
            pane_rows = int(win.pane_size)
            ring = self._ring
            pos = 0
            while pos < n:
                take = min(n - pos, pane_rows - ring.current_rows)
                ring.add(slots[pos : pos + take].reshape(-1), take)
                if self._rows is not None:
                    self._rows.add(vals[pos : pos + take])
                pos += take
                self._rows_seen += take
                if ring.current_rows == pane_rows:
                    ring.close()
                    if ring.closed >= win.n_panes:
                        end = self._rows_seen
                        reports.append(self._report(end - int(win.size), end))
        else:
            t = time.time() if now is None else now
            numeric = isinstance(t, (int, float, np.integer, np.floating))
            if isinstance(t, bool) or not numeric or not math.isfinite(t):
                raise ValueError(
                    f"now: expected a finite timestamp in seconds, got {json_text(now)}"
                )
            pane = math.floor(t / win.pane_size)
            if self._pane_id is None:
                self._pane_id = pane
            elif pane > self._pane_id:
                reports.extend(self._advance_to(pane))
            # A clock that steps back keeps filling the open pane rather than rewriting history.
            if n:
                self._ring.add(slots.reshape(-1), n)
                self._rows_seen += n
        if reports:
            self._latest = reports[-1]
        return reports

    def report(self) -> DriftReport | None:
        """The latest completed window's report, if any."""
        return self._latest

    def reset(self) -> None:
        """Forget all live data (e.g. after a model swap); the profile stays."""
        self._ring.clear()
        if self._rows is not None:
            self._rows.clear()
        self._rows_seen = 0
        self._pane_id = None
        self._latest = None

    # ------------------------------------------------------------------ internals
    def _batch(self, X: np.ndarray, output: np.ndarray | None) -> np.ndarray:
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"X: expected numeric values: {exc}") from None
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self._n_features:
            raise ValueError(
                f"X: expected shape (n_rows, {self._n_features}) for features "
                f"{self.feature_names[:5]}{'...' if self._n_features > 5 else ''}, "
                f"got {X.shape}"
            )
        n = X.shape[0]
        if self.profile.output is None and output is not None:
            raise ValueError("output: this profile has no output column to compare against")
        if self._n_cols == self._n_features:
            return X
        out = None
        if self.profile.output is not None and output is not None:
            try:
                out = np.asarray(output, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"output: expected numeric values: {exc}") from None
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            elif out.ndim == 0:
                out = out.reshape(1)
            if out.shape != (n,):
                raise ValueError(f"output: expected shape ({n},) to match X, got {out.shape}")
        if self._buf.shape[0] < n:
            self._buf = np.empty((min(max(n, 64), _MAX_BUFFER_ROWS), self._n_cols))
        vals = self._buf[:n] if n <= self._buf.shape[0] else np.empty((n, self._n_cols))
        vals[:, : self._n_features] = X
        if self.profile.output is not None:
            vals[:, self._n_features] = np.nan if out is None else out
        if self._pca is not None:
            vals[:, -1] = self._pca.errors(X)  # a row with a missing feature: NaN, missing
        return vals

    def _exact_ring(self) -> RowRing:
        size = int(self.config.window.size)
        if size * self._n_cols > MAX_EXACT_VALUES:
            raise ValueError(
                f"ks_mode='exact': window.size={size} x {self._n_cols} columns exceeds "
                f"{MAX_EXACT_VALUES} raw values; use a smaller window or ks_mode='binned'"
            )
        for col in self._columns:
            if col.n > 0 and col.sample is None:
                raise ValueError(
                    f"ks_mode='exact': profile column {json_text(col.name)} has no raw sample; "
                    "rebuild the profile with exact_sample > 0"
                )
        return RowRing(size, self._n_cols)

    def _advance_to(self, pane: int) -> list[DriftReport]:
        win = self.config.window
        reports: list[DriftReport] = []
        ring = self._ring
        assert self._pane_id is not None
        while self._pane_id < pane:
            ring.close()
            self._pane_id += 1
            if ring.window_rows > 0:
                end = self._pane_id * win.pane_size
                reports.append(self._report(end - win.size, end))
            elif ring.current_rows == 0:
                # Window empty: nothing to report until data arrives again.
                self._pane_id = pane
        return reports

    def _prepare_report_tables(self) -> None:
        cols = self._columns
        b = self._binner
        ref_cdf: list[np.ndarray] = []
        edge_slot: list[np.ndarray] = []
        edge_base: list[np.ndarray] = []
        edge_col: list[np.ndarray] = []
        edge_starts: list[int] = []
        psi_starts_all: list[int] = []
        psi_take: list[int] = []
        psi_ref: list[np.ndarray] = []
        psi_col: list[np.ndarray] = []
        psi_col_starts: list[int] = []
        n_edges = n_coarse = 0
        for c, col in enumerate(cols):
            o = int(b.slot_offsets[c])
            k = col.edges.size
            if col.n > 0:
                edge_starts.append(n_edges)
                ref_cdf.append(col.cdf_at_edges)
                edge_slot.append(o + 1 + np.arange(k))
                edge_base.append(np.full(k, o))
                edge_col.append(np.full(k, c))
                n_edges += k
            # Segments: [low] [coarse bins...] [high]; only coarse ones are kept.
            starts = [o, *(o + 1 + col.psi_starts).tolist(), o + k + 2]
            first = len(psi_starts_all)
            psi_starts_all.extend(starts)
            psi_take.extend(range(first + 1, first + 1 + col.psi_starts.size))
            psi_col_starts.append(n_coarse)
            psi_ref.append(col.psi_proportions)
            psi_col.append(np.full(col.psi_starts.size, c))
            n_coarse += col.psi_starts.size
        self._testable = np.array([c.n > 0 for c in cols])
        # PSI is judged only against references big enough for its null distribution to
        # be what the p-value assumes (profile.MIN_PSI_REFERENCE; docs/drift.md, 4.1).
        self._psi_judged = np.array([c.n >= MIN_PSI_REFERENCE for c in cols])
        self._psi_ref_n = np.array([c.n for c in cols], dtype=np.int64)
        self._ref_cdf = _cat(ref_cdf, np.float64)
        self._edge_slot = _cat(edge_slot, np.int64)
        self._edge_base = _cat(edge_base, np.int64)
        self._edge_col = _cat(edge_col, np.int64)
        self._edge_starts = np.asarray(edge_starts, dtype=np.int64)
        self._psi_starts_all = np.asarray(psi_starts_all, dtype=np.int64)
        self._psi_take = np.asarray(psi_take, dtype=np.int64)
        self._psi_ref = _cat(psi_ref, np.float64)
        self._psi_col = _cat(psi_col, np.int64)
        self._psi_col_starts = np.asarray(psi_col_starts, dtype=np.int64)
        exact = self.config.ks_mode == "exact"
        self._ref_n = np.array(
            [c.sample.size if exact and c.sample is not None else c.n for c in cols],
            dtype=np.int64,
        )
        self._ref_missing = np.array([c.missing_rate for c in cols])
        self._names = [c.name for c in cols]
        self._ks_bound = np.array(
            [(0.0 if exact else c.ks_d_bound) if c.n > 0 else math.nan for c in cols]
        )

    def _report(self, start: float, end: float) -> DriftReport:
        cfg = self.config
        b = self._binner
        w = self._ring.window
        rows = int(self._ring.window_rows)
        missing = w[b.low_slots] + w[b.high_slots]
        m = rows - missing
        with np.errstate(divide="ignore", invalid="ignore"):
            missing_rate = missing / rows if rows else np.full(self._n_cols, math.nan)
            cs = np.cumsum(w)
            live_cdf = (cs[self._edge_slot] - cs[self._edge_base]) / m[self._edge_col]
            d = np.full(self._n_cols, math.nan)
            if self._edge_starts.size:
                diff = np.abs(self._ref_cdf - live_cdf)
                d[self._testable] = np.maximum.reduceat(diff, self._edge_starts)
            coarse = np.add.reduceat(w, self._psi_starts_all)[self._psi_take]
            psi = psi_segments(
                self._psi_ref,
                coarse.astype(np.float64),
                m[self._psi_col].astype(np.float64),
                self._psi_col_starts,
                cfg.psi_eps,
            )
        psi[~self._testable] = math.nan
        if self._rows is not None:
            d = self._exact_statistics()
        d[m == 0] = math.nan

        p = np.full(self._n_cols, math.nan)
        for c in np.flatnonzero(self._testable & (m > 0)).tolist():
            dc = min(float(d[c]), 1.0)
            p[c] = ks_pvalue(dc, int(self._ref_n[c]), int(m[c]), self._ks_method(c, m))

        nf = self._n_features
        judged = self._testable & (m >= cfg.min_samples)
        psi_judged = judged & self._psi_judged
        psi_p = self._psi_pvalues(coarse, m, psi_judged)
        # One family for the dataset decision: every feature's KS and PSI p-values,
        # adjusted together, so "some feature drifted" keeps its rate <= alpha with both
        # tests in play (an uncorrected PSI rule flagged 54 % of null windows on a
        # 100-row reference with 20 features).
        ks_family = np.where(judged[:nf], p[:nf], math.nan)
        psi_family = np.where(psi_judged[:nf], psi_p[:nf], math.nan)
        cat = self._cat.tests(w, cfg.psi_eps, cfg.min_samples)
        cat_family = np.where(cat["judged"], cat["p"], math.nan)
        pca_col = self._n_cols - 1 if self._pca is not None else None
        pca_family = [] if pca_col is None else [p[pca_col] if judged[pca_col] else math.nan]
        family = np.concatenate([ks_family, psi_family, cat_family, pca_family])
        family_adj = adjust_pvalues(family, cfg.correction)
        p_adj = np.full(self._n_cols, math.nan)
        psi_adj = np.full(self._n_cols, math.nan)
        p_adj[:nf], psi_adj[:nf] = family_adj[:nf], family_adj[nf : 2 * nf]
        cat_adj = family_adj[2 * nf : 2 * nf + cat_family.size]
        if pca_col is not None:
            p_adj[pca_col] = family_adj[-1]
        if self.profile.output is not None:
            p_adj[nf] = p[nf] if judged[nf] else math.nan
            psi_adj[nf] = psi_p[nf]
        enough = rows >= cfg.min_samples

        # Flags as whole-array comparisons, then plain Python values for the dataclasses:
        # per-element numpy scalar access would dominate the report's cost. PSI flags need
        # both the size (PSI >= threshold) and significance within the family.
        with np.errstate(invalid="ignore"):
            flag_psi = (psi_judged & (psi >= cfg.psi_threshold) & (psi_adj < cfg.alpha)).tolist()
        flag_ks = (judged & (p_adj < cfg.alpha)).tolist()
        if enough and cfg.missing_rate_delta is not None:
            flag_missing = (missing_rate - self._ref_missing >= cfg.missing_rate_delta).tolist()
        else:
            flag_missing = [False] * self._n_cols
        if pca_col is not None:
            flag_missing[pca_col] = False  # a missing feature already says so itself
        columns: list[ColumnDrift] = []
        for c, (name, n_c, mr, ref_mr, ps, dc, bound, pc, pa, pp, ppa) in enumerate(
            zip(
                self._names,
                m.tolist(),
                np.broadcast_to(missing_rate, (self._n_cols,)).tolist(),
                self._ref_missing.tolist(),
                psi.tolist(),
                d.tolist(),
                self._ks_bound.tolist(),
                p.tolist(),
                p_adj.tolist(),
                psi_p.tolist(),
                psi_adj.tolist(),
                strict=True,
            )
        ):
            reasons = tuple(
                r
                for r, hit in (
                    ("psi", flag_psi[c]),
                    ("ks", flag_ks[c]),
                    ("missing", flag_missing[c]),
                )
                if hit
            )
            columns.append(
                ColumnDrift(
                    name, n_c, mr, ref_mr, ps, dc, bound, pc, pa, bool(reasons), reasons, pp, ppa
                )
            )
        features = tuple(columns[:nf])
        categorical = self._cat.report(cat, cat_adj, enough, cfg)
        multivariate = columns[pca_col] if pca_col is not None else None
        drifted = (
            any(f.drift for f in features)
            or any(c.drift for c in categorical)
            or bool(multivariate is not None and multivariate.drift)
        )
        return DriftReport(
            window_kind=cfg.window.kind,
            start=float(start),
            end=float(end),
            n_rows=rows,
            enough_data=enough,
            features=features,
            output=columns[nf] if self.profile.output is not None else None,
            dataset_drift=enough and drifted,
            ks_mode=cfg.ks_mode,
            correction=cfg.correction,
            alpha=cfg.alpha,
            psi_threshold=cfg.psi_threshold,
            missing_rate_delta=cfg.missing_rate_delta,
            min_samples=cfg.min_samples,
            categorical=categorical,
            multivariate=multivariate,
            pca_components=0 if self._pca is None else int(self._pca.components.shape[0]),
        )

    def _psi_pvalues(self, coarse: np.ndarray, m: np.ndarray, judged: np.ndarray) -> np.ndarray:
        """p-value behind each PSI: Pearson's chi-square homogeneity test on the PSI bins.

        Reference counts (exact, from the profile) against live counts, a 2 x bins table,
        chi2(bins - 1) (bins with no value on either side dropped). Not the PSI's own
        approximate null, (1/n + 1/m) chi2(bins - 1): PSI's log terms give it a heavier
        upper tail than that (simulated P(p <= 1e-3) was 1.8-2x nominal, P(p <= 1e-4)
        3.2-3.5x), while Pearson's statistic on the same bins stayed at or below nominal
        (bench/sim_drift_null.py; docs/drift.md, 4.1).
        """
        out = np.full(self._n_cols, math.nan)
        if not judged.any():
            return out
        n_ref = self._psi_ref_n[self._psi_col].astype(np.float64)
        n_live = m[self._psi_col].astype(np.float64)
        ref = self._psi_ref * n_ref
        live = coarse.astype(np.float64)
        total = ref + live
        with np.errstate(divide="ignore", invalid="ignore"):
            share = total / (n_ref + n_live)
            e_ref, e_live = share * n_ref, share * n_live
            terms = np.where(
                total > 0, (ref - e_ref) ** 2 / e_ref + (live - e_live) ** 2 / e_live, 0.0
            )
        x2 = np.add.reduceat(terms, self._psi_col_starts)
        used = np.add.reduceat((total > 0).astype(np.int64), self._psi_col_starts)
        for c in np.flatnonzero(judged):
            dof = int(used[c]) - 1
            out[c] = chi2_sf(float(x2[c]), dof) if dof >= 1 else 1.0
        return out

    def _exact_statistics(self) -> np.ndarray:
        assert self._rows is not None
        d = np.full(self._n_cols, math.nan)
        for c, col in enumerate(self._columns):
            x = self._rows.values[:, c]
            live = x[np.isfinite(x)]
            if col.sample is not None and col.sample.size and live.size:
                d[c] = ks_statistic(col.sample, live)
        return d

    def _ks_method(self, c: int, m: np.ndarray) -> KsMethod:
        cfg = self.config
        if cfg.ks_method != "auto":
            return cfg.ks_method
        n_ref, n_live = int(self._ref_n[c]), int(m[c])
        if max(n_ref, n_live) <= MAX_AUTO_N and n_ref * n_live <= cfg.ks_exact_max_nm:
            return "exact"
        return "asymp"


def _cat(xs: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if xs else np.empty(0, dtype)


def _check_range(
    v: object,
    name: str,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    if ok:
        x = float(v)  # type: ignore[arg-type]
        ok = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a number in {lb}{lo}, {hi}{rb}, got {json_text(v)}")
