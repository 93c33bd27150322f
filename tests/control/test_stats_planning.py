"""``edgeloop ab plan``: the mSPRT horizon for a given power, checked by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_control.stats import BinaryStats, ContinuousStats, MixtureSPRT
from edgeloop_control.stats.planning import plan, power_at


def _simulated_power(p_plan, runs: int, looks: int, seed: int, sd: float | None = None) -> float:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    wa = p_plan.weights[0] / sum(p_plan.weights)
    per_look = p_plan.total / looks
    na, nb = round(per_look * wa), round(per_look * (1 - wa))
    hits = 0
    for _ in range(runs):
        test = MixtureSPRT(p_plan.kind, tau=p_plan.tau, min_samples_per_arm=50)
        for _ in range(looks):
            if p_plan.kind == "binary":
                a = BinaryStats(na, int(rng.binomial(na, p_plan.baseline)))
                b = BinaryStats(nb, int(rng.binomial(nb, p_plan.baseline + p_plan.effect)))
            else:
                a = ContinuousStats.from_values(rng.normal(p_plan.baseline, sd, na))
                b = ContinuousStats.from_values(rng.normal(p_plan.baseline + p_plan.effect, sd, nb))
            test.update(a, b)
        hits += test.p_value <= p_plan.alpha
    return hits / runs


@pytest.mark.parametrize(
    ("kwargs", "sd"),
    [
        ({"kind": "binary", "baseline": 0.85, "effect": 0.03}, None),
        ({"kind": "binary", "baseline": 0.9, "effect": -0.03, "weights": (80.0, 20.0)}, None),
        ({"kind": "continuous", "baseline": 1.0, "effect": -0.2, "sd": 1.4}, 1.4),
    ],
)
def test_the_planned_horizon_reaches_the_power_in_simulation(
    kwargs: dict, sd: float | None
) -> None:
    p = plan(power=0.8, **kwargs)
    assert (
        power_at(p.total, **kwargs, tau=p.tau) >= 0.8 > power_at(p.total - 1, **kwargs, tau=p.tau)
    )
    runs = 150
    simulated = _simulated_power(p, runs, looks=30, seed=p.total, sd=sd)
    # A lower bound: the simulated power may exceed 0.8, but must not fall clearly below it.
    assert simulated >= stats.binom.ppf(0.001, runs, 0.8) / runs, (p, simulated)


def test_more_power_or_a_smaller_effect_needs_more_outcomes() -> None:
    base = plan(kind="binary", baseline=0.9, effect=0.02)
    assert plan(kind="binary", baseline=0.9, effect=0.02, power=0.9).total > base.total
    assert plan(kind="binary", baseline=0.9, effect=0.01).total > 3 * base.total
    assert sum(base.per_arm) >= base.total and base.days(1000.0) == base.total / 1000.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "binary", "baseline": 0.99, "effect": 0.02}, "strictly between 0 and 1"),
        ({"kind": "continuous", "baseline": 1.0, "effect": 0.1}, "standard deviation"),
        ({"kind": "binary", "baseline": 0.5, "effect": 0.0}, "non-zero"),
        ({"kind": "binary", "baseline": 0.5, "effect": 0.1, "power": 1.0}, "power"),
        ({"kind": "binary", "baseline": 0.5, "effect": 0.1, "weights": (0.0, 1.0)}, "weights"),
        ({"kind": "ratio", "baseline": 0.5, "effect": 0.1}, "kind"),
    ],
)
def test_bad_requests_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_the_cli_prints_the_plan_and_names_bad_input() -> None:
    from typer.testing import CliRunner

    from edgeloop_control.cli import app

    args = ["ab", "plan", "--baseline", "0.9", "--effect", "0.02", "--weight", "20"]
    out = CliRunner().invoke(app, [*args, "--labels-per-day", "2000", "--json"])
    assert out.exit_code == 0, out.output
    import json

    data = json.loads(out.stdout)
    want = plan(kind="binary", baseline=0.9, effect=0.02, weights=(80.0, 20.0))
    assert (data["total"], data["challenger"]) == (want.total, want.per_arm[1])
    assert data["days"] == pytest.approx(want.total / 2000)
    bad = CliRunner().invoke(app, ["ab", "plan", "--baseline", "0.99", "--effect", "0.02"])
    assert bad.exit_code == 1 and "strictly between 0 and 1" in bad.output
    # One share style: 20%, 0.2 and 20 (a bare number above 1 is percent) are the same plan.
    for same in ("20%", "0.2"):
        again = CliRunner().invoke(app, [*args[:-1], same, "--json"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["total"] == want.total
    full = CliRunner().invoke(app, [*args[:-1], "100%"])
    assert full.exit_code == 1 and "--weight must be within (0%, 100%)" in full.output
