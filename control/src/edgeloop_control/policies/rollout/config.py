"""Rollout settings: defaults, ``[rollout]`` in edgeloop.toml, per-rollout overrides.

A rollout stores the effective settings it started with, so editing the
workspace config never changes the rules of a rollout already under way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from edgeloop_agent.wire.numeric import is_number
from edgeloop_control.errors import ConfigError, EdgeloopError, reject_unknown_settings
from edgeloop_control.infra.shares import parse_share
from edgeloop_control.infra.workspace import Workspace


class RolloutError(EdgeloopError, ValueError):
    """A rollout request that cannot be carried out; the message says why."""


# Short gate names (CLI ``--gate error_rate=0.02``) -> config fields.
GATE_KEYS = {
    "error_rate": "max_error_rate",
    "p99_ms": "max_p99_ms",
    "restarts": "max_restarts",
    "min_requests": "min_requests",
    "soak_s": "soak_s",
}


@dataclass(frozen=True)
class RolloutConfig:
    canary: float = 0.1  # share of the devices in the first batch (at least one device)
    step: float = 0.25  # share of the devices in each following batch
    batch_timeout_s: float = 120.0  # a batch that has not passed by then fails
    soak_s: float = 5.0  # healthy time after loading, proven by telemetry
    max_error_rate: float = 0.05  # error replies / requests of the new version, per device
    max_p99_ms: float = 50.0  # p99 latency of the new version, per device
    max_restarts: int = 2  # agent restarts (status started_at changes) tolerated per batch
    min_requests: int = 0  # requests each device must serve during the soak (0: idle passes)

    def __post_init__(self) -> None:
        # Validated at construction (workspace file, overrides, a stored rollout's
        # settings alike), so no RolloutConfig that exists can stall a rollout.
        for name in ("canary", "step"):
            value = getattr(self, name)
            if not (is_number(value) and 0.0 < value <= 1.0):
                raise ConfigError(
                    f"{name} must be a share in (0, 1] (e.g. 0.1 or 10%), got {value!r}"
                )
        for name in ("batch_timeout_s", "max_p99_ms"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if not (is_number(self.soak_s) and self.soak_s >= 0):
            raise ConfigError(f"soak_s must be a number >= 0, got {self.soak_s!r}")
        if not (is_number(self.max_error_rate) and 0.0 <= self.max_error_rate <= 1.0):
            raise ConfigError(f"max_error_rate must be within [0, 1], got {self.max_error_rate!r}")
        for name in ("max_restarts", "min_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.soak_s >= self.batch_timeout_s:
            raise ConfigError(
                f"soak_s ({self.soak_s:g}) must be shorter than batch_timeout_s "
                f"({self.batch_timeout_s:g}), or no batch could ever pass"
            )

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "[rollout]") -> RolloutConfig:
        reject_unknown_settings(data, (f.name for f in fields(cls)), source)
        values = dict(data)
        try:
            for name in ("canary", "step"):
                if name in values:
                    values[name] = parse_share(values[name], name)
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_workspace(cls, ws: Workspace) -> RolloutConfig:
        return cls.from_mapping(ws.section("rollout"), source="[rollout] in edgeloop.toml")

    def with_overrides(
        self,
        *,
        canary: float | str | None = None,
        step: float | str | None = None,
        gates: dict[str, Any] | None = None,
        batch_timeout_s: float | None = None,
    ) -> RolloutConfig:
        changes: dict[str, Any] = {}
        if canary is not None:
            changes["canary"] = parse_share(canary, "canary")
        if step is not None:
            changes["step"] = parse_share(step, "step")
        if batch_timeout_s is not None:
            changes["batch_timeout_s"] = batch_timeout_s
        for key, value in (gates or {}).items():
            field = GATE_KEYS.get(key, key)
            if field not in GATE_KEYS.values():
                raise ConfigError(f"unknown gate {key!r}; known gates: {', '.join(GATE_KEYS)}")
            changes[field] = _gate_value(field, value)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_gates(specs: list[str]) -> dict[str, Any]:
    """``["error_rate=0.02", "p99_ms=50"]`` -> ``{"error_rate": 0.02, "p99_ms": 50.0}``."""
    gates: dict[str, Any] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"gate {spec!r} is not NAME=VALUE (e.g. error_rate=0.02)")
        if key not in GATE_KEYS:
            raise ConfigError(f"unknown gate {key!r}; known gates: {', '.join(GATE_KEYS)}")
        gates[key] = _gate_value(GATE_KEYS[key], raw.strip())
    return gates


def _gate_value(field: str, value: Any) -> float | int:
    if field == "max_error_rate" and isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
        scale = 0.01
    else:
        scale = 1.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"gate {field} needs a number, got {value!r}") from None
    if field in ("max_restarts", "min_requests"):
        if number != int(number):
            raise ConfigError(f"gate {field} needs a whole number, got {value!r}")
        return int(number)
    return number * scale
