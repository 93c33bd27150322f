"""Population Stability Index.

``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins, where ``e_i`` is the reference
proportion and ``a_i`` the live proportion of bin ``i``. An empty bin would make the
log infinite, so both proportions are floored at ``eps`` (default ``1e-4``) before the
sum; nothing is renormalised. Usual reading: < 0.1 stable, 0.1-0.2 moderate shift,
>= 0.2 significant shift.
"""

from __future__ import annotations

import numpy as np

from edgeloop_agent.wire.jsontext import json_text

DEFAULT_EPS = 1e-4


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """PSI of live ``actual_counts`` against reference proportions ``expected``, same bins."""
    e = np.asarray(expected, dtype=np.float64)
    c = np.asarray(actual_counts, dtype=np.float64)
    if e.ndim != 1 or e.shape != c.shape:
        raise ValueError(
            f"expected and actual_counts must be 1-D of the same length, got {e.shape} "
            f"and {c.shape}"
        )
    _check_eps(eps)
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("actual_counts: counts must be finite and >= 0")
    total = c.sum()
    if total <= 0:
        raise ValueError("actual_counts: no live values to compare")
    a = np.maximum(c / total, eps)
    e = np.maximum(e, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_segments(
    expected: np.ndarray,
    actual_counts: np.ndarray,
    totals: np.ndarray,
    starts: np.ndarray,
    eps: float = DEFAULT_EPS,
) -> np.ndarray:
    """PSI of many columns at once on flat arrays.

    Column ``j`` owns bins ``starts[j]:starts[j+1]`` of ``expected`` and
    ``actual_counts``; ``totals`` is its number of live values, repeated per bin
    (``np.repeat(totals_per_column, bins_per_column)``). Columns with a zero total give NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.maximum(actual_counts / totals, eps)
    e = np.maximum(expected, eps)
    out = np.add.reduceat((a - e) * np.log(a / e), starts)
    out[np.add.reduceat(totals, starts) <= 0] = np.nan
    return out


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and 0.0 < float(eps) < 1.0):
        raise ValueError(f"eps: expected a number in (0, 1), got {json_text(eps)}")
