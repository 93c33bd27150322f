"""Judging a published batch: one look at each device, then the gates.

A look (:func:`observe`) records what changed on the device since the last one
(came online, restarted, loaded the target, its health) and whether a hard gate
failed (it reported it cannot load the target; it crash-loops). Each device is
then offline (not waited for), waiting (not loaded, not soaked, too few
requests) or judged; once nobody is waited for, the health gates (error rate,
p99) decide. Each gate is one small function below, named after what it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeloop_control.fleet.inventory import offline_for
from edgeloop_control.policies.rollout.config import RolloutConfig
from edgeloop_control.policies.rollout.context import RolloutContext, online
from edgeloop_control.policies.rollout.gate import (
    Health,
    agent_update_failure,
    load_error,
    measure,
    soaked,
    unhealthy,
)
from edgeloop_control.policies.rollout.plan import Target, serves_target
from edgeloop_control.policies.rollout.store import Member, Rollout

# (event step, message, data) recorded with the observation that caused it.
Event = tuple[str, str, dict[str, Any]]

# The columns an observation reads and rewrites: compare-and-set on them, so
# with two drivers (daemon and a CLI --wait) each observation and its event is
# recorded once.
_GUARDED = ("seen_online", "last_started_at", "restarts", "loaded_at")


@dataclass
class Verdict:
    passed: bool = False
    failure: str | None = None
    waiting: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    judged: dict[str, Health] = field(default_factory=dict)


@dataclass
class Observation:
    """What one look at a device found, and what of it to record."""

    status: dict[str, Any]
    online: bool
    restarts: int
    loaded_at: float | None = None
    health: Health | None = None
    failure: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def judge(ctx: RolloutContext, r: Rollout, idx: int, config: RolloutConfig, now: float) -> Verdict:
    """Look at every device of batch ``idx``; passed, failed or still waiting."""
    verdict = Verdict()
    failures: list[str] = []
    for dev in ctx.store.devices(r.id, batch=idx):
        inventory = ctx.db.device(dev.device) or {}
        seen = observe(ctx, r.target, dev, inventory, config, now)
        if not _record(ctx, r.id, dev, seen):
            verdict.waiting.append(f"{dev.device} was updated concurrently")
            continue
        if seen.failure:
            failures.append(seen.failure)
        _classify(verdict, dev, inventory, seen, config, ctx.offline_after_s, now, r.target)
    if failures:
        verdict.failure = "; ".join(failures)
        return verdict
    if verdict.waiting:
        return verdict
    # Every device we wait for has soaked: now the health gates decide.
    return _health_gates(ctx, r.id, verdict, config)


def observe(
    ctx: RolloutContext,
    target: Target,
    dev: Member,
    inventory: dict[str, Any],
    config: RolloutConfig,
    now: float,
) -> Observation:
    is_online = online(inventory)
    seen = Observation(inventory.get("status") or {}, is_online, dev.restarts, dev.loaded_at)
    if is_online and not dev.seen_online:
        seen.changes["seen_online"] = 1
    _count_restarts(dev, seen)
    seen.failure = _load_failure(dev, seen.status, target) or _crash_loop(dev, seen, config)
    _notice_loaded(dev, seen, target, now)
    if seen.loaded_at is not None and dev.target_revision is not None:
        seen.health = measure(ctx.db, dev.device, target, dev.target_revision)
        seen.changes["health"] = seen.health.to_dict()
    if seen.failure:
        seen.changes["failure"] = seen.failure
    return seen


# -- hard gates and observations ---------------------------------------------------------


def _count_restarts(dev: Member, seen: Observation) -> None:
    """Crash loop detection: every new ``started_at`` is a new agent process."""
    started = seen.status.get("started_at") if seen.online else None
    if not isinstance(started, (int, float)) or started == dev.last_started_at:
        return
    if dev.last_started_at is not None:
        seen.restarts += 1
        seen.changes["restarts"] = seen.restarts
        seen.events.append(
            (
                "device_restarted",
                f"{dev.device} restarted ({seen.restarts} since its desired state was sent)",
                {"device": dev.device, "restarts": seen.restarts},
            )
        )
    seen.changes["last_started_at"] = started


def _load_failure(dev: Member, status: dict[str, Any], target: Target) -> str | None:
    """The agent reported it cannot apply the target revision (load, fetch, verify)."""
    error = load_error(status, dev.target_revision) or agent_update_failure(status, target)
    return f"{dev.device} could not load {target.variant}: {error}" if error else None


def _crash_loop(dev: Member, seen: Observation, config: RolloutConfig) -> str | None:
    if seen.restarts <= config.max_restarts:
        return None
    return (
        f"{dev.device} restarted {seen.restarts} times (crash loop; the gate allows "
        f"{config.max_restarts})"
    )


def _notice_loaded(dev: Member, seen: Observation, target: Target, now: float) -> None:
    if seen.loaded_at is not None or not serves_target(seen.status, target, dev.target_revision):
        return
    # The device's own timestamp of the report: the soak is measured on its
    # clock, like the telemetry that proves it.
    ts = seen.status.get("ts")
    seen.loaded_at = float(ts) if isinstance(ts, (int, float)) else now
    seen.changes["loaded_at"] = seen.loaded_at
    seen.events.append(
        (
            "device_loaded",
            f"{dev.device} serves {target.variant} (r{seen.status.get('revision')})",
            {"device": dev.device, "revision": seen.status.get("revision")},
        )
    )


def _record(ctx: RolloutContext, rollout_id: str, dev: Member, seen: Observation) -> bool:
    """Store the observation and its events; False if another driver got there first."""
    if not seen.changes:
        return True
    guard = {k: getattr(dev, k) for k in _GUARDED}
    with ctx.store.transaction():
        if not ctx.store.update_device(rollout_id, dev.device, seen.changes, where=guard):
            return False
        for step, message, data in seen.events:
            ctx.event(rollout_id, step, message, **data)
    return True


# -- waiting, offline, judged ---------------------------------------------------------------


def _classify(
    verdict: Verdict,
    dev: Member,
    inventory: dict[str, Any],
    seen: Observation,
    config: RolloutConfig,
    offline_after_s: float,
    now: float,
    target: Target,
) -> None:
    gone = offline_for(inventory, now)
    # Offline longer than [fleet] offline_after_s: not crashing, gone; skipped, not waited for.
    if _not_waited_for(dev, seen, target) or (gone is not None and gone > offline_after_s):
        verdict.offline.append(dev.device)
        return
    why = _waiting_for(dev, inventory, seen, config)
    if why:
        verdict.waiting.append(why)
    elif seen.health is not None:
        verdict.judged[dev.device] = seen.health


def _not_waited_for(dev: Member, seen: Observation, target: Target) -> bool:
    """Offline when its batch came (or shut down cleanly since): the retained desired
    state reaches it when it returns. A device seen online that then vanished
    ("lost") may be crashing: that one is waited for. So is one that stopped
    during an agent package's rollout: installing the package stops it."""
    ever_seen = dev.seen_online or seen.online
    stopped = target.agent is None and not seen.online and seen.status.get("reason") == "stopped"
    return not ever_seen or stopped


def _waiting_for(
    dev: Member, inventory: dict[str, Any], seen: Observation, config: RolloutConfig
) -> str | None:
    """Why the gate cannot judge this device yet, or None."""
    if seen.loaded_at is None:
        if seen.online:
            return f"{dev.device} has not loaded it (reports r{seen.status.get('revision')})"
        return f"{dev.device} went offline ({seen.status.get('reason', 'lost')}) before loading it"
    if not soaked(inventory, seen.loaded_at, int(dev.target_revision or 0), config.soak_s):
        return f"{dev.device} has no telemetry {config.soak_s:g} s after loading yet"
    if seen.health is not None and seen.health.requests < config.min_requests:
        return (
            f"{dev.device} served {seen.health.requests} of the {config.min_requests} "
            "requests the gate needs"
        )
    return None


def _health_gates(
    ctx: RolloutContext, rollout_id: str, verdict: Verdict, config: RolloutConfig
) -> Verdict:
    failures = []
    for device, health in verdict.judged.items():
        why = unhealthy(health, config)
        if why:
            failures.append(f"{device}: {why}")
            ctx.store.update_device(rollout_id, device, {"failure": why})
    if failures:
        verdict.failure = "; ".join(failures)
    else:
        verdict.passed = True
    return verdict
