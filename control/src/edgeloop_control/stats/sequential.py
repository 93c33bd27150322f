"""Always-valid sequential test for champion vs challenger: the normal-mixture mSPRT.

Reference: R. Johari, P. Koomen, L. Pekelis, D. Walsh, "Always Valid Inference: Continuous
Monitoring of A/B Tests", Operations Research 70(3), 2022 (arXiv:1512.04922).

For n pairs of observations with per-pair variance V = sigma_A² + sigma_B² and a
N(theta0, tau²) mixture over theta = mu_B − mu_A, the paper's mixture likelihood ratio for
H0: theta = theta0 is

    Lambda_n = sqrt(V / (V + n tau²))
               * exp(n² tau² (ybar_B − ybar_A − theta0)² / (2 V (V + n tau²)))

Writing v = V/n (the variance of ybar_B − ybar_A) the same expression is

    Lambda = sqrt(v / (v + tau²)) * exp(tau² (Delta − theta0)² / (2 v (v + tau²)))

and that form extends to unequal arms with v = sigma_A²/n_A + sigma_B²/n_B. For known
variances it is exact for any fixed allocation ratio (the router's configured weights): the
score Delta/v is then a Brownian motion with drift theta in "information time" 1/v. We use it
rather than truncating to min(n_A, n_B) pairs, which would throw data away. With equal n it is
the paper's formula.

The always-valid p-value is p_n = min(p_{n−1}, 1/Lambda_n) and the confidence sequence is
{theta0 : Lambda_n(theta0) < 1/alpha}, intersected over looks (so 0 is outside it exactly
when p_n <= alpha). Variances are estimated at each look: the larger of the pooled (null)
estimate and the paper's per-arm plug-in (see :func:`difference_variance` for why the
plug-in alone is not enough).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._validation import (
    check_bool,
    check_count,
    check_finite,
    check_open_unit,
    check_positive,
    json_float,
)
from .decision import Decision, Guardrail, decide
from .means import ContinuousStats
from .proportions import BinaryStats

Kind = Literal["binary", "continuous"]
Stats = BinaryStats | ContinuousStats

SCHEMA_VERSION = 1
DEFAULT_ALPHA = 0.05
DEFAULT_TAU_SD = 0.1
DEFAULT_MIN_SAMPLES = 100

_KINDS: dict[str, type[BinaryStats] | type[ContinuousStats]] = {
    "binary": BinaryStats,
    "continuous": ContinuousStats,
}
_DEFAULT_METRIC = {"binary": ("accuracy", True), "continuous": ("loss", False)}


def mixture_log_likelihood_ratio(
    difference: float, variance: float, tau: float, theta0: float = 0.0
) -> float:
    """log Lambda for an observed difference with sampling variance ``variance``.

    ``variance`` is the variance of the difference estimate (v = V/n), ``tau`` the standard
    deviation of the normal mixing distribution over the true difference.
    """
    difference = check_finite("difference", difference)
    variance = check_positive("variance", variance)
    tau = check_positive("tau", tau)
    theta0 = check_finite("theta0", theta0)
    r = tau * tau / variance
    return -0.5 * math.log1p(r) + (difference - theta0) ** 2 * r / (2.0 * variance * (1.0 + r))


def mixture_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of {theta0 : Lambda(theta0) < 1/alpha} around the observed difference.

    Solving log Lambda(theta0) = log(1/alpha) for (Delta − theta0)² gives
    v (v + tau²)/tau² * (2 log(1/alpha) + log(1 + tau²/v)).
    """
    variance = check_positive("variance", variance)
    tau = check_positive("tau", tau)
    alpha = check_open_unit("alpha", alpha)
    r = tau * tau / variance
    return math.sqrt(variance * (1.0 + r) / r * (2.0 * math.log(1.0 / alpha) + math.log1p(r)))


