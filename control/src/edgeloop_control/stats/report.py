"""One JSON-serialisable report of an experiment at the current look."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._validation import json_float
from .decision import Guardrail
from .means import ContinuousStats, t_interval, welch_ttest
from .proportions import BinaryStats, two_proportion_ztest, wilson_interval
from .sequential import MixtureSPRT
from .srm import DEFAULT_SRM_THRESHOLD, SRMResult, sample_ratio_mismatch

REPORT_SCHEMA = 1

_FIXED_HORIZON_NOTE = (
    "Fixed-horizon test, valid only if this is the single pre-planned look; shown for "
    "reference. Decisions use the always-valid sequential p-value."
)


def _variant(stats: BinaryStats | ContinuousStats, confidence: float) -> dict[str, Any]:
    if isinstance(stats, BinaryStats):
        ci = wilson_interval(stats, confidence)
        extra: dict[str, Any] = {"successes": stats.successes}
    else:
        ci = t_interval(stats, confidence)
        extra = {"std": json_float(stats.std) if stats.n >= 2 else None}
    return {
        "n": stats.n,
        **extra,
        "metric": json_float(ci.estimate),
        "ci": [json_float(ci.lower), json_float(ci.upper)],
        "ci_confidence": confidence,
        "ci_method": ci.method,
    }


def _pair(name: str, value: object) -> tuple[Any, Any]:
    if isinstance(value, Mapping | str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a (champion, challenger) pair, got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name} must have 2 entries (champion, challenger), got {len(value)}")
    return value[0], value[1]


def experiment_report(
    test: MixtureSPRT,
    *,
    weights: Sequence[float] | None = None,
    assignments: Sequence[int] | None = None,
    guardrails: Sequence[Guardrail] = (),
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    srm_result: SRMResult | None = None,
) -> dict[str, Any]:
    """Report of ``test`` after its latest update, ready for ``json.dumps(allow_nan=False)``.

    ``weights`` are the configured (champion, challenger) traffic weights; with them the
    sample ratio is checked on ``assignments`` (requests routed per variant, the better
    input) or, if not given, on the labelled outcome counts. A sample-ratio mismatch is
    added as a failed ``sample_ratio`` guardrail, so the decision rolls back: the comparison
    cannot be trusted, and the champion is the known-good state. ``srm_result``: a check
    the caller ran itself (on distinct routing keys, say), used instead.
    """
    if not isinstance(test, MixtureSPRT):
        raise TypeError(f"test must be a MixtureSPRT, got {type(test).__name__}")
    if isinstance(guardrails, Guardrail | str) or not isinstance(guardrails, Sequence):
        raise TypeError(
            f"guardrails must be a sequence of Guardrail, got {type(guardrails).__name__}"
        )
    if assignments is not None and weights is None:
        raise ValueError("assignments were given without weights; the SRM check needs both")
    a, b = test.champion, test.challenger
    confidence = 1.0 - test.alpha

    srm = None
    all_guardrails = list(guardrails)
    if srm_result is not None:
        srm = {**srm_result.to_dict(), "source": "assignments"}
        if srm_result.mismatch:
            all_guardrails.append(Guardrail("sample_ratio", False, srm_result.reason))
    elif weights is not None:
        weights = _pair("weights", weights)
        counts = (a.n, b.n) if assignments is None else _pair("assignments", assignments)
        result = sample_ratio_mismatch(
            dict(zip(("champion", "challenger"), counts, strict=True)),
            dict(zip(("champion", "challenger"), weights, strict=True)),
            threshold=srm_threshold,
        )
        srm = {**result.to_dict(), "source": "labels" if assignments is None else "assignments"}
        if result.mismatch:
            all_guardrails.append(Guardrail("sample_ratio", False, result.reason))

    if isinstance(a, BinaryStats) and isinstance(b, BinaryStats):
        fixed = two_proportion_ztest(a, b)
    elif isinstance(a, ContinuousStats) and isinstance(b, ContinuousStats):
        fixed = welch_ttest(a, b)
    else:  # pragma: no cover - MixtureSPRT keeps both arms the same type
        raise TypeError("champion and challenger hold different statistics types")

    champ_metric = a.rate if isinstance(a, BinaryStats) else a.mean
    estimate = test.estimate
    relative = (
        estimate / abs(champ_metric)
        if math.isfinite(estimate) and math.isfinite(champ_metric) and champ_metric != 0.0
        else math.nan
    )
    cs = test.confidence_sequence
    decision = test.decision(all_guardrails)
    return {
        "schema": REPORT_SCHEMA,
        "kind": test.kind,
        "metric": test.metric,
        "higher_is_better": test.higher_is_better,
        "alpha": test.alpha,
        "variants": {"champion": _variant(a, confidence), "challenger": _variant(b, confidence)},
        "difference": {
            "estimate": json_float(estimate),
            "relative": json_float(relative),
            "definition": "challenger - champion",
        },
        "fixed_horizon": {**fixed.to_dict(), "note": _FIXED_HORIZON_NOTE},
        "sequential": {
            "method": "mSPRT, normal mixture (Johari et al. 2022)",
            "p_value": test.p_value,
            "confidence_sequence": None if cs is None else [json_float(cs[0]), json_float(cs[1])],
            "confidence_sequence_empty": cs is None,
            "confidence": confidence,
            "tau": json_float(test.tau),
            "tau_source": "configured" if test.tau_configured else f"auto ({test.tau_sd:g} sd)",
            "looks": test.looks,
            "min_samples_per_arm": test.min_samples_per_arm,
        },
        "srm": srm,
        "guardrails": [g.to_dict() for g in all_guardrails],
        "decision": decision.to_dict(),
    }
