"""A rollout's progress as the CLI, the report and the dashboard read it.

``describe`` turns the stored rows plus the fleet's inventory into one dict per
rollout (the shape of ``edgeloop rollout status --json``): batches, each
device's state, the gates' measurements and the timings.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.policies.rollout.context import online
from edgeloop_control.policies.rollout.gate import load_error
from edgeloop_control.policies.rollout.plan import serves_target
from edgeloop_control.policies.rollout.store import (
    FINAL,
    ROLLING_BACK,
    RUNNING,
    Batch,
    Member,
    Rollout,
    RolloutStore,
)


def describe(
    store: RolloutStore, r: Rollout, inventory: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    devices = store.devices(r.id)
    counts: dict[str, int] = {}
    batches = []
    for b in store.batches(r.id):
        members = [
            _describe_device(r, dev, inventory.get(dev.device) or {}, counts)
            for dev in devices
            if dev.batch == b.idx
        ]
        batches.append(
            {
                "number": b.idx + 1,
                "kind": "canary" if b.idx == 0 else "step",
                "state": batch_state(r, b),
                "started_at": b.started_at,
                "published_at": b.published_at,
                "passed_at": b.passed_at,
                "failed_at": b.failed_at,
                "devices": members,
            }
        )
    return {
        "id": r.id,
        "model": r.target.variant,
        "state": r.state,
        "reason": r.reason,
        "failure": r.failure,
        "last_error": r.last_error,
        "selector": r.selector,
        "config": r.config,
        "current_batch": min(r.current_batch + 1, r.n_batches),
        "batch_count": r.n_batches,
        "previous_models": _previous_models(devices),
        "devices_total": len(devices),
        "devices_loaded": counts.get("loaded", 0),
        "device_states": counts,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "batches": batches,
    }


def _describe_device(
    r: Rollout, dev: Member, inventory: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any]:
    state = device_state(r, dev, inventory)
    counts[state] = counts.get(state, 0) + 1
    return {
        "device": dev.device,
        "state": state,
        "target_revision": dev.target_revision,
        "reported_revision": (inventory.get("status") or {}).get("revision"),
        "published_at": dev.published_at,
        "loaded_at": dev.loaded_at,
        "restarts": dev.restarts,
        "health": dev.health,
        "failure": dev.failure,
        "rollback_revision": (dev.rollback_doc or {}).get("revision"),
        "rolled_back_at": dev.rolled_back_at,
    }


def _previous_models(devices: list[Member]) -> list[str]:
    return sorted(
        {
            str(m.get("variant") or f"{m.get('name')}@{m.get('version')}")
            for d in devices
            for m in (d.previous_doc or {}).get("models") or []
            if m.get("role", "serve") == "serve"
        }
    )


def device_state(r: Rollout, dev: Member, inventory: dict[str, Any]) -> str:
    """waiting | pending | offline | loaded | failed | rolling_back | rolled_back | untouched."""
    status = inventory.get("status") or {}
    if dev.rolled_back_at is not None:
        return "rolled_back"
    if r.state == ROLLING_BACK and dev.target_doc is not None:
        return "rolling_back"
    if dev.failure:
        return "failed"
    if dev.published_at is None:
        return "untouched" if r.state in FINAL else "waiting"
    if dev.loaded_at is not None or serves_target(status, r.target, dev.target_revision):
        return "loaded"
    if load_error(status, dev.target_revision):
        return "failed"
    return "pending" if online(inventory) else "offline"


def batch_state(r: Rollout, b: Batch) -> str:
    if b.failed_at is not None:
        return "failed"
    if b.passed_at is not None:
        return "passed"
    if b.started_at is None:
        return "skipped" if r.state in FINAL or r.state == ROLLING_BACK else "waiting"
    if b.published_at is None:
        return "publishing"
    return "checking" if r.state == RUNNING else "stopped"