def difference_variance(champion: Stats, challenger: Stats) -> float:
    """Estimated variance of the difference of the two arms' means, for the mixture ratio.

    The larger of two consistent estimates:

    * pooled, (1/n_A + 1/n_B) · s², with s² the variance of all outcomes of both arms taken
      together (p̄(1 − p̄) for binary outcomes). Under H0 both arms share one distribution,
      so this is the null variance, estimated from all the data;
    * unpooled, s_A²/n_A + s_B²/n_B, the per-arm plug-in of the paper's implementation.
      It stays right when the arms differ in spread but not in mean, and under the
      alternative.

    Why not the plug-in alone: a small arm whose outcomes are all alike so far (no error
    yet at 99 % accuracy, a run of zero losses) reports variance 0, the difference looks
    far more precise than it is, and the running-minimum p-value locks in a false
    rejection (A/A at p = 0.99, 90/10 split, a look every batch: 29 % false decisions at
    alpha = 5 %; docs/ab-statistics.md). The pooled estimate has no such hole: it reads
    the rare failures from the big arm. Taking the larger is never less conservative than
    either: the rejection boundary |Delta| >= h(v) and the confidence-sequence half-width
    h(v) both grow with v (h² = v(v + tau²)/tau² · (2 ln(1/alpha) + ln(1 + tau²/v)) has
    derivative (2v + tau²)(2 ln(1/alpha) + ln(1 + tau²/v))/tau² − 1 > 0), so the
    always-valid guarantee of the estimate that is right under H0 carries over, and the
    confidence sequence is never narrower than the paper's.
    """
    pooled = (champion + challenger).variance
    unpooled = champion.variance / champion.n + challenger.variance / challenger.n
    return max(pooled * (1.0 / champion.n + 1.0 / challenger.n), unpooled)


