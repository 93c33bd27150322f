"""Sample-ratio mismatch: do the per-variant counts match the configured traffic weights?

An SRM means assignment or logging is broken (a router bug, a variant that crashes before it
reports, labels lost for one arm); the A/B comparison is then not trustworthy whatever its
p-value. Reference: Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled
Experiments", KDD 2019; Kohavi, Tang & Xu, "Trustworthy Online Controlled Experiments" (2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from ._validation import check_count, check_finite, check_open_unit

DEFAULT_SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SRMResult:
    """Pearson chi-square goodness of fit of observed counts to the configured weights."""

    variants: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    df: int
    threshold: float
    mismatch: bool
    unit: str = "requests"  # what was counted: "requests" or "keys" (distinct routing keys)
    relative_error: float = 0.0  # the counts' relative standard error (a sketch's), 0: exact
    checked: bool = True  # False: nothing counted yet, or too few (below ``min_expected``)

    @property
    def reason(self) -> str:
        counts = ", ".join(
            f"{v} {o} (expected {e:.1f})"
            for v, o, e in zip(self.variants, self.observed, self.expected, strict=True)
        )
        if sum(self.observed) == 0:
            return f"no traffic counted yet ({self.unit}), sample ratio not checked"
        if not self.checked:
            return f"too few {self.unit} to check the sample ratio yet: {counts}"
        verdict = "sample ratio mismatch" if self.mismatch else "sample ratio consistent"
        cmp = "<" if self.mismatch else ">="
        test = "chi-square"
        if self.relative_error:
            test = f"chi-square allowing the sketch's {self.relative_error:.2%} error"
        return (
            f"{verdict} on {self.unit}: {counts}; {test} p={self.p_value:.3g} {cmp} "
            f"{self.threshold:g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "variants": list(self.variants),
            "observed": list(self.observed),
            "expected": list(self.expected),
            "statistic": self.statistic,
            "p_value": self.p_value,
            "df": self.df,
            "threshold": self.threshold,
            "mismatch": self.mismatch,
            "unit": self.unit,
            "relative_error": self.relative_error,
            "checked": self.checked,
            "reason": self.reason,
        }


def sample_ratio_mismatch(
    observed: Sequence[int] | Mapping[str, int],
    weights: Sequence[float] | Mapping[str, float],
    *,
    threshold: float = DEFAULT_SRM_THRESHOLD,
    unit: str = "requests",
    relative_error: float = 0.0,
    min_expected: float = 0.0,
) -> SRMResult:
    """Chi-square test of ``observed`` counts against ``weights`` (normalised to sum to 1).

    Both may be sequences in the same order, or mappings from variant name to value with the
    same keys. The mismatch flag is raised at ``p < threshold`` (0.001 by default: the check
    runs at every look, so it must be strict to avoid crying wolf). Weights must be positive;
    a variant with no configured traffic is not part of the experiment.

    ``relative_error`` > 0: the counts are estimates, each off by an independent error of that
    relative standard deviation (a HyperLogLog sketch of distinct keys: ``1.04 / sqrt(m)``).
    The statistic is then the Wald statistic of the deviations ``observed - total * w`` with
    their covariance under H0, multinomial plus the estimates' own variance
    ``(relative_error * expected)^2``, on ``k - 1`` degrees of freedom; with no error it is
    exactly Pearson's. Without that term a sketch's error alone would flag a mismatch once
    it exceeds the binomial noise (docs/ab-statistics.md). Below ``min_expected`` expected
    per variant nothing is tested (``checked`` False).
    """
    threshold = check_open_unit("threshold", threshold)
    if isinstance(observed, Mapping) and isinstance(weights, Mapping):
        if set(observed) != set(weights):
            raise ValueError(
                f"observed and weights name different variants: {sorted(map(str, observed))} "
                f"vs {sorted(map(str, weights))}"
            )
        names = tuple(str(k) for k in observed)
        obs_list = [observed[k] for k in observed]
        w_list = [weights[k] for k in observed]
    elif isinstance(observed, Mapping) or isinstance(weights, Mapping):
        raise TypeError("observed and weights must both be mappings or both be sequences")
    else:
        if isinstance(observed, str | bytes) or isinstance(weights, str | bytes):
            raise TypeError("observed and weights must be sequences of numbers, not strings")
        obs_list, w_list = list(observed), list(weights)
        if len(obs_list) != len(w_list):
            raise ValueError(f"observed has {len(obs_list)} variants but weights has {len(w_list)}")
        names = tuple(f"variant {i}" for i in range(len(obs_list)))
    if len(obs_list) < 2:
        raise ValueError(f"need at least 2 variants for a sample-ratio check, got {len(obs_list)}")
    counts = tuple(check_count(f"observed[{n!r}]", c) for n, c in zip(names, obs_list, strict=True))
    ws = [check_finite(f"weights[{n!r}]", w) for n, w in zip(names, w_list, strict=True)]
    for n, w in zip(names, ws, strict=True):
        if w <= 0.0:
            raise ValueError(f"weights[{n!r}] must be > 0, got {w}")
    total_w = sum(ws)
    total = sum(counts)
    expected = tuple(total * w / total_w for w in ws)
    df = len(counts) - 1
    relative_error = check_finite("relative_error", relative_error)
    if relative_error < 0.0:
        raise ValueError(f"relative_error must be >= 0, got {relative_error}")
    if total == 0 or min(expected) < min_expected:
        return SRMResult(
            names,
            counts,
            expected,
            0.0,
            1.0,
            df,
            threshold,
            False,
            unit,
            relative_error,
            checked=False,
        )
    if relative_error == 0.0:
        statistic = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    else:
        statistic = _wald(counts, [w / total_w for w in ws], relative_error)
    p_value = float(_st.chi2.sf(statistic, df))
    return SRMResult(
        names,
        counts,
        expected,
        float(statistic),
        p_value,
        df,
        threshold,
        p_value < threshold,
        unit,
        relative_error,
    )


def _wald(counts: Sequence[int], shares: Sequence[float], relative_error: float) -> float:
    """d' C^-1 d on the first k-1 deviations d = n - N w, C their covariance under H0."""
    n = np.asarray(counts, dtype=float)
    w = np.asarray(shares, dtype=float)
    total = float(n.sum())
    k = len(w)
    # d = A n with A = I - w 1'; Cov(n) = N (diag w - w w') + diag((r N w)^2). The
    # multinomial part has zero row sums, so A leaves it unchanged.
    a = np.eye(k) - np.outer(w, np.ones(k))
    cov = total * (np.diag(w) - np.outer(w, w))
    cov += a @ np.diag((relative_error * total * w) ** 2) @ a.T
    d = (n - total * w)[: k - 1]
    c = cov[: k - 1, : k - 1]
    return float(d @ np.linalg.solve(c, d))
