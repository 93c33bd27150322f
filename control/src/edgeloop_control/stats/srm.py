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

    @property
    def reason(self) -> str:
        counts = ", ".join(
            f"{v} {o} (expected {e:.1f})"
            for v, o, e in zip(self.variants, self.observed, self.expected, strict=True)
        )
        if sum(self.observed) == 0:
            return "no traffic counted yet, sample ratio not checked"
        verdict = "sample ratio mismatch" if self.mismatch else "sample ratio consistent"
        cmp = "<" if self.mismatch else ">="
        return f"{verdict}: {counts}; chi-square p={self.p_value:.3g} {cmp} {self.threshold:g}"

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
            "reason": self.reason,
        }


def sample_ratio_mismatch(
    observed: Sequence[int] | Mapping[str, int],
    weights: Sequence[float] | Mapping[str, float],
    *,
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SRMResult:
    """Chi-square test of ``observed`` counts against ``weights`` (normalised to sum to 1).

    Both may be sequences in the same order, or mappings from variant name to value with the
    same keys. The mismatch flag is raised at ``p < threshold`` (0.001 by default: the check
    runs at every look, so it must be strict to avoid crying wolf). Weights must be positive;
    a variant with no configured traffic is not part of the experiment.
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
    if total == 0:
        return SRMResult(names, counts, expected, 0.0, 1.0, df, threshold, False)
    statistic = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    p_value = float(_st.chi2.sf(statistic, df))
    return SRMResult(
        names, counts, expected, float(statistic), p_value, df, threshold, p_value < threshold
    )