class MixtureSPRT:
    """Sequential state of one champion-vs-challenger experiment, kept across looks.

    River-style: call :meth:`update` with the outcomes that arrived since the last look (or
    :meth:`update_totals` with cumulative totals), then read :attr:`p_value`,
    :attr:`confidence_sequence` and :meth:`decision`. :meth:`to_dict`/:meth:`from_dict` give a
    JSON-safe snapshot for storage between looks and across restarts.

    Parameters
    ----------
    kind:
        ``"binary"`` (BinaryStats, metric = success rate) or ``"continuous"``
        (ContinuousStats, metric = mean).
    alpha:
        Significance level of the always-valid test and confidence sequence.
    tau:
        Standard deviation of the N(0, tau²) mixing distribution over the true difference,
        in the metric's units. Choose it near the size of effect you expect; see
        ``docs/ab-statistics.md``. ``None`` (default) sets ``tau = tau_sd * s`` once, at the
        first look where both arms have ``min_samples_per_arm`` outcomes, with s the pooled
        per-outcome standard deviation at that look; it is then frozen and stored.
    tau_sd:
        The standardised mixing scale used when ``tau`` is None.
    min_samples_per_arm:
        Burn-in: looks before both arms reach this count do not touch the p-value (a plug-in
        variance from a handful of outcomes could lock in a spuriously low running minimum).
        Also the minimum the decision asks for.
    higher_is_better:
        Direction of "better" for the metric. Defaults to True for binary (accuracy) and
        False for continuous (loss).
    metric:
        Name used in reports and decision sentences (default "accuracy" or "loss").
    """

    def __init__(
        self,
        kind: Kind = "binary",
        *,
        alpha: float = DEFAULT_ALPHA,
        tau: float | None = None,
        tau_sd: float = DEFAULT_TAU_SD,
        min_samples_per_arm: int = DEFAULT_MIN_SAMPLES,
        higher_is_better: bool | None = None,
        metric: str | None = None,
    ) -> None:
        if not isinstance(kind, str) or kind not in _KINDS:
            raise ValueError(f"kind must be 'binary' or 'continuous', got {kind!r}")
        self.kind: Kind = kind
        self.alpha = check_open_unit("alpha", alpha)
        self.tau_sd = check_positive("tau_sd", tau_sd)
        self._tau: float | None = None if tau is None else check_positive("tau", tau)
        self.tau_configured = tau is not None
        self.min_samples_per_arm = check_count("min_samples_per_arm", min_samples_per_arm)
        if self.min_samples_per_arm < 1:
            raise ValueError(f"min_samples_per_arm must be >= 1, got {min_samples_per_arm}")
        default_metric, default_higher = _DEFAULT_METRIC[kind]
        self.higher_is_better = (
            default_higher
            if higher_is_better is None
            else check_bool("higher_is_better", higher_is_better)
        )
        if metric is None:
            metric = default_metric
        if not isinstance(metric, str) or not metric.strip():
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        self.metric = metric
        self._stats_type = _KINDS[kind]
        self._champion: Stats = self._stats_type()
        self._challenger: Stats = self._stats_type()
        self._p_value = 1.0
        self._lower = -math.inf
        self._upper = math.inf
        self._looks = 0

    # -- feeding data -------------------------------------------------------------------

    def update(self, champion: Stats, challenger: Stats) -> MixtureSPRT:
        """Add the outcomes observed since the last look, then look once."""
        self._check_stats(champion, challenger)
        self._champion = self._champion + champion
        self._challenger = self._challenger + challenger
        self._look()
        return self

    def update_totals(self, champion: Stats, challenger: Stats) -> MixtureSPRT:
        """Replace the running totals with cumulative ones (they must not shrink), then look."""
        self._check_stats(champion, challenger)
        for arm, old, new in (
            ("champion", self._champion, champion),
            ("challenger", self._challenger, challenger),
        ):
            if new.n < old.n:
                raise ValueError(
                    f"{arm} total n decreased from {old.n} to {new.n}; update_totals needs "
                    f"cumulative totals (use update() to add increments)"
                )
            if (
                isinstance(new, BinaryStats)
                and isinstance(old, BinaryStats)
                and new.successes < old.successes
            ):
                raise ValueError(
                    f"{arm} total successes decreased from {old.successes} to "
                    f"{new.successes}; update_totals needs cumulative totals"
                )
        self._champion, self._challenger = champion, challenger
        self._look()
        return self

    def _check_stats(self, champion: object, challenger: object) -> None:
        for arm, value in (("champion", champion), ("challenger", challenger)):
            if not isinstance(value, self._stats_type):
                raise TypeError(
                    f"{arm} must be {self._stats_type.__name__} for a {self.kind} experiment, "
                    f"got {type(value).__name__}"
                )

    def _look(self) -> None:
        a, b = self._champion, self._challenger
        needed = max(self.min_samples_per_arm, 2 if self.kind == "continuous" else 1)
        if a.n < needed or b.n < needed:
            return
        var_a, var_b = a.variance, b.variance
        variance = difference_variance(a, b)
        if not variance > 0.0:
            # No variation in either arm yet (e.g. both 100 % accurate): the normal model
            # has nothing to say, so this look is not counted.
            return
        if self._tau is None:
            self._tau = self.tau_sd * math.sqrt((var_a + var_b) / 2.0)
        diff = self.estimate
        log_lr = mixture_log_likelihood_ratio(diff, variance, self._tau)
        self._p_value = min(self._p_value, math.exp(-log_lr))
        half = mixture_half_width(variance, self._tau, self.alpha)
        self._lower = max(self._lower, diff - half)
        self._upper = min(self._upper, diff + half)
        self._looks += 1

    # -- reading results ----------------------------------------------------------------

    @property
    def champion(self) -> Stats:
        """Cumulative champion outcomes."""
        return self._champion

    @property
    def challenger(self) -> Stats:
        """Cumulative challenger outcomes."""
        return self._challenger

    @property
    def estimate(self) -> float:
        """Current challenger − champion difference of the metric (NaN without data)."""
        a, b = self._champion, self._challenger
        if isinstance(a, BinaryStats) and isinstance(b, BinaryStats):
            return b.rate - a.rate
        if isinstance(a, ContinuousStats) and isinstance(b, ContinuousStats):
            return b.mean - a.mean
        raise AssertionError("arms hold different statistics types")  # unreachable by design

    @property
    def p_value(self) -> float:
        """Always-valid p-value for "no difference" (1.0 until the first counted look)."""
        return self._p_value

    @property
    def confidence_sequence(self) -> tuple[float, float] | None:
        """Always-valid (1 − alpha) interval for challenger − champion.

        (−inf, inf) before the first counted look. ``None`` if the running intersection has
        become empty: the observed difference moved outside every earlier interval, which
        under a stable effect happens with probability <= alpha and usually means the
        effect itself is changing (drifting data, a swapped model).
        """
        if self._lower > self._upper:
            return None
        return (self._lower, self._upper)

    @property
    def tau(self) -> float | None:
        """Mixing standard deviation in metric units (None until resolved when automatic)."""
        return self._tau

    @property
    def looks(self) -> int:
        """Number of looks that updated the p-value (after burn-in, with variation)."""
        return self._looks

    def decision(self, guardrails: Sequence[Guardrail] = ()) -> Decision:
        """Promote, roll back or continue, given the current state and guardrail results."""
        return decide(
            p_value=self._p_value,
            effect=self._direction_effect(),
            n_champion=self._champion.n,
            n_challenger=self._challenger.n,
            alpha=self.alpha,
            higher_is_better=self.higher_is_better,
            min_samples_per_arm=self.min_samples_per_arm,
            guardrails=guardrails,
            metric=self.metric,
            # The raw running bounds, so an empty sequence reaches decide() as lower > upper.
            interval=None if self._looks == 0 else (self._lower, self._upper),
        )

    def _direction_effect(self) -> float:
        # Once the test has rejected, the confidence sequence sits on one side of 0 and is
        # the authority on direction; the latest point estimate only reports the size,
        # unless it has wandered to the other side (then the sequence's midpoint stands in).
        estimate = self.estimate
        cs = self.confidence_sequence
        if cs is not None and (cs[0] > 0.0 or cs[1] < 0.0):
            midpoint = (cs[0] + cs[1]) / 2.0
            if not estimate * midpoint > 0.0:
                return midpoint
        return estimate

    # -- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot (infinite bounds become None)."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": self.kind,
            "alpha": self.alpha,
            "tau": self._tau,
            "tau_configured": self.tau_configured,
            "tau_sd": self.tau_sd,
            "min_samples_per_arm": self.min_samples_per_arm,
            "higher_is_better": self.higher_is_better,
            "metric": self.metric,
            "champion": self._champion.to_dict(),
            "challenger": self._challenger.to_dict(),
            "p_value": self._p_value,
            "cs_lower": json_float(self._lower),
            "cs_upper": json_float(self._upper),
            "looks": self._looks,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixtureSPRT:
        """Rebuild from :meth:`to_dict` output, validating every field."""
        if not isinstance(data, Mapping):
            raise TypeError(f"MixtureSPRT.from_dict expects a mapping, got {type(data).__name__}")
        required = (
            "schema", "kind", "alpha", "tau", "tau_configured", "tau_sd",
            "min_samples_per_arm", "higher_is_better", "metric", "champion", "challenger",
            "p_value", "cs_lower", "cs_upper", "looks",
        )  # fmt: skip
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"MixtureSPRT.from_dict: missing field(s) {', '.join(missing)}")
        if data["schema"] != SCHEMA_VERSION:
            raise ValueError(
                f"MixtureSPRT.from_dict: unsupported schema {data['schema']!r} "
                f"(this code reads schema {SCHEMA_VERSION})"
            )
        tau_configured = check_bool("tau_configured", data["tau_configured"])
        tau = data["tau"]
        if tau_configured and tau is None:
            raise ValueError("MixtureSPRT.from_dict: tau is None but tau_configured is True")
        test = cls(
            data["kind"],
            alpha=data["alpha"],
            tau=tau if tau_configured else None,
            tau_sd=data["tau_sd"],
            min_samples_per_arm=data["min_samples_per_arm"],
            higher_is_better=check_bool("higher_is_better", data["higher_is_better"]),
            metric=data["metric"],
        )
        if tau is not None:
            test._tau = check_positive("tau", tau)
        test._champion = test._stats_type.from_dict(data["champion"])
        test._challenger = test._stats_type.from_dict(data["challenger"])
        p_value = check_finite("p_value", data["p_value"])
        if not 0.0 <= p_value <= 1.0:
            raise ValueError(f"MixtureSPRT.from_dict: p_value must be in [0, 1], got {p_value}")
        test._p_value = p_value
        lower, upper = data["cs_lower"], data["cs_upper"]
        test._lower = -math.inf if lower is None else check_finite("cs_lower", lower)
        test._upper = math.inf if upper is None else check_finite("cs_upper", upper)
        test._looks = check_count("looks", data["looks"])
        return test

    def __repr__(self) -> str:
        return (
            f"MixtureSPRT(kind={self.kind!r}, n=({self._champion.n}, {self._challenger.n}), "
            f"p_value={self._p_value:.4g}, looks={self._looks})"
        )
