"""Drift of categorical features: reference frequencies, a chi-square test and PSI.

Standalone version. The agent runs the wired one: ``DriftMonitor`` with the profile's
``categorical`` / ``pca`` sections (``wire/profile_sections.py``, ``categorical_counts.py``),
in the same window and multiple-testing family as the numeric features (docs/drift.md).

Numeric features are profiled by quantile bins (``profile.py``); categorical ones by their
categories. The profile keeps, per column, the ``max_categories`` most frequent reference
categories plus one **"other"** bucket for everything else, including categories never seen
at training time, so memory is fixed: (categories + 1) counters per column, whatever the
live stream sends.

Per completed window and column:

* ``chi2`` / ``p``: Pearson's chi-square homogeneity test of the 2 x buckets table
  (reference counts against live counts; buckets empty on both sides dropped). The
  reference is a sample too, so this, not a goodness-of-fit test against reference
  proportions taken as exact, is the test with the right null (the same choice as for PSI's
  p-value, docs/drift.md 4.1). Equal to ``scipy.stats.chi2_contingency(correction=False)``.
* ``psi`` on the same buckets, proportions floored at ``eps`` as for numeric PSI.

The p-values are meant to join the numeric features' family (``multitest.adjust_pvalues``):
:meth:`CategoricalMonitor.update` returns them, and ``drift_flags`` applies one correction
over numeric and categorical p-values together.

Example: a category whose share fell from 10 % to 1 % over a 1,000-row window gives
chi2 ~ 80 on 1 degree of freedom of difference; p ~ 1e-18.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop_agent.drift.chi2 import chi2_sf
from edgeloop_agent.drift.multitest import Correction, adjust_pvalues
from edgeloop_agent.drift.psi import DEFAULT_EPS
from edgeloop_agent.wire.jsontext import json_text

OTHER = "__other__"
_MAX_CATEGORIES = 1000


def build_categorical_profile(
    columns: Mapping[str, Iterable[str | None]], *, max_categories: int = 50
) -> dict[str, Any]:
    """Reference frequencies of categorical columns (None = missing), JSON-ready."""
    if isinstance(max_categories, bool) or not isinstance(max_categories, int):
        raise ValueError(
            f"max_categories: expected an integer >= 1, got {json_text(max_categories)}"
        )
    if not 1 <= max_categories <= _MAX_CATEGORIES:
        raise ValueError(f"max_categories: expected 1..{_MAX_CATEGORIES}, got {max_categories}")
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
        # Most frequent first, ties by name, so the profile does not depend on input order.
        kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
        categories = [k for k, _ in kept]
        other = sum(counts.values()) - sum(c for _, c in kept)
        out.append(
            {
                "name": name,
                "categories": categories,
                "counts": [c for _, c in kept] + [other],
                "n_missing": missing,
            }
        )
    return {"kind": "edgeloop.drift.categorical_profile", "version": 1, "columns": out}


@dataclass(frozen=True)
class CategoricalDrift:
    name: str
    n: int
    chi2: float
    dof: int
    p: float
    psi: float
    live_counts: tuple[int, ...]  # per bucket, the "other" bucket last


class CategoricalMonitor:
    """Tumbling count windows of categorical columns against their reference frequencies."""

    def __init__(self, profile: Mapping[str, Any], window: int, eps: float = DEFAULT_EPS) -> None:
        if not isinstance(profile, Mapping) or profile.get("kind") != (
            "edgeloop.drift.categorical_profile"
        ):
            raise ValueError("profile: expected the dict from build_categorical_profile")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"window: expected an integer number of rows >= 1, got {json_text(window)}"
            )
        self.window = window
        self.eps = float(eps)
        self.names: list[str] = []
        self._index: list[dict[str, int]] = []
        ref = []
        for col in profile["columns"]:
            cats = list(col["categories"])
            counts = [int(c) for c in col["counts"]]
            if len(counts) != len(cats) + 1 or any(c < 0 for c in counts):
                raise ValueError(f"profile column {json_text(col.get('name'))}: counts do not fit")
            self.names.append(str(col["name"]))
            self._index.append({c: i for i, c in enumerate(cats)})
            ref.append(np.asarray(counts, dtype=np.float64))
        self._ref = ref
        self._live = [np.zeros(r.size, dtype=np.int64) for r in ref]
        self._rows = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._ref) + sum(a.nbytes for a in self._live)

    def update(self, rows: Iterable[Sequence[str | None]]) -> list[list[CategoricalDrift]]:
        """Add rows (one value per column, None = missing); reports of completed windows."""
        reports = []
        k = len(self.names)
        for row in rows:
            if len(row) != k:
                raise ValueError(
                    f"row: expected {k} values ({', '.join(self.names)}), got {json_text(row)}"
                )
            for j, v in enumerate(row):
                if v is None:
                    continue
                if not isinstance(v, str):
                    raise ValueError(
                        f"{self.names[j]}: categories must be strings, got {json_text(v)}"
                    )
                live = self._live[j]
                live[self._index[j].get(v, live.size - 1)] += 1
            self._rows += 1
            if self._rows == self.window:
                reports.append(self._report())
                for live in self._live:
                    live[:] = 0
                self._rows = 0
        return reports

    def _report(self) -> list[CategoricalDrift]:
        out = []
        for name, ref, live in zip(self.names, self._ref, self._live, strict=True):
            m, n = int(live.sum()), float(ref.sum())
            lv = live.astype(np.float64)
            if m == 0 or n == 0:
                out.append(CategoricalDrift(name, m, math.nan, 0, math.nan, math.nan, tuple(live)))
                continue
            total = ref + lv
            used = total > 0
            share = total[used] / (n + m)
            e_ref, e_live = share * n, share * m
            chi2 = float(
                np.sum((ref[used] - e_ref) ** 2 / e_ref + (lv[used] - e_live) ** 2 / e_live)
            )
            dof = int(used.sum()) - 1
            p = chi2_sf(chi2, dof) if dof >= 1 else 1.0
            a = np.maximum(lv / m, self.eps)
            e = np.maximum(ref / n, self.eps)
            psi = float(np.sum((a - e) * np.log(a / e)))
            out.append(CategoricalDrift(name, m, chi2, dof, p, psi, tuple(int(x) for x in live)))
        return out


def drift_flags(
    numeric_p: Sequence[float],
    categorical: Sequence[CategoricalDrift],
    *,
    alpha: float = 0.05,
    correction: Correction = "bh",
    min_samples: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """One multiple-testing family over numeric and categorical p-values.

    Returns (adjusted numeric p-values, adjusted categorical p-values); a categorical column
    with fewer than ``min_samples`` live values is not judged (NaN).
    """
    cat_p = [c.p if c.n >= min_samples else math.nan for c in categorical]
    family = np.concatenate([np.asarray(numeric_p, dtype=np.float64), np.asarray(cat_p)])
    adj = adjust_pvalues(family, correction)
    k = len(numeric_p)
    return adj[:k], adj[k:]
