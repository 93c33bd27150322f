"""The normal-mixture mSPRT: closed form, confidence sequence, state across looks, storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from edgeloop_control.stats import (
    BinaryStats,
    ContinuousStats,
    MixtureSPRT,
    mixture_half_width,
    mixture_log_likelihood_ratio,
)


def lr_by_quadrature(diff: float, v: float, tau: float, theta0: float = 0.0) -> float:
    """The mixture likelihood ratio by its definition (Johari et al. 2022, eq. for Lambda_n):
    the likelihood ratio of theta0 + u against theta0 for diff ~ N(theta, v), integrated over
    u ~ N(0, tau^2)."""
    x = diff - theta0

    def integrand(u: float) -> float:
        return math.exp((x * x - (x - u) ** 2) / (2 * v)) * stats.norm.pdf(u, 0.0, tau)

    centre = x * tau**2 / (tau**2 + v)  # the integrand's peak (posterior mean of u)
    spread = math.sqrt(tau**2 * v / (tau**2 + v))
    value, _ = integrate.quad(integrand, centre - 40 * spread, centre + 40 * spread, limit=200)
    return value


def log_lr_by_marginals(diff: float, v: float, tau: float, theta0: float = 0.0) -> float:
    """Same ratio as a Bayes factor of marginal densities: N(theta0, v + tau^2) vs N(theta0, v)."""
    return float(
        stats.norm.logpdf(diff, theta0, math.sqrt(v + tau**2))
        - stats.norm.logpdf(diff, theta0, math.sqrt(v))
    )


def lr_by_marginals(diff: float, v: float, tau: float, theta0: float = 0.0) -> float:
    return math.exp(log_lr_by_marginals(diff, v, tau, theta0))


@pytest.mark.parametrize(
    ("diff", "v", "tau", "theta0"),
    [(0.0, 1e-4, 0.02, 0.0), (0.03, 2.5e-5, 0.02, 0.0), (-0.5, 0.04, 1.0, 0.1),
     (0.01, 1e-3, 0.001, 0.0), (2.0, 0.5, 3.0, -1.0)],
)  # fmt: skip
def test_closed_form_matches_the_mixture_integral(
    diff: float, v: float, tau: float, theta0: float
) -> None:
    ours = math.exp(mixture_log_likelihood_ratio(diff, v, tau, theta0))
    assert ours == pytest.approx(lr_by_quadrature(diff, v, tau, theta0), rel=1e-7)
    assert ours == pytest.approx(lr_by_marginals(diff, v, tau, theta0), rel=1e-10)


@pytest.mark.parametrize(
    ("n", "sigma", "tau", "diff"), [(10, 1.0, 0.3, 0.2), (5_000, 0.3, 0.05, 0.01)]
)
def test_equal_arms_reduce_to_the_papers_two_stream_formula(
    n: int, sigma: float, tau: float, diff: float
) -> None:
    # Johari et al. (2022), two-stream normal case: n pairs, known variance sigma^2 per arm,
    # V = 2 sigma^2, Lambda_n = sqrt(V/(V + n tau^2)) exp(n^2 tau^2 diff^2 / (2 V (V + n tau^2))).
    big_v = 2 * sigma**2
    paper = math.sqrt(big_v / (big_v + n * tau**2)) * math.exp(
        n**2 * tau**2 * diff**2 / (2 * big_v * (big_v + n * tau**2))
    )
    assert math.exp(mixture_log_likelihood_ratio(diff, big_v / n, tau)) == pytest.approx(
        paper, rel=1e-12
    )


@pytest.mark.parametrize(
    ("v", "tau", "alpha"), [(1e-4, 0.02, 0.05), (0.3, 1.0, 0.01), (2e-6, 0.1, 0.2)]
)
def test_half_width_is_where_the_likelihood_ratio_reaches_one_over_alpha(
    v: float, tau: float, alpha: float
) -> None:
    diff = 0.7 * math.sqrt(v)
    half = mixture_half_width(v, tau, alpha)
    for theta0 in (diff - half, diff + half):
        assert lr_by_marginals(diff, v, tau, theta0) == pytest.approx(1 / alpha, rel=1e-9)
    # ... and the edge is where a root-finder on the reference puts it.
    root = optimize.brentq(
        lambda t: log_lr_by_marginals(diff, v, tau, t) - math.log(1 / alpha),
        diff,
        diff + 100 * math.sqrt(v + tau**2),
        xtol=1e-14,
    )
    assert root == pytest.approx(diff + half, rel=1e-9)


def _excess(theta0: float, diff: float, v: float, tau: float, alpha: float) -> float:
    return log_lr_by_marginals(diff, v, tau, theta0) - math.log(1 / alpha)


def _reference_path(
    chunks_a: list[np.ndarray],
    chunks_b: list[np.ndarray],
    kind: str,
    tau: float,
    alpha: float,
    min_n: int,
) -> list[tuple[float, float, float]]:
    """p-value and confidence sequence after each look, recomputed from the raw outcomes."""
    p, lower, upper = 1.0, -math.inf, math.inf
    path = []
    for k in range(1, len(chunks_a) + 1):
        xa, xb = np.concatenate(chunks_a[:k]), np.concatenate(chunks_b[:k])
        if min(xa.size, xb.size) >= min_n:
            ddof = 0 if kind == "binary" else 1  # p(1-p) is the ddof=0 variance of 0/1 data
            unpooled = xa.var(ddof=ddof) / xa.size + xb.var(ddof=ddof) / xb.size
            pooled = np.concatenate([xa, xb]).var(ddof=ddof) * (1 / xa.size + 1 / xb.size)
            v = max(pooled, unpooled)
            diff = xb.mean() - xa.mean()
            p = min(p, 1 / lr_by_marginals(diff, v, tau))
            args = (diff, v, tau, alpha)
            far = 100 * math.sqrt(v + tau**2)
            lower = max(lower, optimize.brentq(_excess, diff - far, diff, args=args, xtol=1e-14))
            upper = min(upper, optimize.brentq(_excess, diff, diff + far, args=args, xtol=1e-14))
        path.append((p, lower, upper))
    return path


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_state_across_looks_matches_recomputation_from_raw_outcomes(kind: str) -> None:
    rng = np.random.default_rng(3)
    sizes_a = [30, 80, 120, 5, 300, 250, 400, 60]
    sizes_b = [20, 90, 110, 40, 310, 200, 380, 90]  # unequal arms on purpose
    if kind == "binary":
        chunks_a = [(rng.random(s) < 0.80).astype(float) for s in sizes_a]
        chunks_b = [(rng.random(s) < 0.86).astype(float) for s in sizes_b]
        make = lambda c: BinaryStats.from_outcomes(c.astype(bool))  # noqa: E731
    else:
        chunks_a = [rng.normal(0, 1.0, s) ** 2 for s in sizes_a]
        chunks_b = [rng.normal(0, 0.8, s) ** 2 for s in sizes_b]
        make = ContinuousStats.from_values
    tau, alpha, min_n = 0.04, 0.05, 100
    test = MixtureSPRT(kind, tau=tau, alpha=alpha, min_samples_per_arm=min_n)
    reference = _reference_path(chunks_a, chunks_b, kind, tau, alpha, min_n)
    for ca, cb, (p, lower, upper) in zip(chunks_a, chunks_b, reference, strict=True):
        test.update(make(ca), make(cb))
        assert test.p_value == pytest.approx(p, rel=1e-9)
        assert test.confidence_sequence == pytest.approx((lower, upper), rel=1e-9)
        # Duality: 0 is outside the sequence exactly when the p-value is at or below alpha.
        cs = test.confidence_sequence
        assert cs is not None
        assert (cs[0] > 0 or cs[1] < 0) == (test.p_value <= alpha)
    assert test.looks == sum(1 for k in range(len(sizes_a)) if min(
        sum(sizes_a[: k + 1]), sum(sizes_b[: k + 1])) >= min_n)  # fmt: skip


def test_burn_in_leaves_the_p_value_alone() -> None:
    test = MixtureSPRT("binary", min_samples_per_arm=100)
    test.update(BinaryStats(99, 10), BinaryStats(500, 490))  # huge difference, too few A
    assert (test.p_value, test.confidence_sequence, test.looks) == (1.0, (-math.inf, math.inf), 0)
    assert test.tau is None
    assert test.decision().action == "continue"


def test_auto_tau_is_fixed_at_the_first_eligible_look() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.normal(2, 1.0, 150), rng.normal(2, 2.0, 150)
    test = MixtureSPRT("continuous", tau_sd=0.25, min_samples_per_arm=100)
    test.update(ContinuousStats.from_values(a), ContinuousStats.from_values(b))
    expected = 0.25 * math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert test.tau == pytest.approx(expected, rel=1e-9)
    test.update(ContinuousStats.from_values(rng.normal(9, 5, 500)), ContinuousStats(0))
    assert test.tau == pytest.approx(expected, rel=1e-9)


def test_looks_without_variation_are_skipped() -> None:
    test = MixtureSPRT("binary", min_samples_per_arm=10)
    test.update(BinaryStats(50, 50), BinaryStats(50, 50))  # both perfect: nothing to model
    assert test.looks == 0 and test.p_value == 1.0
    test.update(BinaryStats(50, 45), BinaryStats(50, 48))
    assert test.looks == 1


def test_update_totals_equals_update_with_increments() -> None:
    by_increment = MixtureSPRT("binary", min_samples_per_arm=50)
    by_total = MixtureSPRT("binary", min_samples_per_arm=50)
    total_a, total_b = BinaryStats(), BinaryStats()
    for inc_a, inc_b in [((60, 50), (70, 66)), ((100, 80), (90, 85)), ((0, 0), (10, 9))]:
        by_increment.update(BinaryStats(*inc_a), BinaryStats(*inc_b))
        total_a, total_b = total_a + BinaryStats(*inc_a), total_b + BinaryStats(*inc_b)
        by_total.update_totals(total_a, total_b)
        assert by_total.to_dict() == by_increment.to_dict()
    with pytest.raises(ValueError, match="champion total n decreased from 160 to 10"):
        by_total.update_totals(BinaryStats(10, 5), total_b)
    with pytest.raises(ValueError, match="challenger total successes decreased"):
        by_total.update_totals(total_a, BinaryStats(total_b.n, 0))


def test_round_trip_through_json_continues_exactly() -> None:
    rng = np.random.default_rng(5)
    batches = [
        (ContinuousStats.from_values(rng.normal(0, 1, 80) ** 2),
         ContinuousStats.from_values(rng.normal(0, 0.8, 80) ** 2))
        for _ in range(12)
    ]  # fmt: skip
    uninterrupted = MixtureSPRT("continuous")
    for a, b in batches:
        uninterrupted.update(a, b)
    restarted = MixtureSPRT("continuous")
    for k, (a, b) in enumerate(batches):
        if k == 6:  # the control node restarts: state comes back from SQLite as JSON text
            restarted = MixtureSPRT.from_dict(
                json.loads(json.dumps(restarted.to_dict(), allow_nan=False))
            )
        restarted.update(a, b)
    assert restarted.to_dict() == uninterrupted.to_dict()
    assert restarted.p_value == uninterrupted.p_value < 0.05


def test_fresh_state_round_trips_with_infinite_bounds() -> None:
    fresh = MixtureSPRT("binary", tau=0.02, higher_is_better=False, metric="error")
    data = json.loads(json.dumps(fresh.to_dict(), allow_nan=False))
    assert data["cs_lower"] is None and data["tau"] == 0.02
    back = MixtureSPRT.from_dict(data)
    assert back.confidence_sequence == (-math.inf, math.inf)
    assert (back.tau, back.higher_is_better, back.metric) == (0.02, False, "error")


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"schema": 99}, ValueError, "unsupported schema 99"),
        ({"p_value": 1.5}, ValueError, "p_value must be in"),
        ({"kind": "poisson"}, ValueError, "kind must be 'binary' or 'continuous'"),
        ({"champion": {"n": 3}}, ValueError, "missing field"),
        ({"alpha": 0.0}, ValueError, "alpha must be strictly between 0 and 1"),
        ({"looks": -1}, ValueError, "looks"),
        ({"tau_configured": "yes"}, TypeError, "tau_configured"),
    ],
)
def test_from_dict_names_the_bad_field(change: dict, exc: type, match: str) -> None:
    data = {**MixtureSPRT("binary").to_dict(), **change}
    with pytest.raises(exc, match=match):
        MixtureSPRT.from_dict(data)
    incomplete = MixtureSPRT("binary").to_dict()
    del incomplete["looks"]
    with pytest.raises(ValueError, match=r"missing field.*looks"):
        MixtureSPRT.from_dict(incomplete)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"kind": "ratio"}, ValueError, "kind must be"),
        ({"alpha": 1.2}, ValueError, "alpha must be strictly between 0 and 1, got 1.2"),
        ({"tau": -0.1}, ValueError, "tau must be > 0, got -0.1"),
        ({"tau_sd": 0}, ValueError, "tau_sd must be > 0"),
        ({"min_samples_per_arm": 0}, ValueError, "min_samples_per_arm must be >= 1"),
        ({"higher_is_better": 1}, TypeError, "higher_is_better must be True or False"),
        ({"metric": ""}, ValueError, "metric must be a non-empty string"),
    ],
)
def test_constructor_validation(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        MixtureSPRT(**kwargs)


def test_update_rejects_the_wrong_statistics_type() -> None:
    with pytest.raises(TypeError, match="challenger must be BinaryStats for a binary experiment"):
        MixtureSPRT("binary").update(BinaryStats(1, 1), ContinuousStats(1, 1.0, 1.0))


def test_function_validation_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"variance must be > 0, got 0\.0"):
        mixture_log_likelihood_ratio(0.1, 0.0, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        mixture_half_width(0.1, 0.1, 1.0)


def test_a_reversed_effect_empties_the_sequence_and_blocks_the_decision() -> None:
    test = MixtureSPRT("continuous", tau=0.5, min_samples_per_arm=10)
    rng = np.random.default_rng(2)
    # Challenger loss clearly higher at first ...
    test.update(
        ContinuousStats.from_values(rng.normal(1.0, 0.2, 200)),
        ContinuousStats.from_values(rng.normal(2.0, 0.2, 200)),
    )
    assert test.p_value < 1e-6 and test.decision().action == "rollback"
    # ... then far lower for much longer: no constant difference fits both periods.
    for _ in range(5):
        test.update(
            ContinuousStats.from_values(rng.normal(3.0, 0.2, 2_000)),
            ContinuousStats.from_values(rng.normal(0.0, 0.2, 2_000)),
        )
    assert test.confidence_sequence is None
    decision = test.decision()
    assert decision.action == "continue" and "not been stable" in decision.reason
