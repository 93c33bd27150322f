"""Moving a running rollout on: publish a batch, judge it, pass it (or fail it).

Every decision is read from and written to SQLite before anything is sent, so
a new manager on the same database (control-node restart) continues where the
old one stopped and republishes only identical documents. Desired state goes
out through ``fleet/desired.py`` as the rollout's owner.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.policies.rollout.agenttarget import agent_plan, publish_agent_package
from edgeloop_control.policies.rollout.config import RolloutConfig, RolloutError
from edgeloop_control.policies.rollout.context import (
    PUBLISH_ERRORS,
    NotRunning,
    RolloutContext,
    online,
)
from edgeloop_control.policies.rollout.judge import Verdict, judge
from edgeloop_control.policies.rollout.plan import Target, serves_target
from edgeloop_control.policies.rollout.rollback import fail, roll_back
from edgeloop_control.policies.rollout.store import (
    ACTIVE,
    COMPLETED,
    ROLLING_BACK,
    RUNNING,
    Batch,
    Rollout,
)

# A batch that cannot go out: the registry, the plan, or the publish itself.
_PUBLISH_FAILURES: tuple[type[Exception], ...] = (RolloutError, *PUBLISH_ERRORS)


def advance(ctx: RolloutContext, rollout_id: str, now: float) -> None:
    """Take as many steps as the fleet's reports allow right now."""
    r = ctx.store.rollout(rollout_id)
    # Each step either returns or moves the rollout on, so this is bounded.
    for _ in range(2 * (r.n_batches if r else 0) + 3):
        r = ctx.store.rollout(rollout_id)
        if r is None or r.state not in ACTIVE:
            return
        if r.state == ROLLING_BACK:
            roll_back(ctx, r, now)
            return
        if not _step(ctx, r, now):
            return


def _step(ctx: RolloutContext, r: Rollout, now: float) -> bool:
    """One step of the current batch; True if the rollout moved and may move again."""
    config = RolloutConfig(**r.config)
    idx = r.current_batch
    batch = ctx.store.batch(r.id, idx)
    if batch.published_at is None:
        moved = _publish_step(ctx, r, batch, config, now)
        if moved is not None:
            return moved
        batch = ctx.store.batch(r.id, idx)
    verdict = judge(ctx, r, idx, config, now)
    if verdict.failure:
        fail(ctx, r, idx, verdict.failure, now)
        return True
    if not verdict.passed:
        return _timed_out(ctx, r, batch, config, verdict, now)
    return _pass(ctx, r, idx, verdict, now)


def _publish_step(
    ctx: RolloutContext, r: Rollout, batch: Batch, config: RolloutConfig, now: float
) -> bool | None:
    """Publish batch ``batch``; None once it is out (judge it next), else whether to go on."""
    idx = batch.idx
    if batch.started_at is None:
        ctx.store.update_batch(r.id, idx, {"started_at": now}, where={"started_at": None})
        batch = ctx.store.batch(r.id, idx)
    try:
        _publish_batch(ctx, r, idx, now)
    except NotRunning:
        return True  # re-read: now rolling back
    except _PUBLISH_FAILURES as exc:
        ctx.note_error(r.id, f"publishing batch {idx + 1}: {exc}", now)
        started = batch.started_at if batch.started_at is not None else now
        if now - started > config.batch_timeout_s:
            fail(ctx, r, idx, f"batch {idx + 1} could not be published: {exc}", now)
            return True
        return False
    return None


def _timed_out(
    ctx: RolloutContext,
    r: Rollout,
    batch: Batch,
    config: RolloutConfig,
    verdict: Verdict,
    now: float,
) -> bool:
    """Fail a batch still waiting after the timeout; True if it did."""
    published = batch.published_at if batch.published_at is not None else now
    if now - published <= config.batch_timeout_s:
        return False
    fail(
        ctx,
        r,
        batch.idx,
        f"timed out after {config.batch_timeout_s:g} s: " + "; ".join(verdict.waiting),
        now,
    )
    return True


# -- publishing ------------------------------------------------------------------------------


def _publish_batch(ctx: RolloutContext, r: Rollout, idx: int, now: float) -> None:
    if r.artifact_published_at is None:
        # Artifacts before the desired state naming them (docs/protocol.md).
        _publish_artifact(ctx, r, now)
    for dev in ctx.store.devices(r.id, batch=idx):
        if dev.published_at is not None:
            continue
        doc = dev.target_doc or _plan(ctx, r.id, dev.device, r.target)
        ctx.publish_desired(r.id, dev.device, doc)
        fresh = ctx.store.device(r.id, dev.device)
        if fresh.rollback_doc is not None:
            # A rollback elsewhere (an abort from the CLI) planned this device's
            # rollback while we were publishing its target. Rollback documents are
            # all planned before any is sent, so either it sends after us or we
            # see its plan here: either way the rollback document is sent last.
            ctx.publish_desired(r.id, dev.device, fresh.rollback_doc)
            raise NotRunning
        inventory = ctx.db.device(dev.device) or {}
        is_online = online(inventory)
        started = (inventory.get("status") or {}).get("started_at") if is_online else None
        ctx.store.update_device(
            r.id,
            dev.device,
            {
                "published_at": now,
                "online_at_publish": int(is_online),
                "seen_online": int(is_online),
                "last_started_at": started,
            },
            where={"published_at": None},
        )
    if ctx.store.update_batch(r.id, idx, {"published_at": now}, where={"published_at": None}):
        _announce_batch(ctx, r, idx)


