"""``[retention]`` in edgeloop.toml: how long raw rows, hourly aggregates, events and
de-duplication ids are kept, and how the daemon paces the work. Checked at construction."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from edgeloop_agent.wire.numeric import is_number
from edgeloop_control.errors import ConfigError, reject_unknown_settings
from edgeloop_control.infra.workspace import Workspace

DAY_S = 86400.0
# The daemon's broker session lives 7 days (daemon/service.py): a report redelivered after a
# week-long outage is still recognised as a duplicate only while its id is kept.
MIN_DEDUP_DAYS = 8.0
FOREVER = "forever"


@dataclass(frozen=True)
class RetentionConfig:
    enabled: bool = True
    raw_days: float = 7.0  # per-report telemetry, drift windows, concept-drift rows
    # Hourly aggregates after that; None (``"forever"`` in the file) keeps them.
    aggregate_days: float | None = 90.0
    events_days: float = 30.0  # events of the kinds below; every other kind is kept
    # Connection noise, and this job's own hourly record.
    event_kinds: tuple[str, ...] = ("device", "device_error", "poison", "retention")
    dedup_days: float = 30.0  # seen_messages (report ids already stored)
    interval_s: float = 3600.0  # between the starts of two runs
    batch_rows: int = 500  # rows per transaction: bounds the write lock others wait on
    tick_budget_s: float = 0.2  # work per daemon tick; a run continues at the next tick
    vacuum_pages: int = 500  # pages returned to the file system per step (2 MB at 4 KB)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("raw_days", "events_days", "dedup_days", "interval_s", "tick_budget_s"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.raw_days < 1:
            # The retraining trigger and the fleet view read the last hours raw.
            raise ConfigError(f"raw_days must be at least 1, got {self.raw_days!r}")
        if self.aggregate_days is not None and not (
            is_number(self.aggregate_days) and self.aggregate_days > self.raw_days
        ):
            raise ConfigError(
                f"aggregate_days must be a number of days above raw_days ({self.raw_days:g}) "
                f"or {FOREVER!r}, got {self.aggregate_days!r}"
            )
        if self.dedup_days < MIN_DEDUP_DAYS:
            raise ConfigError(
                f"dedup_days must be at least {MIN_DEDUP_DAYS:g} (the daemon's broker session "
                f"redelivers for 7 days), got {self.dedup_days!r}"
            )
        for name in ("batch_rows", "vacuum_pages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not all(isinstance(k, str) and k for k in self.event_kinds):
            raise ConfigError(
                f"event_kinds must be a list of event kinds, got {self.event_kinds!r}"
            )

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "[retention]") -> RetentionConfig:
        reject_unknown_settings(data, (f.name for f in fields(cls)), source)
        values = dict(data)
        if values.get("aggregate_days") == FOREVER:
            values["aggregate_days"] = None
        if "event_kinds" in values:
            kinds = values["event_kinds"]
            if not isinstance(kinds, list):
                raise ConfigError(f"{source}: event_kinds must be a list, got {kinds!r}")
            values["event_kinds"] = tuple(kinds)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_workspace(cls, ws: Workspace) -> RetentionConfig:
        return cls.from_mapping(ws.section("retention"), source="[retention] in edgeloop.toml")

    @property
    def raw_s(self) -> float:
        return self.raw_days * DAY_S

    @property
    def aggregate_s(self) -> float | None:
        return None if self.aggregate_days is None else self.aggregate_days * DAY_S
