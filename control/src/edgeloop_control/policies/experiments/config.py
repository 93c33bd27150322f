"""Settings of the A/B experiment policy: the ``[experiment]`` section of edgeloop.toml."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.infra.shares import parse_share
from edgeloop_control.infra.workspace import Workspace


class ExperimentError(EdgeloopError, ValueError):
    """An experiment request that cannot be carried out; the message says why."""


class ExperimentConfigError(ConfigError, ExperimentError):
    """An ``[experiment]`` setting that cannot be used (both a config and an experiment error,
    so callers catching either keep working)."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ExperimentConfigError(f"experiment.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExperimentConfig:
    """Defaults for new experiments; each experiment keeps a copy taken when it starts.

    A running experiment never changes its alpha, tau or limits when edgeloop.toml is
    edited: the sequential state was computed under them (docs/experiments.md).
    """

    alpha: float = 0.05
    # Mixing sd of the mSPRT in metric units; None: automatic (0.1 pooled sd, frozen at the
    # first counted look). See docs/ab-statistics.md, "Choosing tau".
    tau: float | None = None
    min_samples_per_arm: int = 100
    # The challenger's share of traffic as a fraction (0.5 = 50 %); written like every share
    # (``10%``, ``0.1``, or ``10`` meaning percent, see infra/shares.py) and normalised here.
    challenger_weight: float = 0.5
    auto_decide: bool = True
    max_error_rate: float = 0.05
    max_p99_ms: float = 50.0
    max_duration_s: float | None = None
    # Error-rate and latency guardrails only judge the challenger after this many requests:
    # one failed request out of three is not a 33 % error rate worth rolling back for.
    guardrail_min_requests: int = 50
    srm_threshold: float = 0.001
    # Optional guardrail on the agents' label-free estimate (policies/experiments/estimated.py):
    # roll back when the challenger's estimated accuracy trails the champion's by more than
    # this (absolute). None (or 0 in TOML): off.
    max_estimated_gap: float | None = None

    def __post_init__(self) -> None:
        alpha = _number("alpha", self.alpha)
        if not 0.0 < alpha < 1.0:
            raise ExperimentConfigError(f"experiment.alpha must be in (0, 1), got {alpha}")
        if self.tau is not None and not _number("tau", self.tau) > 0.0:
            raise ExperimentConfigError(
                f"experiment.tau must be > 0 (or absent: automatic), got {self.tau}"
            )
        for name in ("min_samples_per_arm", "guardrail_min_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ExperimentConfigError(
                    f"experiment.{name} must be an integer >= 1, got {value!r}"
                )
        try:
            share = parse_share(
                self.challenger_weight, "experiment.challenger_weight", allow_one=False
            )
        except ConfigError as exc:
            raise ExperimentConfigError(str(exc)) from None
        object.__setattr__(self, "challenger_weight", share)
        if not isinstance(self.auto_decide, bool):
            raise ExperimentConfigError(
                f"experiment.auto_decide must be true or false, got {self.auto_decide!r}"
            )
        rate = _number("max_error_rate", self.max_error_rate)
        if not 0.0 <= rate <= 1.0:
            raise ExperimentConfigError(f"experiment.max_error_rate must be in [0, 1], got {rate}")
        if not _number("max_p99_ms", self.max_p99_ms) > 0.0:
            raise ExperimentConfigError(f"experiment.max_p99_ms must be > 0, got {self.max_p99_ms}")
        limit = self.max_duration_s
        if limit is not None and not _number("max_duration_s", limit) > 0:
            raise ExperimentConfigError(
                f"experiment.max_duration_s must be > 0 (or absent: no limit), got {limit}"
            )
        gap = self.max_estimated_gap
        if gap is not None and not 0.0 < _number("max_estimated_gap", gap) < 1.0:
            raise ExperimentConfigError(
                f"experiment.max_estimated_gap must be in (0, 1) (or absent: off), got {gap}"
            )
        threshold = _number("srm_threshold", self.srm_threshold)
        if not 0.0 < threshold < 1.0:
            raise ExperimentConfigError(
                f"experiment.srm_threshold must be in (0, 1), got {threshold}"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "[experiment]") -> ExperimentConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ExperimentConfigError(
                f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}"
            )
        values = dict(raw)
        # TOML has no null: 0 means "no limit" / "automatic" for the optional settings.
        for name in ("tau", "max_duration_s", "max_estimated_gap"):
            if values.get(name) == 0:
                values[name] = None
        return cls(**values)

    @classmethod
    def from_workspace(cls, ws: Workspace) -> ExperimentConfig:
        return cls.from_dict(dict(ws.section("experiment")), where="[experiment] in edgeloop.toml")

    @classmethod
    def from_stored(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """The copy an experiment keeps (:meth:`to_dict`): its weight is in percent, always.

        Decoded by unit, not through ``parse_share``: a stored ``1`` means 1 %, not 100 %.
        """
        values = dict(raw)
        if "challenger_weight" in values:
            values["challenger_weight"] = (
                _number("challenger_weight", values["challenger_weight"]) / 100.0
            )
        return cls.from_dict(values, where="stored experiment config")

    def to_dict(self) -> dict[str, Any]:
        """What an experiment stores and shows: the weight in percent, as operators read it."""
        return {**asdict(self), "challenger_weight": percent(self.challenger_weight)}


def percent(share: float) -> float:
    """A fraction shown as percent, without float noise (0.07 -> 7.0, not 7.000000000000001)."""
    return round(share * 100.0, 9)
