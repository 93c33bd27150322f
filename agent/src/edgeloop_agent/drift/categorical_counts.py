"""Categorical features inside the drift monitor's pane ring (docs/drift.md, 5b).

Each profiled categorical feature gets (categories + 2) slots after the numeric bins:
[missing, each profiled category, unseen]. Counting into the same ring gives the same
window (count or time, tumbling or sliding) and a memory fixed whatever the stream sends.
Per window: Pearson's chi-square homogeneity test (reference counts against live ones) and
PSI on the same buckets; the monitor puts the p-values in the window's one family.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from edgeloop_agent.drift.chi2 import chi2_sf
from edgeloop_agent.drift.report import CategoricalDrift
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.profile import MIN_PSI_REFERENCE
from edgeloop_agent.wire.profile_sections import CategoricalColumnProfile


class Thresholds(Protocol):
    """What the flags read from ``DriftConfig`` (a protocol: no import cycle with monitor)."""

    @property
    def alpha(self) -> float: ...
    @property
    def psi_threshold(self) -> float: ...
    @property
    def missing_rate_delta(self) -> float | None: ...


class CategoricalCounts:
    """Slot layout, value-to-slot mapping and per-window tests of categorical features."""

    def __init__(self, columns: tuple[CategoricalColumnProfile, ...], first_slot: int) -> None:
        self.columns = columns
        base = first_slot
        self._index: list[dict[str, int]] = []
        bases, refs = [], []
        for c in columns:
            self._index.append({v: base + 1 + i for i, v in enumerate(c.categories)})
            bases.append(base)
            refs.append(c.counts.astype(np.float64))
            base += len(c.categories) + 2
        self.n_slots = base - first_slot
        self._base = np.asarray(bases, dtype=np.int64)
        self._ref = np.concatenate(refs) if refs else np.empty(0)
        self._ref_missing = np.array([c.missing_rate for c in columns])

    @property
    def nbytes(self) -> int:
        return int(self._base.nbytes + self._ref.nbytes + self._ref_missing.nbytes)

    def slots(self, categories: Any, n: int) -> np.ndarray:
        """Slot ids (n, columns) of a batch's values; ``None`` (or no values) is missing."""
        k = len(self._index)
        out = np.empty((n, k), dtype=np.int64)
        if categories is None:
            out[:] = self._base  # not given: missing
            return out
        arr = np.asarray(categories, dtype=object)
        if arr.ndim == 1 and k == 1:
            arr = arr.reshape(-1, 1)
        if arr.shape != (n, k):
            names = [c.name for c in self.columns]
            raise ValueError(f"categories: expected shape ({n}, {k}) for {names}, got {arr.shape}")
        for j, index in enumerate(self._index):
            base = int(self._base[j])
            unseen = base + len(index) + 1
            try:
                out[:, j] = [base if v is None else index.get(v, unseen) for v in arr[:, j]]
            except TypeError:  # an unhashable value (a list, a dict)
                raise ValueError(
                    f"categories: {json_text(self.columns[j].name)} holds a value that is "
                    "not a category (expected strings)"
                ) from None
        return out

    def tests(self, w: np.ndarray, eps: float, min_samples: int) -> dict[str, np.ndarray]:
        """Per categorical column: live counts, Pearson's chi-square homogeneity test of
        reference against live buckets (buckets empty on both sides dropped; equal to
        ``scipy.stats.chi2_contingency(correction=False)``) and PSI on the same buckets."""
        k = len(self._index)
        res = {key: np.full(k, math.nan) for key in ("n", "missing", "chi2", "p", "psi", "unseen")}
        res["dof"] = np.zeros(k)
        ref_start = 0
        for j, c in enumerate(self.columns):
            width = len(c.categories) + 1
            ref = self._ref[ref_start : ref_start + width]
            ref_start += width
            base = int(self._base[j])
            live = w[base + 1 : base + 1 + width].astype(np.float64)
            m, n = float(live.sum()), float(ref.sum())
            res["n"][j], res["missing"][j] = m, float(w[base])
            if m == 0 or n == 0:
                continue
            total = ref + live
            used = total > 0
            share = total[used] / (n + m)
            e_ref, e_live = share * n, share * m
            chi2 = float(
                np.sum((ref[used] - e_ref) ** 2 / e_ref + (live[used] - e_live) ** 2 / e_live)
            )
            dof = int(used.sum()) - 1
            a, e = np.maximum(live / m, eps), np.maximum(ref / n, eps)
            res["chi2"][j], res["dof"][j] = chi2, dof
            res["p"][j] = chi2_sf(chi2, dof) if dof >= 1 else 1.0
            res["psi"][j] = float(np.sum((a - e) * np.log(a / e)))
            res["unseen"][j] = live[-1] / m
        ref_n = np.array([c.n for c in self.columns])
        res["judged"] = (res["n"] >= min_samples) & (ref_n > 0)
        res["psi_judged"] = res["judged"] & (ref_n >= MIN_PSI_REFERENCE)
        return res

    def report(
        self, cat: dict[str, np.ndarray], adj: np.ndarray, enough: bool, cfg: Thresholds
    ) -> tuple[CategoricalDrift, ...]:
        out = []
        for j, c in enumerate(self.columns):
            m, missing = int(cat["n"][j]), int(cat["missing"][j])
            rate = missing / (m + missing) if m + missing else math.nan
            sig = bool(cat["judged"][j]) and bool(adj[j] < cfg.alpha)
            hits = (
                ("chi2", sig),
                ("psi", sig and bool(cat["psi_judged"][j]) and cat["psi"][j] >= cfg.psi_threshold),
                (
                    "missing",
                    enough
                    and cfg.missing_rate_delta is not None
                    and rate - float(self._ref_missing[j]) >= cfg.missing_rate_delta,
                ),
            )
            reasons = tuple(r for r, hit in hits if hit)
            out.append(
                CategoricalDrift(
                    c.name,
                    m,
                    rate,
                    float(self._ref_missing[j]),
                    float(cat["psi"][j]),
                    float(cat["chi2"][j]),
                    int(cat["dof"][j]),
                    float(cat["p"][j]),
                    float(adj[j]),
                    float(cat["unseen"][j]),
                    bool(reasons),
                    reasons,
                )
            )
        return tuple(out)
