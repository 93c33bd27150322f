"""Chi-square upper tail in plain Python (the agent cannot import scipy).

``chi2_sf(x, k) = Q(k/2, x/2)``, the regularised upper incomplete gamma function at integer
degrees of freedom, where it has closed forms (Abramowitz & Stegun 6.5.13 and 26.4.4-26.4.5):

* even k = 2s:  Q = exp(-x/2) · Σ_{j<s} (x/2)^j / j!
* odd  k = 2s+1: Q = erfc(√(x/2)) + exp(-x/2) · Σ_{j=1..s} (x/2)^(j-1/2) / Γ(j+1/2)

Terms are summed in log space so large x (tiny p-values) and large k do not overflow.
Accurate to ~1e-13 relative against ``scipy.stats.chi2.sf`` (tests/agent/test_drift_chi2.py).
Used for the PSI p-value and the categorical chi-square test.
"""

from __future__ import annotations

import math

from edgeloop_agent.wire.jsontext import json_text


def chi2_sf(x: float, k: int) -> float:
    """P(X >= x) for X ~ chi-square with ``k`` (integer >= 1) degrees of freedom."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"k: expected an integer number of degrees of freedom >= 1, got {json_text(k)}"
        )
    x = float(x)
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    h = x / 2.0
    log_h = math.log(h)
    if k % 2 == 0:
        logs = [j * log_h - math.lgamma(j + 1.0) for j in range(k // 2)]
        head = 0.0
    else:
        logs = [(j - 0.5) * log_h - math.lgamma(j + 0.5) for j in range(1, (k - 1) // 2 + 1)]
        head = math.erfc(math.sqrt(h))
    if not logs:
        return min(1.0, head)
    top = max(logs)
    total = top + math.log(math.fsum(math.exp(v - top) for v in logs)) - h
    return min(1.0, head + math.exp(total) if total > -745.0 else head)
