"""Carrying out a decided experiment: its pending steps, in order, one process at a time.

Steps: put each device back on the champion (rollback), update the registry's stages, hand
a promoted version to a staged rollout. A step that fails (broker down, registry locked) is
retried :data:`RETRY_S` later from where it failed; a step this process cannot do (no
publisher, no rollout manager) stays pending for one that can (the daemon's).
"""

from __future__ import annotations

import logging
import time

from edgeloop_control.fleet.desired import DeviceOwned, VersionLike
from edgeloop_control.fleet.inventory import unknown_among

from .config import ExperimentError
from .parts import Parts, owner
from .store import ENDING, Experiment, Step, StepKind
from .versions import Entry, shadows
from .view import end_message

log = logging.getLogger("edgeloop.control.experiments")

RETRY_S = 30.0  # a failed action (broker down, registry locked) is retried this much later


def act(parts: Parts, exp_id: str, now: float, *, force: bool = False) -> None:
    """Carry out the pending steps of a decided experiment, in order, one at a time.

    ``force`` ignores the retry delay of an earlier failure (an operator is asking now).
    Another process holding the lease is left to finish its work.
    """
    exp = parts.store.get(exp_id)
    if not exp.pending and exp.state not in ENDING:
        return
    if not force and exp.retry_at is not None and now < exp.retry_at:
        return
    if not parts.store.take_lease(exp_id, parts.holder, time.time()):
        return
    try:
        _run_pending(parts, exp_id, now)
    finally:
        parts.store.drop_lease(exp_id, parts.holder)


def _run_pending(parts: Parts, exp_id: str, now: float) -> None:
    exp = parts.store.get(exp_id)
    for step in list(exp.pending):
        parts.store.take_lease(exp_id, parts.holder, time.time())  # renew: a step may wait
        try:
            done = _run_step(parts, exp, step)
        except Exception as exc:
            _failed(parts, exp, step, exc, now)
            return
        if not done:
            # Steps run in order (devices back on the champion before the registry
            # says so; the registry before the rollout), so wait here.
            _waiting(parts, exp, step)
            break
        with parts.db.transaction() as conn:
            parts.store.step_done(conn, exp_id, step)
        exp = parts.store.get(exp_id)
        _finish_if_done(parts, exp)
    _finish_if_done(parts, parts.store.get(exp_id))


def _failed(parts: Parts, exp: Experiment, step: Step, exc: Exception, now: float) -> None:
    message = f"{exp.id}: {step} failed, retrying in {RETRY_S:g} s: {exc}"
    with parts.db.transaction() as conn:
        parts.store.step_failed(conn, exp.id, str(exc), now + RETRY_S)
        if str(exc) != exp.last_error:  # one event per distinct failure
            parts.db.add_event("ab_action_failed", message, subject=exp.id)
    log.warning(message)


def _run_step(parts: Parts, exp: Experiment, step: Step) -> bool:
    """Do one step; False if this process cannot do it (it stays pending)."""
    if step.kind is StepKind.REGISTRY:
        _registry_step(parts, exp)
        return True
    if step.kind is StepKind.ROLLOUT:
        return _rollout_step(parts, exp)
    if parts.publisher is None:
        return False
    assert step.device is not None  # Step.parse gives every desired step its device
    _rollback_device(parts, exp, step.device)
    return True


def _registry_step(parts: Parts, exp: Experiment) -> None:
    registry = parts.versions.registry
    if exp.state == "promoting":
        registry.promote(exp.model, exp.challenger, "champion")
    elif parts.versions.stage(exp.model, "challenger") == exp.challenger:
        # Rolling back: the challenger is no longer under test.
        registry.demote(exp.model, "challenger")


