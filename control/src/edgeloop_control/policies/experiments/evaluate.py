"""One look at an experiment: guardrails, the statistics report and the decision.

Everything statistical comes from :mod:`edgeloop_control.stats`; this module only decides
which numbers go in (per-arm totals, configured weights, request counts) and turns the
operational checks into :class:`~edgeloop_control.stats.Guardrail` results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeloop_agent.wire import keysketch
from edgeloop_control.stats import (
    BinaryStats,
    ContinuousStats,
    Guardrail,
    MixtureSPRT,
    experiment_report,
)
from edgeloop_control.stats.sequential import Kind
from edgeloop_control.stats.srm import SRMResult, sample_ratio_mismatch

from .config import ExperimentConfig
from .estimated import EstimatedArms, estimated_guardrail
from .totals import ArmTotals, OutputWindow, Totals

# How each task's labelled outcomes are compared (docs/experiments.md, "Metrics").
KIND_OF_TASK: dict[str, Kind] = {"classification": "binary", "regression": "continuous"}
METRIC_OF_KIND = {"binary": ("accuracy", True), "continuous": ("mean absolute error", False)}


def new_test(kind: Kind, config: ExperimentConfig) -> MixtureSPRT:
    metric, higher_is_better = METRIC_OF_KIND[kind]
    return MixtureSPRT(
        kind,
        alpha=config.alpha,
        tau=config.tau,
        min_samples_per_arm=config.min_samples_per_arm,
        higher_is_better=higher_is_better,
        metric=metric,
    )


def update_test(test: MixtureSPRT, totals: Totals) -> bool:
    """Feed the cumulative labelled totals to the test; True if it looked (they changed)."""
    a: BinaryStats | ContinuousStats
    b: BinaryStats | ContinuousStats
    if test.kind == "binary":
        a, b = totals.champion.binary(), totals.challenger.binary()
    else:
        a, b = totals.champion.continuous(), totals.challenger.continuous()
    if a == test.champion and b == test.challenger:
        # Same data, same look: a repeated look would only inflate the look count.
        return False
    test.update_totals(a, b)
    return True


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


def drift_guardrail(windows: Sequence[OutputWindow], alpha: float) -> Guardrail:
    """Is the challenger unfit for the data it now sees? Sequential across windows.

    Judged on what differs between the arms, not on input drift (both arms see the same
    inputs, and input drift is the retraining policy's business): the challenger's *output*
    distribution against its own training-time reference. A window where the champion's
    output drifted too (p <= alpha) is excused: the inputs moved, not the challenger.

    Alpha-spending across windows: the k-th tested window fails the challenger only if
    p <= alpha / (k (k + 1)). These levels sum to alpha, so under no drift the chance of a
    false rollback over an experiment of any length is <= alpha (a union bound; no
    independence between windows needed). The old rule, "any window with dataset drift",
    tested every window at ~3.5 %: 15 % false rollbacks after 5 windows, 98 % after 100.
    """
    tested = excused = 0
    for w in windows:
        if w.champion_p_value is not None and w.champion_p_value <= alpha:
            excused += 1
            continue
        tested += 1
        level = alpha / (tested * (tested + 1))
        if w.p_value <= level:
            return Guardrail(
                "drift",
                False,
                f"the challenger's output drifted from its own reference on {w.device} "
                f"(KS p={w.p_value:.3g} <= {level:.3g}, the level of tested window {tested} "
                f"under alpha/(k(k+1)) spending, alpha={alpha:g}) while the champion's output "
                f"on the same inputs did not",
            )
    return Guardrail(
        "drift",
        True,
        f"challenger output consistent with its own reference in {tested} window(s)"
        + (
            f"; {excused} more excused (the champion's output moved too: input drift)"
            if excused
            else ""
        ),
    )


def guardrails(
    config: ExperimentConfig,
    challenger: ArmTotals,
    windows: Sequence[OutputWindow],
    estimated: EstimatedArms | None = None,
) -> list[Guardrail]:
    """The challenger's operational checks, each with a reason naming value and limit."""
    out: list[Guardrail] = []
    need = config.guardrail_min_requests
    n = challenger.requests
    if n < need:
        out.append(
            Guardrail(
                "error_rate",
                True,
                f"{n} challenger requests so far; the error rate is judged from {need}",
            )
        )
    else:
        rate = challenger.errors / n
        ok = rate <= config.max_error_rate
        out.append(
            Guardrail(
                "error_rate",
                ok,
                f"challenger error rate {_pct(rate)} ({challenger.errors}/{n}) "
                f"{'<=' if ok else '>'} limit {_pct(config.max_error_rate)}",
            )
        )
    timed = challenger.latency.count
    p99 = challenger.p99_ms
    if timed < need or p99 is None:
        out.append(
            Guardrail(
                "latency_p99",
                True,
                f"{timed} timed challenger requests so far; p99 is judged from {need}",
            )
        )
    else:
        ok = p99 <= config.max_p99_ms
        out.append(
            Guardrail(
                "latency_p99",
                ok,
                f"challenger p99 {p99:.3g} ms {'<=' if ok else '>'} limit {config.max_p99_ms:g} ms",
            )
        )
    out.append(drift_guardrail(windows, config.alpha))
    if config.max_estimated_gap is not None:
        out.append(estimated_guardrail(estimated, config.max_estimated_gap, need))
    return out


# Below this many expected distinct keys in an arm the keys are not tested yet (the usual
# rule for the chi-square approximation; docs/ab-statistics.md).
MIN_EXPECTED_KEYS = 5.0


def assignment_srm(totals: Totals, weight: float, threshold: float) -> SRMResult:
    """The sample-ratio check on the unit of assignment (docs/ab-statistics.md).

    Keyed requests are assigned by key, so their unit is the distinct key (the merged
    sketches' estimates, tested allowing the sketch's error); unkeyed requests are assigned
    one by one, so theirs is the request. Both kinds present: both are tested, each at
    ``threshold / 2`` (Bonferroni), and the smaller p-value is reported. Totals without
    assignment counts (older agents), or with a key sketch lost on the way (its arm's keys
    would be undercounted), test requests, as before. An arm whose requests go
    missing (a router bug, a crashing variant) shows here even before any label arrives.
    """
    a, b = totals.champion, totals.challenger
    weights = {"champion": 100.0 - weight, "challenger": weight}
    keyed = a.keyed + b.keyed
    if not keyed or not (a.keys_complete and b.keys_complete):
        return sample_ratio_mismatch(
            {"champion": a.requests, "challenger": b.requests}, weights, threshold=threshold
        )
    both = a.unkeyed + b.unkeyed > 0
    level = threshold / 2 if both else threshold
    keys = sample_ratio_mismatch(
        {"champion": a.distinct_keys, "challenger": b.distinct_keys},
        weights,
        threshold=level,
        unit="keys",
        relative_error=keysketch.RELATIVE_ERROR,
        min_expected=MIN_EXPECTED_KEYS,
    )
    if not both:
        return keys
    requests = sample_ratio_mismatch(
        {"champion": a.unkeyed, "challenger": b.unkeyed},
        weights,
        threshold=level,
        unit="unkeyed requests",
    )
    return keys if keys.checked and keys.p_value <= requests.p_value else requests


@dataclass(frozen=True)
class Evaluation:
    report: dict[str, Any]  # experiment_report(...) plus per-arm operational numbers
    action: str
    reason: str
    source: str  # "statistics" (incl. guardrails) or "max_duration"


def evaluate(
    test: MixtureSPRT,
    totals: Totals,
    *,
    weight: float,
    config: ExperimentConfig,
    checks: list[Guardrail],
    started_at: float,
    now: float,
) -> Evaluation:
    """The report at this look and what it says to do."""
    report = experiment_report(
        test,
        weights=(100.0 - weight, weight),
        guardrails=checks,
        srm_result=assignment_srm(totals, weight, config.srm_threshold),
    )
    if report["srm"] is not None:
        report["srm"]["flag"] = report["srm"]["mismatch"]
    for arm in ("champion", "challenger"):
        t = totals.arms[arm]
        report["variants"][arm].update(
            requests=t.requests,
            errors=t.errors,
            error_rate=t.error_rate,
            p99_ms=t.p99_ms,
            requests_by_device=dict(t.requests_by_device),
        )
    action, reason = report["decision"]["action"], report["decision"]["reason"]
    source = "statistics"
    elapsed = now - started_at
    limit = config.max_duration_s
    if action == "continue" and limit is not None and elapsed >= limit:
        action, source = "rollback", "max_duration"
        reason = (
            f"Ending without a winner: the maximum duration of {limit:g} s has "
            f"passed ({elapsed:.0f} s); keeping the champion. Last evaluation: {reason}"
        )
    return Evaluation(report, action, reason, source)


def labels_missing(test: MixtureSPRT) -> bool:
    return test.champion.n == 0 or test.challenger.n == 0


def look_record(report: dict[str, Any], now: float, action: str) -> dict[str, Any]:
    """The numbers the demo report plots for one look (keys of report.model.Look)."""
    a, b = report["variants"]["champion"], report["variants"]["challenger"]
    cs = report["sequential"]["confidence_sequence"] or [None, None]
    srm = report["srm"] or {}

    def finite(x: Any) -> Any:
        return x if isinstance(x, (int, float)) and math.isfinite(x) else None

    return {
        "t": now,
        "n_champion": a["n"],
        "n_challenger": b["n"],
        "requests_champion": a["requests"],
        "requests_challenger": b["requests"],
        "champion_metric": a["metric"],
        "challenger_metric": b["metric"],
        "champion_ci": a["ci"],
        "challenger_ci": b["ci"],
        "estimate": report["difference"]["estimate"],
        "cs_low": finite(cs[0]),
        "cs_high": finite(cs[1]),
        "p_value": report["sequential"]["p_value"],
        "fixed_p_value": finite(report["fixed_horizon"].get("p_value")),
        "srm_p_value": srm.get("p_value"),
        "action": action,
    }