def _publish_artifact(ctx: RolloutContext, r: Rollout, now: float) -> None:
    from edgeloop_control.registry import RegistryError

    target = r.target
    if target.agent is not None:
        size = publish_agent_package(ctx, target, [d.device for d in ctx.store.devices(r.id)])
        if ctx.store.update_rollout(
            r.id,
            {"artifact_published_at": now, "updated_at": now},
            where={"artifact_published_at": None},
        ):
            ctx.event(r.id, "artifact_published", f"published {target.variant} ({size} bytes)")
        return
    try:
        registry = ctx.registry()
        mv = registry.get(target.variant)
        data = registry.artifact_bytes(mv)
    except RegistryError as exc:
        raise RolloutError(f"cannot read {target.variant} from the registry: {exc}") from None
    if mv.sha256 != target.sha256:
        raise RolloutError(
            f"{target.variant} in the registry (sha256 {mv.sha256[:12]}) is not the "
            f"version this rollout started with ({target.sha256[:12]})"
        )
    ctx.desired.publish_artifact(mv, data)
    if ctx.store.update_rollout(
        r.id,
        {"artifact_published_at": now, "updated_at": now},
        where={"artifact_published_at": None},
    ):
        ctx.event(
            r.id, "artifact_published", f"published artifact {target.variant} ({len(data)} bytes)"
        )


def _announce_batch(ctx: RolloutContext, r: Rollout, idx: int) -> None:
    devices = ctx.store.devices(r.id, batch=idx)
    offline = [d.device for d in devices if not d.online_at_publish]
    ctx.event(
        r.id,
        "batch_published",
        f"batch {idx + 1}/{r.n_batches}: desired state {r.target.variant} sent to "
        + ", ".join(f"{d.device} (r{d.target_revision})" for d in devices)
        + (f"; offline, will load it when they return: {', '.join(offline)}" if offline else ""),
        batch=idx + 1,
        devices={d.device: d.target_revision for d in devices},
        offline=offline,
    )


def _plan(ctx: RolloutContext, rollout_id: str, device: str, target: Target) -> dict[str, Any]:
    """The target document for ``device``, planned once and kept for republishing."""
    with ctx.store.transaction():
        dev = ctx.store.device(rollout_id, device)
        if dev.target_doc is not None:
            return dev.target_doc
        # Checked in the same transaction that records the plan: a device is
        # either planned before an abort (and so rolled back) or never.
        rollout = ctx.store.rollout(rollout_id)
        if rollout is None or rollout.state != RUNNING:
            raise NotRunning
        current = ctx.db.desired(device)
        # The document actually being replaced is what a rollback restores,
        # even if someone deployed to the device after the rollout started.
        previous = current[1] if current else dev.previous_doc
        try:
            if target.agent is not None:
                doc, previous = agent_plan(ctx, device, previous, target)
            else:
                doc = ctx.desired.plan(device, [(target, 100.0)], [])
        except DeployError as exc:
            raise RolloutError(f"{device}: {exc}") from None
        ctx.store.update_device(
            rollout_id,
            device,
            {"previous_doc": previous, "target_doc": doc, "target_revision": doc["revision"]},
        )
        return doc


# -- passing -----------------------------------------------------------------------------------


def _pass(ctx: RolloutContext, r: Rollout, idx: int, verdict: Verdict, now: float) -> bool:
    """Record batch ``idx`` as passed (and the rollout complete after the last one).

    False if another driver (daemon or CLI) took this step first.
    """
    last = idx + 1 >= r.n_batches
    with ctx.store.transaction() as conn:
        fields: dict[str, Any] = {"updated_at": now, "last_error": None}
        if last:
            fields.update(state=COMPLETED, finished_at=now)
        else:
            fields["current_batch"] = idx + 1
        if not ctx.store.update_rollout(
            r.id, fields, where={"state": RUNNING, "current_batch": idx}
        ):
            return False
        ctx.store.update_batch(r.id, idx, {"passed_at": now})
        _announce_pass(ctx, r, idx, verdict)
        if last:
            # Done: the devices are free for the next deployment, experiment or rollout.
            ctx.desired.release(ctx.owner(r.id), conn=conn)
            pending = pending_offline(ctx, r)
            ctx.event(
                r.id,
                "completed",
                f"completed: {r.model}@{r.version} on every device"
                + (f" (still offline, get it on return: {', '.join(pending)})" if pending else ""),
                offline=pending,
            )
    return True


def _announce_pass(ctx: RolloutContext, r: Rollout, idx: int, verdict: Verdict) -> None:
    judged = ", ".join(
        f"{d} ({h.requests} req, {h.error_rate:.1%} errors"
        + (f", p99 {h.p99_ms:.1f} ms" if h.p99_ms is not None else "")
        + ")"
        for d, h in verdict.judged.items()
    )
    note = f"; not waited for (offline): {', '.join(verdict.offline)}" if verdict.offline else ""
    ctx.event(
        r.id,
        "batch_passed",
        f"batch {idx + 1}/{r.n_batches} passed: {judged or 'no device online to judge'}{note}",
        batch=idx + 1,
        health={d: h.to_dict() for d, h in verdict.judged.items()},
        offline=verdict.offline,
    )


def pending_offline(ctx: RolloutContext, r: Rollout) -> list[str]:
    """Devices that have not loaded the target yet (offline ones get it on return)."""
    out = []
    for dev in ctx.store.devices(r.id):
        status = (ctx.db.device(dev.device) or {}).get("status")
        if dev.loaded_at is None and not serves_target(status, r.target, dev.target_revision):
            out.append(dev.device)
    return out
