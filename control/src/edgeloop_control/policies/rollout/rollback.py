"""Failing, aborting and rolling back a rollout.

A failed gate or an abort moves the rollout to ``rolling_back``; the rollback
then republishes every switched device's previous model set under a fresh,
higher revision. Rollback documents are all planned before any is sent, so a
restart in the middle republishes exactly the same documents. The rollout owns
its devices until the rollback is done; then it releases them.
"""

from __future__ import annotations

import logging

from edgeloop_control.fleet.desired import DeviceOwned
from edgeloop_control.policies.rollout.context import PUBLISH_ERRORS, RolloutContext
from edgeloop_control.policies.rollout.plan import rollback_doc
from edgeloop_control.policies.rollout.store import (
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    Member,
    Rollout,
)

log = logging.getLogger("edgeloop.control.rollout")


def fail(ctx: RolloutContext, r: Rollout, idx: int, reason: str, now: float) -> None:
    """Batch ``idx`` failed: stop the rollout and announce its rollback."""
    with ctx.store.transaction():
        if not ctx.store.update_rollout(
            r.id,
            {"state": ROLLING_BACK, "failure": f"batch {idx + 1}: {reason}", "updated_at": now},
            where={"state": RUNNING},
        ):
            return
        ctx.store.update_batch(r.id, idx, {"failed_at": now})
        ctx.event(
            r.id,
            "batch_failed",
            f"batch {idx + 1}/{r.n_batches} failed: {reason}",
            batch=idx + 1,
            reason=reason,
        )
        _announce_rollback(ctx, r.id)


def begin_abort(ctx: RolloutContext, rollout_id: str, reason: str, now: float) -> None:
    """Stop a running rollout on the operator's word (the rollback follows)."""
    with ctx.store.transaction():
        if ctx.store.update_rollout(
            rollout_id,
            {"state": ROLLING_BACK, "failure": f"aborted: {reason}", "updated_at": now},
            where={"state": RUNNING},
        ):
            ctx.event(rollout_id, "aborted", f"aborted: {reason}", reason=reason)
            _announce_rollback(ctx, rollout_id)


def _announce_rollback(ctx: RolloutContext, rollout_id: str) -> None:
    switched = [d.device for d in ctx.store.devices(rollout_id) if d.target_doc is not None]
    ctx.event(
        rollout_id,
        "rolling_back",
        f"rolling back {len(switched)} device(s) to their previous models: "
        + (", ".join(switched) or "none had been switched"),
        devices=switched,
    )


def roll_back(ctx: RolloutContext, r: Rollout, now: float) -> None:
    """Send every switched device its rollback document; finish when all are out."""
    for dev in ctx.store.devices(r.id):
        if dev.target_doc is not None and dev.rollback_doc is None:
            _plan_rollback(ctx, r.id, dev.device)
    devices = [d for d in ctx.store.devices(r.id) if d.target_doc is not None]
    if r.rollback_artifacts_at is None:
        _republish_previous_artifacts(ctx, devices)
        ctx.store.update_rollout(r.id, {"rollback_artifacts_at": now})
    for dev in devices:
        if dev.rolled_back_at is None and not _send_rollback(ctx, r.id, dev, now):
            return  # next tick tries again; nothing is lost
    _finish(ctx, r.id, devices, now)


def _send_rollback(ctx: RolloutContext, rollout_id: str, dev: Member, now: float) -> bool:
    """Publish ``dev``'s rollback document; False if it has to be tried again."""
    if dev.rollback_doc is not None:
        try:
            ctx.publish_desired(rollout_id, dev.device, dev.rollback_doc)
        except DeviceOwned as exc:
            # Only if ownership was taken from under us (a rollout that predates the
            # ownership table): what the device runs is the new owner's call now.
            ctx.note_error(rollout_id, f"left {dev.device} alone: {exc}", now)
        except PUBLISH_ERRORS as exc:
            ctx.note_error(rollout_id, f"rolling back {dev.device}: {exc}", now)
            return False
    ctx.store.update_device(
        rollout_id, dev.device, {"rolled_back_at": now}, where={"rolled_back_at": None}
    )
    return True


def _finish(ctx: RolloutContext, rollout_id: str, devices: list[Member], now: float) -> None:
    with ctx.store.transaction() as conn:
        if not ctx.store.update_rollout(
            rollout_id,
            {"state": ROLLED_BACK, "finished_at": now, "updated_at": now, "last_error": None},
            where={"state": ROLLING_BACK},
        ):
            return
        # Every device is back on its previous models: they are free again.
        ctx.desired.release(ctx.owner(rollout_id), conn=conn)
        r = ctx.store.rollout(rollout_id)
        failure = r.failure if r else None
        ctx.event(
            rollout_id,
            "rolled_back",
            f"rolled back {len(devices)} device(s): "
            + ", ".join(
                f"{d.device} -> r{d.rollback_doc['revision']}" for d in devices if d.rollback_doc
            )
            + f" ({failure})",
            devices={d.device: (d.rollback_doc or {}).get("revision") for d in devices},
            reason=failure,
        )


def _plan_rollback(ctx: RolloutContext, rollout_id: str, device: str) -> None:
    with ctx.store.transaction():
        dev = ctx.store.device(rollout_id, device)
        if dev.rollback_doc is not None:
            return
        if dev.previous_doc is None:
            log.warning("rollout %s: no previous desired state for %s", rollout_id, device)
            return
        current = ctx.db.desired(device)
        doc = rollback_doc(dev.previous_doc, current[0] if current else None, dev.target_revision)
        ctx.store.update_device(rollout_id, device, {"rollback_doc": doc})


def _republish_previous_artifacts(ctx: RolloutContext, devices: list[Member]) -> None:
    """Best effort: the previous artifacts are normally still retained on the broker
    from their own deployment; republishing them from the registry makes the
    rollback independent of that. A failure here only logs."""
    wanted: dict[str, str] = {}
    for dev in devices:
        for m in (dev.previous_doc or {}).get("models") or []:
            wanted[f"{m.get('name')}@{m.get('version')}"] = str(m.get("sha256"))
    for ref, sha in sorted(wanted.items()):
        try:
            registry = ctx.registry()
            mv = registry.get(ref)
            if mv.sha256 != sha:
                log.warning("rollback: %s in the registry differs from the deployed one", ref)
                continue
            ctx.desired.publish_artifact(mv, registry.artifact_bytes(mv))
        except Exception as exc:  # best effort by design (see above)
            log.warning("rollback: could not republish artifact %s: %s", ref, exc)
