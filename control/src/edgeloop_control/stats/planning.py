"""How many labelled outcomes an mSPRT experiment needs: ``edgeloop ab plan``.

The test rejects at a look where |Delta| >= h(v), with v the variance of the difference
estimate and h the half-width of the confidence sequence (``mixture_half_width``). Under a
true difference theta, Delta ~ N(theta, v) at a look with n_A, n_B outcomes, so

    P(rejected by that look) >= P(|Delta| >= h(v))
                              = Phi((|theta| - h)/sqrt(v)) + Phi((-|theta| - h)/sqrt(v))

because the running-minimum p-value can only have crossed earlier too. The plan is the
smallest total N (split by the router weights) where that single-look bound reaches the
asked power: a conservative horizon, "by N outcomes, at least this power", whatever the
look schedule. ``tests/control/test_stats_planning.py`` checks it against simulation with
a look every batch.

Variances follow the test: v = max(pooled, per-arm) (``difference_variance``), with the
per-outcome variances implied by the baseline and the effect (binary: p(1 − p); continuous:
the given standard deviation for both arms), and tau as the test would set it (given, or
``tau_sd`` times the pooled per-outcome sd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _st

from ._validation import check_open_unit, check_positive
from .sequential import DEFAULT_ALPHA, DEFAULT_TAU_SD, mixture_half_width

_MAX_TOTAL = 10**12


@dataclass(frozen=True)
class Plan:
    kind: str
    baseline: float
    effect: float
    alpha: float
    power: float
    tau: float
    weights: tuple[float, float]
    total: int  # labelled outcomes over both arms
    per_arm: tuple[int, int]  # champion, challenger

    def days(self, labels_per_day: float) -> float:
        return self.total / check_positive("labels_per_day", labels_per_day)


def _variances(kind: str, baseline: float, effect: float, sd: float | None) -> tuple[float, float]:
    if kind == "binary":
        other = baseline + effect
        if not 0.0 < baseline < 1.0 or not 0.0 < other < 1.0:
            raise ValueError(
                f"binary rates must lie strictly between 0 and 1: baseline {baseline}, "
                f"baseline + effect {other}"
            )
        return baseline * (1 - baseline), other * (1 - other)
    if kind == "continuous":
        if sd is None:
            raise ValueError("a continuous metric needs its per-outcome standard deviation (sd)")
        s = check_positive("sd", sd)
        return s * s, s * s
    raise ValueError(f"kind must be 'binary' or 'continuous', got {kind!r}")


def power_at(
    total: int,
    *,
    kind: str,
    baseline: float,
    effect: float,
    weights: tuple[float, float] = (50.0, 50.0),
    alpha: float = DEFAULT_ALPHA,
    tau: float | None = None,
    tau_sd: float = DEFAULT_TAU_SD,
    sd: float | None = None,
) -> float:
    """Lower bound of P(the test has rejected H0: theta = 0 by ``total`` outcomes)."""
    var_a, var_b = _variances(kind, baseline, effect, sd)
    wa = weights[0] / (weights[0] + weights[1])
    n_a, n_b = total * wa, total * (1 - wa)
    if n_a <= 0 or n_b <= 0:
        return 0.0
    if tau is None:
        tau = tau_sd * math.sqrt((var_a + var_b) / 2.0)
    pooled_var = wa * var_a + (1 - wa) * var_b
    if kind == "binary":
        mean = wa * baseline + (1 - wa) * (baseline + effect)
        pooled_var = mean * (1 - mean)
    v = max(pooled_var * (1 / n_a + 1 / n_b), var_a / n_a + var_b / n_b)
    h = mixture_half_width(v, tau, alpha)
    # The test's variance estimate, not the true one, sets h; Delta's spread is the true v.
    true_sd = math.sqrt(var_a / n_a + var_b / n_b)
    t = abs(effect)
    return float(_st.norm.cdf((t - h) / true_sd) + _st.norm.cdf((-t - h) / true_sd))


def plan(
    *,
    kind: str,
    baseline: float,
    effect: float,
    weights: tuple[float, float] = (50.0, 50.0),
    alpha: float = DEFAULT_ALPHA,
    power: float = 0.8,
    tau: float | None = None,
    tau_sd: float = DEFAULT_TAU_SD,
    sd: float | None = None,
) -> Plan:
    """Smallest total number of labelled outcomes with at least ``power`` (a lower bound)."""
    alpha = check_open_unit("alpha", alpha)
    power = check_open_unit("power", power)
    if not (isinstance(effect, (int, float)) and math.isfinite(effect) and effect != 0.0):
        raise ValueError(f"effect must be a non-zero finite number, got {effect!r}")
    if len(weights) != 2 or not all(w > 0 for w in weights):
        raise ValueError(f"weights must be two positive numbers, got {weights!r}")
    var_a, var_b = _variances(kind, baseline, effect, sd)
    if tau is None:
        tau = tau_sd * math.sqrt((var_a + var_b) / 2.0)
    tau = check_positive("tau", tau)

    def ok(n: int) -> bool:
        reached = power_at(
            n,
            kind=kind,
            baseline=baseline,
            effect=effect,
            weights=weights,
            alpha=alpha,
            tau=tau,
            sd=sd,
        )
        return reached >= power

    lo, hi = 2, 4
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > _MAX_TOTAL:
            raise ValueError(
                f"no plan: even {_MAX_TOTAL:.0e} outcomes do not reach power {power} for "
                f"an effect of {effect} (is tau far too large or too small?)"
            )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    wa = weights[0] / (weights[0] + weights[1])
    per_arm = (math.ceil(hi * wa), math.ceil(hi * (1 - wa)))
    return Plan(kind, baseline, effect, alpha, power, tau, tuple(weights), hi, per_arm)  # type: ignore[arg-type]
