"""The experiment's drift guardrail: sequential across windows, judged on what differs.

It used to fail the challenger if any window since the start showed dataset drift: each
window a test at a few percent, so with no drift at all a long experiment was almost
certainly rolled back (15 % after 5 windows, 98 % after 100), and input drift, which both
arms see, counted against the challenger. The longer simulation is
bench/sim_drift_guardrail.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import ReferenceProfile, build_reference_profile
from edgeloop_control.policies.experiments.evaluate import drift_guardrail
from edgeloop_control.policies.experiments.totals import OutputWindow

ALPHA = 0.05


def _windows(ps: list[float], champion: list[float | None] | None = None) -> list[OutputWindow]:
    champion = champion or [None] * len(ps)
    return [
        OutputWindow("d1", f"r{k}", p, c) for k, (p, c) in enumerate(zip(ps, champion, strict=True))
    ]


def test_levels_are_spent_as_alpha_over_k_k_plus_1() -> None:
    assert not drift_guardrail(_windows([0.024]), ALPHA).passed  # window 1: 0.05/2
    assert drift_guardrail(_windows([0.026]), ALPHA).passed
    assert drift_guardrail(_windows([0.5, 0.009]), ALPHA).passed  # window 2: 0.05/6
    failed = drift_guardrail(_windows([0.5, 0.5, 0.004]), ALPHA)  # window 3: 0.05/12
    assert not failed.passed
    assert "KS p=0.004 <= 0.00417, the level of tested window 3" in failed.reason


def test_windows_where_the_champion_moved_too_are_excused_and_spend_nothing() -> None:
    check = drift_guardrail(_windows([1e-9, 1e-12], [1e-6, 0.01]), ALPHA)
    assert check.passed and "2 more excused" in check.reason
    # The next tested window is window 1 again (level 0.025): excused ones spend no alpha.
    assert not drift_guardrail(_windows([1e-9, 0.02], [1e-6, 0.3]), ALPHA).passed
    # No champion window in that report: judged alone.
    assert not drift_guardrail(_windows([1e-9], [None]), ALPHA).passed


def test_false_rollbacks_stay_below_alpha_for_any_length_with_uniform_p_values() -> None:
    rng = np.random.default_rng(11)
    runs, length = 2000, 500
    p = rng.random((runs, length))
    levels = ALPHA / (np.arange(1, length + 1) * np.arange(2, length + 2))
    rate = np.mean((p <= levels).any(axis=1))
    # The function itself on a subset, to tie the vectorised rule to it.
    for r in range(50):
        assert drift_guardrail(_windows(p[r].tolist()), ALPHA).passed == (
            not (p[r] <= levels).any()
        )
    assert rate <= stats.binom.ppf(0.999, runs, ALPHA) / runs
    # The old per-window rule at 3.5 % on the same p-values, for scale.
    assert np.mean((p[:, :100] <= 0.035).any(axis=1)) > 0.95


def _score(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(X @ w)))


def test_real_monitors_no_drift_no_rollback_input_drift_excused_broken_caught() -> None:
    rng = np.random.default_rng(5)
    w_a, w_b = np.array([1.0, -0.5, 0.8]), np.array([1.1, -0.4, 0.9])
    X = rng.normal(size=(2000, 3))
    names = ["f0", "f1", "f2"]
    refs = [
        ReferenceProfile.from_dict(build_reference_profile(X, names, _score(X, w)))
        for w in (w_a, w_b)
    ]
    cfg = DriftConfig(window=WindowConfig("count", 200))

    def experiment(scenario: str, windows: int, seed: int) -> tuple[bool, bool]:
        """(old rule rolled back, new rule rolled back)."""
        r = np.random.default_rng(seed)
        champion, challenger = DriftMonitor(refs[0], cfg), DriftMonitor(refs[1], cfg)
        seen: list[OutputWindow] = []
        old = False
        for k in range(windows):
            live = r.normal(size=(200, 3))
            if scenario == "input drift" and k >= 3:
                live[:, 0] += 1.0
            lc = live.copy()
            if scenario == "broken" and k >= 3:
                lc[:, 0] *= 3.0  # the new version's preprocessing has a unit bug
            (ra,) = champion.update(live, _score(live, w_a))
            (rb,) = challenger.update(lc, _score(lc, w_b))
            old = old or rb.dataset_drift
            assert ra.output is not None and rb.output is not None
            seen.append(OutputWindow("d1", str(k), rb.output.ks_p, ra.output.ks_p))
        return old, not drift_guardrail(seen, ALPHA).passed

    null = [experiment("null", 25, s) for s in range(40)]
    assert sum(new for _, new in null) <= 6  # binomial slack for 40 runs at 5 %
    assert sum(old for old, _ in null) > sum(new for _, new in null)
    shared = [experiment("input drift", 8, 100 + s) for s in range(10)]
    assert all(old for old, _ in shared) and not any(new for _, new in shared)
    broken = [experiment("broken", 8, 200 + s) for s in range(10)]
    assert all(new for _, new in broken)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_nothing_to_judge_passes(alpha: float) -> None:
    assert drift_guardrail([], alpha).passed


def test_output_windows_pairs_the_arms_by_report_and_skips_what_it_cannot_read(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    import json

    from edgeloop_control.infra.db import ControlDB
    from edgeloop_control.policies.experiments.totals import output_windows

    db = ControlDB(tmp_path / "control.db")

    def window(report: str, idx: int, device: str, variant: str, doc: str, enough: int = 1) -> None:
        db.conn.execute(
            "INSERT INTO drift_windows(report_id, idx, device, variant, version, start, end, n, "
            "enough_data, dataset_drift, output_drift, drifted, doc) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (report, idx, device, variant, "v", 0, 1, 200, enough, 0, 0, "[]", doc),
        )

    def doc(p: object) -> str:
        return json.dumps({"output": {"ks_p": p}})

    window("r1", 0, "d1", "m@v1", doc(1e-6))  # champion moved in r1
    window("r1", 1, "d1", "m@v2", doc(1e-9))
    window("r2", 0, "d1", "m@v2", doc(0.3))  # no champion window in r2
    window("r3", 0, "d1", "m@v2", "{not json")  # unreadable: skipped, nothing raised
    window("r4", 0, "d1", "m@v2", json.dumps({"output": None}))
    window("r5", 0, "d1", "m@v2", doc(0.01), enough=0)  # too few rows: not judged
    window("r6", 0, "d9", "m@v2", doc(1e-12))  # a device outside the experiment
    window("r7", 0, "d1", "m@v2", doc("0.5"))  # a string is not a p-value
    db.conn.commit()
    got = output_windows(db, "m@v1", "m@v2", ["d1"], 0)
    assert got == [
        OutputWindow("d1", "r1", 1e-9, 1e-6),
        OutputWindow("d1", "r2", 0.3, None),
    ]
    check = drift_guardrail(got, ALPHA)
    assert check.passed and "1 window(s); 1 more excused" in check.reason
    assert output_windows(db, "m@v1", "m@v2", [], 0) == []
