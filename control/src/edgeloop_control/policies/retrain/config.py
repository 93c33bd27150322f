"""Settings of the retraining policy: the ``[retrain]`` section of edgeloop.toml.

Validated once, when the policy is built: a typo in edgeloop.toml stops
``edgeloop serve`` with one line naming the key, instead of surfacing as a
failed retraining an hour later when drift finally shows up.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from edgeloop_control.errors import ConfigError
from edgeloop_control.infra.shares import parse_share
from edgeloop_control.infra.workspace import Workspace

SIGNALS = ("features", "output", "concept", "estimated_performance")
# On unless configured: the label-free estimate needs calibrated models (docs/drift.md).
DEFAULT_SIGNALS = ("features", "output", "concept")
ESTIMATED_METRICS = ("accuracy", "roc_auc")
SCOPES = ("device", "group", "fleet")
# The metrics the champion gate knows (training.metrics.HIGHER_IS_BETTER; a test
# keeps the two equal). Spelled out here because importing training pulls in
# scikit-learn, seconds of start-up for a daemon that may never retrain.
GATE_METRICS = ("accuracy", "f1", "roc_auc", "log_loss", "mae", "rmse", "r2")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"retrain.{name} must be a finite number, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"retrain.{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _fraction(name: str, value: Any, *, zero_ok: bool) -> float:
    """A share below 100 %, written as the other policies' shares are (``30%`` or ``0.3``)."""
    if zero_ok and not isinstance(value, bool) and value in (0, "0", "0%"):
        return 0.0
    bound = "[0%, 100%)" if zero_ok else "(0%, 100%)"
    try:
        return parse_share(value, f"retrain.{name}", allow_one=False)
    except ConfigError:
        raise ConfigError(
            f"retrain.{name} must be a share within {bound} like 30% or 0.3, got {value!r}"
        ) from None


@dataclass(frozen=True)
class RetrainConfig:
    """How eagerly the policy reacts to drift, and how it trains when it does."""

    enabled: bool = True
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    consecutive_windows: int = 3
    min_samples: int = 400
    cooldown_s: float = 600.0
    scope: str = "fleet"  # device | group | fleet
    # Shares, stored as fractions; "30%" is accepted as everywhere else.
    reference_share: float = 0.3
    holdout: float = 0.25
    gate_metric: str = "accuracy"
    gate_margin: float = 0.0
    # A failing step is retried after retry_base_s, doubling per failure up to
    # retry_max_s: a broken episode must not retrain (and log) every tick.
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    # Signal "estimated_performance": the agents' label-free estimate of this metric fell
    # at least estimated_drop (absolute) below the model's training-time reference, in
    # consecutive_windows windows in a row.
    estimated_metric: str = "accuracy"
    estimated_drop: float = 0.05

    def __post_init__(self) -> None:
        # Normalised in place (frozen): later code only ever sees a tuple of
        # signals, ints and fractions, whatever spelling edgeloop.toml used.
        set_ = object.__setattr__
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"retrain.enabled must be true or false, got {self.enabled!r}")
        set_(self, "signals", _signals(self.signals))
        if self.scope not in SCOPES:
            raise ConfigError(f"retrain.scope must be device, group or fleet, got {self.scope!r}")
        set_(self, "consecutive_windows", _count("consecutive_windows", self.consecutive_windows))
        set_(self, "min_samples", _count("min_samples", self.min_samples))
        cooldown = _number("cooldown_s", self.cooldown_s)
        if cooldown < 0:
            raise ConfigError(f"retrain.cooldown_s must be >= 0, got {self.cooldown_s!r}")
        set_(self, "cooldown_s", cooldown)
        set_(
            self,
            "reference_share",
            _fraction("reference_share", self.reference_share, zero_ok=True),
        )
        set_(self, "holdout", _fraction("holdout", self.holdout, zero_ok=False))
        if self.gate_metric not in GATE_METRICS:
            raise ConfigError(
                f"retrain.gate_metric must be one of {', '.join(GATE_METRICS)}, "
                f"got {self.gate_metric!r}"
            )
        set_(self, "gate_margin", _number("gate_margin", self.gate_margin))
        base = _number("retry_base_s", self.retry_base_s)
        most = _number("retry_max_s", self.retry_max_s)
        if not 0.0 < base <= most:
            raise ConfigError(
                "retrain.retry_base_s must be positive and at most retry_max_s, got "
                f"{self.retry_base_s} and {self.retry_max_s}"
            )
        if self.estimated_metric not in ESTIMATED_METRICS:
            raise ConfigError(
                f"retrain.estimated_metric must be one of {', '.join(ESTIMATED_METRICS)}, "
                f"got {self.estimated_metric!r}"
            )
        drop = _number("estimated_drop", self.estimated_drop)
        if not 0.0 < drop < 1.0:
            raise ConfigError(
                f"retrain.estimated_drop must be in (0, 1) (an absolute drop of the estimated "
                f"metric), got {self.estimated_drop!r}"
            )
        set_(self, "estimated_drop", drop)
        set_(self, "retry_base_s", base)
        set_(self, "retry_max_s", most)

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1, 2, ...)."""
        # The exponent is capped before it is used: 2 ** 10_000 overflows a float.
        doublings = min(max(failures - 1, 0), 64)
        return min(self.retry_max_s, self.retry_base_s * 2.0**doublings)

    @classmethod
    def from_workspace(cls, ws: Workspace) -> RetrainConfig:
        raw = dict(ws.section("retrain"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"[retrain] in edgeloop.toml has unknown keys: {', '.join(unknown)}")
        return cls(**raw)


def _signals(value: Any) -> tuple[str, ...]:
    # A lone string is one signal, not a sequence of letters.
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(
            f"retrain.signals must be a non-empty list drawn from {', '.join(SIGNALS)}, "
            f"got {value!r}"
        )
    bad = [s for s in items if s not in SIGNALS]
    if bad:
        raise ConfigError(
            f"retrain.signals must be drawn from {', '.join(SIGNALS)}, "
            f"got unknown {', '.join(map(repr, bad))}"
        )
    return tuple(items)
