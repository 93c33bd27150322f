"""The batch gate: did a device load the target, and is it healthy on it?

Inputs are what the daemon ingested: the device's retained status (inventory)
and its telemetry reports (``variant_stats``). Only reports made while the
device served the rollout's revision count (``revision >= target revision``),
so traffic a version saw earlier, e.g. as an A/B challenger, does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeloop_control.infra.db import ControlDB, merged_p99_ms
from edgeloop_control.policies.rollout.config import RolloutConfig
from edgeloop_control.policies.rollout.plan import Target


@dataclass(frozen=True)
class Health:
    requests: int
    errors: int
    p99_ms: float | None
    reports: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}


def measure(db: ControlDB, device: str, target: Target, revision: int) -> Health:
    """Requests, errors and merged p99 of ``target`` on ``device`` since ``revision``."""
    if target.agent is not None:
        # An agent package: the health of everything the device serves under it.
        rows = db.conn.execute(
            "SELECT requests, errors, latency FROM variant_stats "
            "WHERE device = ? AND revision >= ?",
            (device, revision),
        ).fetchall()
    else:
        rows = db.conn.execute(
            "SELECT requests, errors, latency FROM variant_stats "
            "WHERE device = ? AND variant = ? AND revision >= ?",
            (device, target.variant, revision),
        ).fetchall()
    requests = sum(int(row["requests"]) for row in rows)
    errors = sum(int(row["errors"]) for row in rows)
    p99_ms = merged_p99_ms(row["latency"] for row in rows)
    return Health(requests, errors, p99_ms, len(rows))


def unhealthy(health: Health, config: RolloutConfig) -> str | None:
    """Why ``health`` fails the gates, or None."""
    if health.requests and health.error_rate > config.max_error_rate:
        return (
            f"error rate {health.error_rate:.1%} ({health.errors}/{health.requests}) "
            f"over the {config.max_error_rate:.1%} gate"
        )
    if health.p99_ms is not None and health.p99_ms > config.max_p99_ms:
        return f"p99 latency {health.p99_ms:.1f} ms over the {config.max_p99_ms:g} ms gate"
    return None


def agent_update_failure(status: dict[str, Any] | None, target: Target) -> str | None:
    """The device's one-shot gave up on the target agent package (rolled back, failed)."""
    update = (status or {}).get("agent_update")
    if target.agent is None or not isinstance(update, dict):
        return None
    if update.get("sha256") != target.sha256 or update.get("state") not in (
        "rolled_back",
        "failed",
    ):
        return None
    return f"agent_update {update.get('state')}: {update.get('reason') or 'no reason given'}"


def load_error(status: dict[str, Any] | None, revision: int | None) -> str | None:
    """The agent's report that it could not apply ``revision`` (load, fetch, verify...)."""
    error = (status or {}).get("error")
    if revision is None or not isinstance(error, dict) or error.get("revision") != revision:
        return None
    return f"{error.get('code', 'error')}: {error.get('message', '')}".strip()


def soaked(
    inventory: dict[str, Any] | None, loaded_at: float | None, revision: int, soak_s: float
) -> bool:
    """A telemetry report made on ``revision`` at least ``soak_s`` after loading.

    Both times are the device's own clock (status and report timestamps), so a
    skewed device clock cannot shorten or stretch the soak.
    """
    if loaded_at is None:
        return False
    telemetry = (inventory or {}).get("telemetry") or {}
    ts, reported = telemetry.get("ts"), telemetry.get("revision")
    return (
        isinstance(ts, (int, float))
        and isinstance(reported, int)
        and reported >= revision
        and ts >= loaded_at + soak_s
    )
