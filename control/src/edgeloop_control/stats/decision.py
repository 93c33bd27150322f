"""Turn the sequential evidence and the operational guardrails into promote/rollback/continue."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._validation import check_bool, check_count, check_finite, check_open_unit

Action = Literal["promote", "rollback", "continue"]
ACTIONS: tuple[str, ...] = ("promote", "rollback", "continue")


@dataclass(frozen=True)
class Guardrail:
    """Outcome of one operational check on the challenger, evaluated elsewhere.

    Typical names: ``error_rate``, ``latency_p99``, ``drift``. ``reason`` should say what was
    measured against what limit; it is quoted in the decision when the guardrail fails.
    """

    name: str
    passed: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Guardrail.name must be a non-empty string, got {self.name!r}")
        check_bool(f"Guardrail({self.name!r}).passed", self.passed)
        if not isinstance(self.reason, str):
            raise TypeError(
                f"Guardrail({self.name!r}).reason must be a string, "
                f"got {type(self.reason).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    """What to do with the challenger, and a sentence saying why."""

    action: Action
    reason: str

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Decision.action must be one of {ACTIONS}, got {self.action!r}")

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action, "reason": self.reason}


def decide(
    *,
    p_value: float,
    effect: float,
    n_champion: int,
    n_challenger: int,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    min_samples_per_arm: int = 100,
    guardrails: Sequence[Guardrail] = (),
    metric: str = "metric",
    interval: tuple[float, float] | None = None,
) -> Decision:
    """Decide an experiment from an always-valid p-value.

    Order of precedence, most protective first:

    1. any failed guardrail -> rollback (operational harm needs no statistics, and must not
       wait for labels that may never come);
    2. no labelled outcomes in an arm, or fewer than ``min_samples_per_arm`` -> continue;
    3. an empty ``interval`` -> continue, flagged for review (see below);
    4. ``p_value <= alpha`` -> promote if the challenger is better in the direction
       ``higher_is_better`` says, rollback if it is worse;
    5. otherwise continue.

    ``effect`` is challenger − champion on the metric's own scale (NaN allowed when there
    is no data). ``p_value`` must be always-valid (e.g. :class:`MixtureSPRT`); a
    fixed-horizon p-value checked at every look would promote noise.

    ``interval`` is the confidence sequence for the difference, quoted in the reason. An
    empty one (lower > upper) means the difference itself changed during the experiment
    (earlier and later data disagree beyond chance); the statistics then cannot say which
    model is better, so the decision is continue and the reason asks for a review, while
    guardrails still roll back on operational harm.
    """
    p_value = check_finite("p_value", p_value)
    if not 0.0 <= p_value <= 1.0:
        raise ValueError(f"p_value must be in [0, 1], got {p_value}")
    if isinstance(effect, bool) or not isinstance(effect, numbers.Real):
        raise TypeError(f"effect must be a number, got {effect!r} ({type(effect).__name__})")
    effect = float(effect)
    if math.isinf(effect):
        raise ValueError(f"effect must be finite or NaN, got {effect}")
    n_a = check_count("n_champion", n_champion)
    n_b = check_count("n_challenger", n_challenger)
    alpha = check_open_unit("alpha", alpha)
    higher_is_better = check_bool("higher_is_better", higher_is_better)
    min_n = check_count("min_samples_per_arm", min_samples_per_arm)
    _check_guardrails(guardrails)
    if not isinstance(metric, str) or not metric.strip():
        raise ValueError(f"metric must be a non-empty string, got {metric!r}")
    if interval is not None:
        _check_interval(interval)

    failed = [g for g in guardrails if not g.passed]
    if failed:
        details = "; ".join(f"{g.name} ({g.reason})" if g.reason else g.name for g in failed)
        noun = "guardrail" if len(failed) == 1 else "guardrails"
        return Decision("rollback", f"Rolling back: challenger failed {noun} {details}.")

    if n_a == 0 or n_b == 0:
        empty = [arm for arm, n in (("champion", n_a), ("challenger", n_b)) if n == 0]
        return Decision(
            "continue",
            f"Continuing: no labelled outcomes yet for the {' or the '.join(empty)} "
            f"(champion n={n_a}, challenger n={n_b}); check that labels are reaching the "
            f"control node.",
        )
    if n_a < min_n or n_b < min_n:
        return Decision(
            "continue",
            f"Continuing: need at least {min_n} labelled outcomes per arm before deciding "
            f"(champion n={n_a}, challenger n={n_b}).",
        )

    if interval is not None and interval[0] > interval[1]:
        return Decision(
            "continue",
            f"Continuing, needs review: the {metric} difference has not been stable during "
            f"the experiment (the always-valid confidence sequence is empty: later data "
            f"contradict earlier data beyond chance); check the drift and data-quality "
            f"reports before deciding (champion n={n_a}, challenger n={n_b}).",
        )
    cs = (
        ""
        if interval is None
        else f"; {1 - alpha:.0%} confidence sequence for the difference "
        f"[{interval[0]:.4g}, {interval[1]:.4g}]"
    )
    if p_value <= alpha and not math.isnan(effect) and effect != 0.0:
        better = (effect > 0.0) == higher_is_better
        word = "higher" if effect > 0.0 else "lower"
        verdict = "better" if better else "worse"
        lead = "Promoting" if better else "Rolling back"
        return Decision(
            "promote" if better else "rollback",
            f"{lead}: challenger {metric} is {word} than the champion's by {abs(effect):.4g}, "
            f"which is {verdict} (always-valid p={p_value:.3g} <= alpha={alpha:g}{cs}).",
        )
    return Decision(
        "continue",
        f"Continuing: no significant difference in {metric} yet (always-valid "
        f"p={p_value:.3g} > alpha={alpha:g}{cs}; champion n={n_a}, challenger n={n_b}).",
    )


def _check_guardrails(guardrails: object) -> None:
    if isinstance(guardrails, Guardrail | str) or not isinstance(guardrails, Sequence):
        raise TypeError(
            f"guardrails must be a sequence of Guardrail, got {type(guardrails).__name__}"
        )
    for i, g in enumerate(guardrails):
        if not isinstance(g, Guardrail):
            raise TypeError(f"guardrails[{i}] must be a Guardrail, got {type(g).__name__}")


def _check_interval(interval: object) -> None:
    if not isinstance(interval, tuple | list) or len(interval) != 2:
        raise TypeError(f"interval must be a (lower, upper) pair or None, got {interval!r}")
    for i, v in enumerate(interval):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise ValueError(f"interval[{i}] must be a number (inf allowed), got {v!r}")