def _rollout_step(parts: Parts, exp: Experiment) -> bool:
    if parts.rollouts is None:
        return False
    # Only devices the inventory knows (a desired state can outlive a removed device).
    running = devices_running(parts, exp.model)
    unknown = set(unknown_among(parts.db, running))
    devices = [d for d in running if d not in unknown]
    if not devices:
        # (An empty list would mean "every device" to the rollout manager.)
        parts.db.add_event(
            "ab_pending",
            f"{exp.id}: no device serves {exp.model} any more; nothing to roll out",
            subject=exp.id,
        )
        return True
    result = parts.rollouts.start(
        exp.challenger_ref,
        devices=devices,
        reason=f"{exp.id}: {(exp.decision or {}).get('reason', 'promoted')}",
    )
    rollout_id = result.get("id") if isinstance(result, dict) else None
    with parts.db.transaction() as conn:
        parts.store.set_rollout(conn, exp.id, {"id": rollout_id, "devices": devices})
        parts.db.add_event(
            "ab_rollout_started",
            f"{exp.id}: staged rollout of {exp.challenger_ref} to {len(devices)} "
            f"device(s) started" + (f" ({rollout_id})" if rollout_id else ""),
            subject=exp.id,
            data={"rollout": result, "devices": devices},
        )
    return True


def _rollback_device(parts: Parts, exp: Experiment, device: str) -> None:
    """Put ``device`` back on the champion at 100 %, unless it is no longer ours to touch."""
    doc = parts.desired.current(device)
    others = {o for o in parts.desired.owners([device]).values() if o != owner(exp.id)}
    if doc is None or doc.get("experiment") != exp.id or others:
        # Someone deployed something else since, or another policy owns the device now.
        _note(parts, exp.id, "left_alone", device)
        return
    entry = next(
        (m for m in doc["models"] if m["name"] == exp.model and m["version"] == exp.champion),
        None,
    )
    if entry is None:  # pragma: no cover - our own desired state always names it
        raise ExperimentError(f"{device}'s desired state does not name {exp.champion_ref}")
    serving: list[tuple[VersionLike, float]] = [(Entry.from_entry(entry), 100.0)]
    new_doc = parts.desired.plan(device, serving, shadows(doc, {exp.champion, exp.challenger}))
    try:
        parts.desired.publish(device, new_doc, owner=owner(exp.id))
    except DeviceOwned:  # taken between the check above and now: theirs, not ours
        _note(parts, exp.id, "left_alone", device)


def devices_running(parts: Parts, model: str) -> list[str]:
    """Devices whose desired state serves any version of ``model``."""
    return [
        device
        for device, doc in parts.db.all_desired().items()
        if any(
            m.get("name") == model and m.get("role") == "serve" and (m.get("weight") or 0) > 0
            for m in doc.get("models", [])
        )
    ]


def _note(parts: Parts, exp_id: str, key: str, value: str) -> None:
    with parts.db.transaction() as conn:
        flags = parts.store.get(exp_id).flags
        noted = flags.setdefault(key, [])
        if value not in noted:
            noted.append(value)
        parts.store.set_flags(conn, exp_id, flags)


def _waiting(parts: Parts, exp: Experiment, step: Step) -> None:
    key = f"waiting_{step.kind.value}"
    if exp.flags.get(key):
        return
    why = (
        "no rollout manager in this process; `edgeloop serve` starts the rollout"
        if step.kind is StepKind.ROLLOUT
        else "no MQTT publisher in this process; `edgeloop serve` publishes it"
    )
    with parts.db.transaction() as conn:
        flags = {**parts.store.get(exp.id).flags, key: True}
        parts.store.set_flags(conn, exp.id, flags)
        parts.db.add_event("ab_pending", f"{exp.id}: {step} pending: {why}", subject=exp.id)


def _finish_if_done(parts: Parts, exp: Experiment) -> None:
    ending = end_message(exp)
    if ending is None:
        return
    state, kind, message = ending
    with parts.db.transaction() as conn:
        if parts.store.finish(conn, exp.id, exp.state, state):
            # Released when the decision was taken already; this is the safety net (an
            # idempotent delete) so no ended experiment can keep a device.
            parts.desired.release(owner(exp.id), conn=conn)
            parts.db.add_event(kind, message, subject=exp.id, data={"model": exp.model})
            log.info(message)
