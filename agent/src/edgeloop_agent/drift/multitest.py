"""Multiple-testing corrections across features.

Testing 30 features at ``alpha = 0.05`` each flags at least one of them on ~79 % of
windows even when nothing drifted. The dataset-level decision therefore uses adjusted
p-values:

* ``"bonferroni"``: ``p_adj = min(1, k * p)``; controls the family-wise error rate.
* ``"bh"`` (Benjamini–Hochberg step-up): ``p_adj(i) = min_{j >= i} min(1, k p(j) / j)``
  over the sorted p-values; controls the false discovery rate, and since it flags
  something exactly when ``min p_adj < alpha`` and then equals ``min_j k p(j) / j``, its
  "any feature drifted" error rate under no drift is at most ``alpha`` too (Simes).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgeloop_agent.wire.jsontext import json_text

Correction = Literal["bh", "bonferroni"]


def adjust_pvalues(p: np.ndarray, method: Correction = "bh") -> np.ndarray:
    """Adjusted p-values; NaN entries (untested features) stay NaN and are not counted."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p: expected a 1-D array of p-values, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError("p: p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    k = int(valid.sum())
    if k == 0:
        return out
    pv = p[valid]
    if method == "bonferroni":
        out[valid] = np.minimum(pv * k, 1.0)
    elif method == "bh":
        order = np.argsort(pv, kind="stable")
        scaled = pv[order] * k / np.arange(1, k + 1)
        # Step-up: running minimum from the largest p-value down.
        adj = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        res = np.empty(k)
        res[order] = adj
        out[valid] = res
    else:
        raise ValueError(f"method: expected 'bh' or 'bonferroni', got {json_text(method)}")
    return out
