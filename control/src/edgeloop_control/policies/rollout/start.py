"""Starting a rollout: resolve the version, choose the devices, claim them, record it.

Nothing is published here; ``advance.py`` does that on the next tick. The
devices are claimed from ``fleet/desired.py`` in the very transaction that
records the rollout, so of two policies starting on the same device at once
exactly one gets it, and the other is told who has it.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from edgeloop_control.fleet.desired import DeployError, DeviceOwned, check_device_ids
from edgeloop_control.fleet.inventory import UnknownDevice, require_known, split_stale, stale_note
from edgeloop_control.policies.rollout.config import RolloutConfig, RolloutError
from edgeloop_control.policies.rollout.context import RolloutContext
from edgeloop_control.policies.rollout.plan import Target, split_batches
from edgeloop_control.policies.rollout.store import RUNNING


def start_rollout(
    ctx: RolloutContext,
    config: RolloutConfig,
    model_ref: str | Target,
    *,
    devices: list[str] | None,
    group: str | None,
    reason: str | None,
) -> str:
    """Record a rollout of ``model_ref`` (or a resolved target: an agent package,
    policies/rollout/agenttarget.py) under ``config``; returns its id."""
    target = resolve(ctx, model_ref) if isinstance(model_ref, str) else model_ref
    now = time.time()
    rollout_id = f"ro-{secrets.token_hex(4)}"
    with ctx.store.transaction() as conn:
        chosen, selector = select(ctx, devices, group)
        chosen, stale = split_stale(ctx.db, chosen, ctx.offline_after_s, now)
        if stale:
            selector["skipped_offline"] = [s.device for s in stale]
        if not chosen:
            raise RolloutError(
                f"no device to roll out to: {stale_note(stale, ctx.offline_after_s)}"
            )
        current = {d: ctx.db.desired(d) for d in chosen}
        missing = [d for d, doc in current.items() if doc is None]
        if missing:
            raise RolloutError(
                f"no desired state yet for {', '.join(missing)}: a rollout replaces a "
                "running model and needs one to roll back to; give them a first model "
                "with `edgeloop deploy MODEL@vN --device ID`"
            )
        try:
            ctx.desired.claim(ctx.owner(rollout_id), chosen, conn=conn)
        except DeviceOwned as exc:
            raise RolloutError(_refusal(exc)) from None
        batches = split_batches(chosen, config.canary, config.step)
        ctx.store.insert(
            conn,
            {
                "id": rollout_id,
                "model": target.name,
                "version": target.version,
                "target": target.to_dict(),
                "state": RUNNING,
                "config": config.to_dict(),
                "selector": selector,
                "reason": reason,
                "n_batches": len(batches),
                "current_batch": 0,
                "created_at": now,
                "updated_at": now,
            },
            batches,
            {d: doc[1] for d, doc in current.items() if doc is not None},
        )
        sizes = ", ".join(str(len(b)) for b in batches)
        ctx.event(
            rollout_id,
            "started",
            f"rollout of {target.variant} to {len(chosen)} device(s) in {len(batches)} "
            f"batch(es) of {sizes}"
            + (f" ({reason})" if reason else "")
            + (f"; {stale_note(stale, ctx.offline_after_s)}" if stale else ""),
            model=target.variant,
            batches=batches,
            config=config.to_dict(),
            reason=reason,
        )
    return rollout_id


def _refusal(exc: DeviceOwned) -> str:
    """The rollout's own wording (unchanged for a clash with another rollout),
    naming whichever experiment or rollout holds the devices."""
    owners = sorted(set(exc.owned.values()), key=str)
    kinds = {o.kind for o in owners}
    who = (
        f"{owners[0].kind} {', '.join(o.id for o in owners)}"
        if len(kinds) == 1
        else ", ".join(str(o) for o in owners)
    )
    return (
        f"{', '.join(sorted(exc.owned))} already in running {who}; wait for it to finish "
        f"or stop it with `{owners[0].end_command}`"
    )


def resolve(ctx: RolloutContext, model_ref: str) -> Target:
    from edgeloop_control.registry import RegistryError

    try:
        mv = ctx.registry().get(model_ref)
    except RegistryError as exc:
        raise RolloutError(str(exc)) from None
    return Target(mv.name, mv.version, mv.sha256, mv.size, mv.signature)


def select(
    ctx: RolloutContext, devices: list[str] | None, group: str | None
) -> tuple[list[str], dict[str, Any]]:
    """The devices in rollout order (online first) and the selector to record."""
    if devices is not None and group:
        raise RolloutError("name devices or a group, not both")
    if devices is not None:
        if not devices:
            # Never widen an empty selection to the whole fleet.
            raise RolloutError("the device list is empty; name at least one device")
        try:
            # A rollout needs a version to roll back to: a new device gets a first one from
            # `edgeloop deploy`, so no --new-device here.
            chosen = require_known(ctx.db, check_device_ids(devices), new_device=None)
            return chosen, {"devices": list(devices)}
        except (DeployError, UnknownDevice) as exc:
            raise RolloutError(str(exc)) from None
    if group:
        members = [d for d in ctx.db.devices() if group in (d.get("groups") or [])]
        if not members:
            raise RolloutError(
                f"group {group!r} has no devices; set it with `edgeloop group set {group} ID...`"
            )
        selector: dict[str, Any] = {"group": group}
    else:
        # Devices the inventory knows: a desired state left for a device that never existed
        # (a typo deployed before devices had to be known) is no member of the fleet.
        known = {d["device"]: d for d in ctx.db.devices()}
        members = [known[d] for d in sorted(ctx.db.all_desired()) if d in known]
        if not members:
            raise RolloutError(
                "no device has desired state yet; deploy a first version with "
                "`edgeloop deploy MODEL@vN --device ID`"
            )
        selector = {"all": True}
    # Online devices first: the canary should be a device that can answer now.
    members.sort(key=lambda d: (not d.get("online"), d["device"]))
    return [d["device"] for d in members], selector
