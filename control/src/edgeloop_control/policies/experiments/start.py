"""Starting an experiment: validate, claim the devices, publish the split.

The new row and the claim on its devices are one transaction, so two starts (or a start and
a rollout) racing for a device cannot both win: the desired-state owner
(:class:`~edgeloop_control.fleet.desired.DesiredState`) is the only record of who holds a
device. A start that fails half-way is rolled back to the champion and releases its devices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeloop_control.errors import ConfigError
from edgeloop_control.fleet.desired import (
    DeployError,
    DeviceOwned,
    VersionLike,
    check_device_ids,
)
from edgeloop_control.fleet.inventory import (
    Stale,
    UnknownDevice,
    offline_after_s,
    require_known,
    split_stale,
    stale_note,
)
from edgeloop_control.infra.shares import parse_share
from edgeloop_control.stats.sequential import Kind

from .actions import act
from .config import ExperimentError
from .evaluate import KIND_OF_TASK, new_test
from .parts import Parts, owner
from .store import Experiment, steps_for
from .totals import Totals, drift_rowid
from .versions import Entry, shadows, task_of
from .view import start_message

if TYPE_CHECKING:
    from edgeloop_control.registry import ModelVersion

log = logging.getLogger("edgeloop.control.experiments")


@dataclass(frozen=True)
class Request:
    """A start request as the caller wrote it; checked by :func:`start`."""

    model: str
    champion: str
    challenger: str
    devices: Sequence[str]
    weight: float | str | None = None
    cause: str | None = None
    auto_decide: bool | None = None


def challenger_share(value: object) -> float:
    """``10%``, ``"10%"``, ``0.1`` or ``10`` (percent) -> 0.1; errors as ExperimentError."""
    try:
        return parse_share(value, "weight (the challenger's share of traffic)", allow_one=False)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None


def _devices(parts: Parts, devices: Sequence[str]) -> tuple[list[str], list[Stale]]:
    """Known devices to run on, and the known ones skipped for being offline too long."""
    if isinstance(devices, str):
        raise ExperimentError("devices must be a list of device ids, not one string")
    try:
        ids = require_known(parts.db, check_device_ids(list(devices)))
        after_s = offline_after_s(parts.ws)
    except (DeployError, UnknownDevice) as exc:
        raise ExperimentError(str(exc)) from None
    keep, stale = split_stale(parts.db, ids, after_s)
    if not keep:
        raise ExperimentError(f"no device to run on: {stale_note(stale, after_s)}")
    return keep, stale


def _check_serving(parts: Parts, model: str, devices: list[str]) -> None:
    """An experiment replaces what a device serves: only devices that run ``model``."""
    for device in devices:
        doc = parts.desired.current(device)
        others = sorted({m["name"] for m in (doc["models"] if doc else [])} - {model})
        if others:
            raise ExperimentError(
                f"device {device} serves {', '.join(others)}, not {model}; an experiment "
                f"replaces what a device serves, so choose devices that run {model}"
            )


def _versions(
    parts: Parts, req: Request
) -> tuple[ModelVersion, ModelVersion, dict[str, bytes], Kind]:
    """Champion, challenger, their artifacts and the experiment kind, or ExperimentError."""
    model = req.model
    champ = parts.versions.resolve(model, req.champion)
    chall = parts.versions.resolve(model, req.challenger)
    if champ.version == chall.version:
        raise ExperimentError(
            f"champion and challenger are both {champ.ref}; an experiment needs two versions"
        )
    if parts.versions.stage(model, "champion") == chall.version:
        raise ExperimentError(
            f"{chall.ref} is already the registry's champion of {model}; choose another challenger"
        )
    registry = parts.versions.registry
    data = {mv.version: registry.artifact_bytes(mv) for mv in (champ, chall)}
    tasks = {mv.version: task_of(mv, data[mv.version]) for mv in (champ, chall)}
    if tasks[champ.version] != tasks[chall.version]:
        raise ExperimentError(
            f"{champ.ref} is a {tasks[champ.version]} model and {chall.ref} a "
            f"{tasks[chall.version]} model; they cannot be compared"
        )
    return champ, chall, data, KIND_OF_TASK[tasks[champ.version]]


def start(parts: Parts, req: Request) -> Experiment:
    """Split the devices' traffic champion (1 − share) / challenger (share) and start
    measuring. Returns the stored experiment."""
    cfg = parts.config
    share = cfg.challenger_weight if req.weight is None else challenger_share(req.weight)
    auto = cfg.auto_decide if req.auto_decide is None else req.auto_decide
    if not isinstance(auto, bool):
        raise ExperimentError(f"auto_decide must be true, false or None, got {auto!r}")
    devices, stale = _devices(parts, req.devices)
    if parts.publisher is None:
        raise ExperimentError(
            "starting an experiment publishes desired state, and this manager has no MQTT publisher"
        )
    champ, chall, data, kind = _versions(parts, req)
    _check_serving(parts, req.model, devices)
    now = time.time()
    exp = Experiment(
        id="", seq=0, model=req.model, champion=champ.version, challenger=chall.version,
        devices=devices, share=share, kind=kind, state="running", auto_decide=auto,
        cause=req.cause, config=cfg, created_at=now, updated_at=now,
        flags={"skipped_offline": [s.device for s in stale]} if stale else {},
        test=new_test(kind, cfg).to_dict(),
        totals=Totals(drift_since=drift_rowid(parts.db)).to_dict(),
    )  # fmt: skip
    try:
        with parts.db.transaction() as conn:
            parts.store.insert(conn, exp)
            if exp.flags:
                parts.store.set_flags(conn, exp.id, exp.flags)
            parts.desired.claim(owner(exp.id), devices, conn=conn)
    except DeviceOwned as exc:
        raise ExperimentError(str(exc)) from None
    revisions: dict[str, int] = {}
    try:
        _publish(parts, exp, champ, chall, data, revisions)
    except Exception as exc:
        _abort(parts, exp, revisions, exc)
        raise ExperimentError(
            f"could not start {exp.id}: {exc}; the devices that already received it are "
            f"being returned to the champion"
        ) from exc
    _started(parts, exp, champ, chall, revisions, stale)
    return parts.store.get(exp.id)


def _publish(
    parts: Parts,
    exp: Experiment,
    champ: ModelVersion,
    chall: ModelVersion,
    data: dict[str, bytes],
    revisions: dict[str, int],
) -> None:
    """Artifacts, the registry's challenger stage, then each device's split (``revisions``
    records which devices got theirs, for a rollback if a later one fails)."""
    for mv in (champ, chall):
        parts.desired.publish_artifact(Entry.of(mv), data[mv.version])
    # The registry says which version is under test; promotion clears it again.
    parts.versions.registry.promote(exp.model, chall.version, "challenger")
    weight = exp.weight_percent
    serving: list[tuple[VersionLike, float]] = [
        (Entry.of(champ), 100.0 - weight),
        (Entry.of(chall), weight),
    ]
    for device in exp.devices:
        doc = parts.desired.plan(
            device,
            serving,
            shadows(parts.desired.current(device), {champ.version, chall.version}),
            experiment=exp.id,
        )
        parts.desired.publish(device, doc, owner=owner(exp.id))
        revisions[device] = doc["revision"]


def _started(
    parts: Parts,
    exp: Experiment,
    champ: ModelVersion,
    chall: ModelVersion,
    revisions: dict[str, int],
    stale: list[Stale],
) -> None:
    message = start_message(exp)
    if stale:
        message += "; " + stale_note(stale, offline_after_s(parts.ws))
    with parts.db.transaction() as conn:
        parts.store.set_revisions(conn, exp.id, revisions)
        parts.db.add_event(
            "ab_started",
            message,
            subject=exp.id,
            data={"model": exp.model, "champion": champ.ref, "challenger": chall.ref,
                  "devices": exp.devices, "weight": exp.weight_percent,
                  "revisions": revisions, "cause": exp.cause, "auto_decide": exp.auto_decide,
                  "skipped_offline": [x.device for x in stale]},
        )  # fmt: skip
    log.info(message)


def _abort(parts: Parts, exp: Experiment, revisions: dict[str, int], exc: Exception) -> None:
    reason = f"Start failed: {exc}"
    decision = {"action": "rollback", "reason": reason, "t": time.time(), "source": "error"}
    with parts.db.transaction() as conn:
        parts.store.abort_start(
            conn, exp.id, decision, steps_for("rollback", exp.devices), revisions
        )
        parts.desired.release(owner(exp.id), conn=conn)
        parts.db.add_event("ab_failed", f"{exp.id}: {reason}", subject=exp.id)
    log.error("%s: %s", exp.id, reason)
    try:
        act(parts, exp.id, time.time(), force=True)
    except Exception:  # the daemon's next tick retries; the original error matters more
        log.exception("%s: rollback after a failed start did not finish", exp.id)
