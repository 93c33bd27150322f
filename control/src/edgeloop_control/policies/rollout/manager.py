"""Staged fleet rollout with automatic rollback (see docs/rollout.md).

``start`` only records a rollout; ``tick`` (the daemon's worker thread, or a
CLI with ``--wait``) moves it: publish the artifact, then desired state to one
batch, gate it on what the devices report, then the next batch. A failed gate
or an abort republishes every switched device's previous model set.

Every decision is read from and written to SQLite before anything is sent, so
a new manager on the same database (control-node restart) continues where the
old one stopped and republishes only identical documents.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from edgeloop_control.fleet.desired import (
    DeployError,
    check_device_ids,
    plan_desired,
    publish_artifact,
    publish_desired,
)
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, ControlClient
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout.config import RolloutConfig, RolloutError
from edgeloop_control.policies.rollout.gate import Health, load_error, measure, soaked, unhealthy
from edgeloop_control.policies.rollout.plan import (
    Target,
    rollback_doc,
    serves_target,
    split_batches,
)
from edgeloop_control.policies.rollout.store import (
    ACTIVE,
    COMPLETED,
    FINAL,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    RolloutStore,
    Row,
)

log = logging.getLogger("edgeloop.control.rollout")

# What a publish can raise: a publisher (BrokerError; RuntimeError from paho itself),
# a vanished socket (OSError), a bad artifact (DeployError).
PUBLISH_ERRORS: tuple[type[Exception], ...] = (RuntimeError, OSError, BrokerError, DeployError)


class _NotRunning(Exception):
    """The rollout left ``running`` (abort, failure seen by another driver) mid-step."""


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None: ...


@dataclass
class Verdict:
    passed: bool = False
    failure: str | None = None
    waiting: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    judged: dict[str, Health] = field(default_factory=dict)


class RolloutManager:
    """The rollout policy of the control daemon; also usable on its own (CLI)."""

    name = "rollouts"

    def __init__(
        self,
        ws: Workspace,
        db: ControlDB,
        publisher: Publisher | None,
        *,
        config: RolloutConfig | None = None,
    ) -> None:
        self.ws = ws
        self.db = db
        self.publisher = publisher
        self.config = (config or RolloutConfig.from_workspace(ws)).validate()
        self.prefix = ws.topic_prefix
        self._desired_signer: DesiredSigner | None = None
        self.store = RolloutStore(db)
        self._registry: Any = None

    # -- starting ------------------------------------------------------------------

    def start(
        self,
        model_ref: str,
        *,
        devices: list[str] | None = None,
        group: str | None = None,
        canary: float | str | None = None,
        step: float | str | None = None,
        gates: dict[str, Any] | None = None,
        batch_timeout_s: float | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Record a rollout of ``model_ref``; ``tick`` carries it out. Returns its status."""
        config = self.config.with_overrides(
            canary=canary, step=step, gates=gates, batch_timeout_s=batch_timeout_s
        )
        target = self._resolve(model_ref)
        now = time.time()
        rollout_id = f"ro-{secrets.token_hex(4)}"
        with self.store.transaction() as conn:
            chosen, selector = self._select(devices, group)
            current = {d: self.db.desired(d) for d in chosen}
            missing = [d for d, doc in current.items() if doc is None]
            if missing:
                raise RolloutError(
                    f"no desired state yet for {', '.join(missing)}: a rollout replaces a "
                    "running model and needs one to roll back to; give them a first model "
                    "with `edgeloop deploy MODEL@vN --device ID`"
                )
            busy = self.store.active_devices()
            clash = sorted(d for d in chosen if d in busy)
            if clash:
                owners = sorted({busy[d] for d in clash})
                raise RolloutError(
                    f"{', '.join(clash)} already in running rollout {', '.join(owners)}; wait for "
                    f"it to finish or stop it with `edgeloop rollout abort {owners[0]}`"
                )
            batches = split_batches(chosen, config.canary, config.step)
            self.store.insert(
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
            self._event(
                rollout_id,
                "started",
                f"rollout of {target.variant} to {len(chosen)} device(s) in {len(batches)} "
                f"batch(es) of {sizes}" + (f" ({reason})" if reason else ""),
                model=target.variant,
                batches=batches,
                config=config.to_dict(),
                reason=reason,
            )
        return self.status(rollout_id)[0]

    def _resolve(self, model_ref: str) -> Target:
        from edgeloop_control.registry import RegistryError

        try:
            mv = self._open_registry().get(model_ref)
        except RegistryError as exc:
            raise RolloutError(str(exc)) from None
        return Target(mv.name, mv.version, mv.sha256, mv.size, mv.signature)

    def _select(
        self, devices: list[str] | None, group: str | None
    ) -> tuple[list[str], dict[str, Any]]:
        if devices is not None and group:
            raise RolloutError("name devices or a group, not both")
        if devices is not None:
            if not devices:
                # Never widen an empty selection to the whole fleet.
                raise RolloutError("the device list is empty; name at least one device")
            try:
                return check_device_ids(devices), {"devices": list(devices)}
            except DeployError as exc:
                raise RolloutError(str(exc)) from None
        inventory = self.db.devices()
        if group:
            members = [d for d in inventory if group in (d.get("groups") or [])]
            if not members:
                raise RolloutError(
                    f"group {group!r} has no devices; "
                    f"set it with `edgeloop group set {group} ID...`"
                )
            selector: dict[str, Any] = {"group": group}
        else:
            desired = set(self.db.all_desired())
            known = {d["device"]: d for d in inventory}
            members = [known.get(d) or {"device": d, "online": 0} for d in sorted(desired)]
            if not members:
                raise RolloutError(
                    "no device has desired state yet; deploy a first version with "
                    "`edgeloop deploy MODEL@vN --device ID`"
                )
            selector = {"all": True}
        # Online devices first: the canary should be a device that can answer now.
        members.sort(key=lambda d: (not d.get("online"), d["device"]))
        return [d["device"] for d in members], selector

    # -- driving -------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Advance every running rollout by as much as the fleet's reports allow."""
        if self.publisher is None:
            raise RolloutError(
                "a rollout manager without a broker connection cannot drive rollouts"
            )
        now = time.time() if now is None else now
        for rollout in self.store.rollouts(states=ACTIVE):
            try:
                self._advance(rollout.id, now)
            except RolloutError as exc:
                self._note_error(rollout.id, str(exc), now)
            except Exception as exc:  # one rollout's bug must not stall the others
                log.exception("rollout %s: unexpected error", rollout.id)
                self._note_error(rollout.id, f"unexpected error: {exc!r}", now)

    def _advance(self, rollout_id: str, now: float) -> None:
        # Each pass either returns or moves the rollout one step on, so this is bounded.
        for _ in range(2 * self._n_batches(rollout_id) + 3):
            r = self.store.rollout(rollout_id)
            if r is None or r.state not in ACTIVE:
                return
            if r.state == ROLLING_BACK:
                self._roll_back(r, now)
                return
            config = RolloutConfig(**r.config)
            idx = r.current_batch
            batch = self.store.batch(rollout_id, idx)
            if batch.published_at is None:
                if batch.started_at is None:
                    self.store.update_batch(
                        rollout_id, idx, {"started_at": now}, where={"started_at": None}
                    )
                    batch = self.store.batch(rollout_id, idx)
                try:
                    self._publish_batch(r, idx, now)
                except _NotRunning:
                    continue  # re-read: now rolling back
                except (RolloutError, *PUBLISH_ERRORS) as exc:
                    self._note_error(rollout_id, f"publishing batch {idx + 1}: {exc}", now)
                    if now - batch.started_at > config.batch_timeout_s:
                        self._fail(r, idx, f"batch {idx + 1} could not be published: {exc}", now)
                        continue
                    return
                batch = self.store.batch(rollout_id, idx)
            verdict = self._judge(r, idx, config, now)
            if verdict.failure:
                self._fail(r, idx, verdict.failure, now)
                continue
            if not verdict.passed:
                if now - batch.published_at > config.batch_timeout_s:
                    self._fail(
                        r,
                        idx,
                        f"timed out after {config.batch_timeout_s:g} s: "
                        + "; ".join(verdict.waiting),
                        now,
                    )
                    continue
                return
            if not self._pass(r, idx, verdict, now):
                return

    def _n_batches(self, rollout_id: str) -> int:
        r = self.store.rollout(rollout_id)
        return int(r.n_batches) if r else 0

    def _publish_batch(self, r: Row, idx: int, now: float) -> None:
        target = Target.from_dict(r.target)
        if r.artifact_published_at is None:
            # Artifacts before the desired state naming them (docs/protocol.md).
            from edgeloop_control.registry import RegistryError

            try:
                registry = self._open_registry()
                mv = registry.get(target.variant)
                data = registry.artifact_bytes(mv)
            except RegistryError as exc:
                raise RolloutError(
                    f"cannot read {target.variant} from the registry: {exc}"
                ) from None
            if mv.sha256 != target.sha256:
                raise RolloutError(
                    f"{target.variant} in the registry (sha256 {mv.sha256[:12]}) is not the "
                    f"version this rollout started with ({target.sha256[:12]})"
                )
            publish_artifact(self._client(), self.prefix, mv, data)
            if self.store.update_rollout(
                r.id,
                {"artifact_published_at": now, "updated_at": now},
                where={"artifact_published_at": None},
            ):
                self._event(
                    r.id,
                    "artifact_published",
                    f"published artifact {target.variant} ({len(data)} bytes)",
                )
        for dev in self.store.devices(r.id, batch=idx):
            if dev.published_at is not None:
                continue
            doc = dev.target_doc or self._plan(r.id, dev.device, target)
            publish_desired(
                self._client(), self.db, self.prefix, dev.device, doc, signer=self._signer()
            )
            fresh = self.store.device(r.id, dev.device)
            if fresh.rollback_doc is not None:
                # A rollback elsewhere (an abort from the CLI) planned this device's
                # rollback while we were publishing its target. Rollback documents are
                # all planned before any is sent, so either it sends after us or we
                # see its plan here: either way the rollback document is sent last.
                publish_desired(
                    self._client(),
                    self.db,
                    self.prefix,
                    dev.device,
                    fresh.rollback_doc,
                    signer=self._signer(),
                )
                raise _NotRunning
            inventory = self.db.device(dev.device) or {}
            online = _online(inventory)
            started = (inventory.get("status") or {}).get("started_at") if online else None
            self.store.update_device(
                r.id,
                dev.device,
                {
                    "published_at": now,
                    "online_at_publish": int(online),
                    "seen_online": int(online),
                    "last_started_at": started,
                },
                where={"published_at": None},
            )
        if self.store.update_batch(r.id, idx, {"published_at": now}, where={"published_at": None}):
            devices = self.store.devices(r.id, batch=idx)
            offline = [d.device for d in devices if not d.online_at_publish]
            self._event(
                r.id,
                "batch_published",
                f"batch {idx + 1}/{r.n_batches}: desired state {target.variant} sent to "
                + ", ".join(f"{d.device} (r{d.target_revision})" for d in devices)
                + (
                    f"; offline, will load it when they return: {', '.join(offline)}"
                    if offline
                    else ""
                ),
                batch=idx + 1,
                devices={d.device: d.target_revision for d in devices},
                offline=offline,
            )

    def _plan(self, rollout_id: str, device: str, target: Target) -> dict[str, Any]:
        """The target document for ``device``, planned once and kept for republishing."""
        with self.store.transaction():
            dev = self.store.device(rollout_id, device)
            if dev.target_doc is not None:
                return cast(dict[str, Any], dev.target_doc)
            # Checked in the same transaction that records the plan: a device is
            # either planned before an abort (and so rolled back) or never.
            rollout = self.store.rollout(rollout_id)
            if rollout is None or rollout.state != RUNNING:
                raise _NotRunning
            current = self.db.desired(device)
            # The document actually being replaced is what a rollback restores,
            # even if someone deployed to the device after the rollout started.
            previous = current[1] if current else dev.previous_doc
            try:
                doc = plan_desired(previous, [(target, 100.0)], [])
            except DeployError as exc:
                raise RolloutError(f"{device}: {exc}") from None
            self.store.update_device(
                rollout_id,
                device,
                {"previous_doc": previous, "target_doc": doc, "target_revision": doc["revision"]},
            )
            return doc

    def _judge(self, r: Row, idx: int, config: RolloutConfig, now: float) -> Verdict:
        target = Target.from_dict(r.target)
        verdict = Verdict()
        failures: list[str] = []
        for dev in self.store.devices(r.id, batch=idx):
            inventory = self.db.device(dev.device) or {}
            status = inventory.get("status") or {}
            online = _online(inventory)
            changes: dict[str, Any] = {}
            events: list[tuple[str, str, dict[str, Any]]] = []
            if online and not dev.seen_online:
                changes["seen_online"] = 1
            # Crash loop: every new started_at is a new agent process.
            started = status.get("started_at") if online else None
            restarts = int(dev.restarts)
            if isinstance(started, (int, float)) and started != dev.last_started_at:
                if dev.last_started_at is not None:
                    restarts += 1
                    changes["restarts"] = restarts
                    events.append(
                        (
                            "device_restarted",
                            f"{dev.device} restarted ({restarts} since its desired state was sent)",
                            {"device": dev.device, "restarts": restarts},
                        )
                    )
                changes["last_started_at"] = started
            failure = None
            error = load_error(status, dev.target_revision)
            if error:
                failure = f"{dev.device} could not load {target.variant}: {error}"
            elif restarts > config.max_restarts:
                failure = (
                    f"{dev.device} restarted {restarts} times (crash loop; the gate allows "
                    f"{config.max_restarts})"
                )
            loaded_at = dev.loaded_at
            if loaded_at is None and serves_target(status, target, dev.target_revision):
                # The device's own timestamp of the report: the soak is measured on
                # its clock, like the telemetry that proves it.
                ts = status.get("ts")
                loaded_at = float(ts) if isinstance(ts, (int, float)) else now
                changes["loaded_at"] = loaded_at
                events.append(
                    (
                        "device_loaded",
                        f"{dev.device} serves {target.variant} (r{status.get('revision')})",
                        {"device": dev.device, "revision": status.get("revision")},
                    )
                )
            health = None
            if loaded_at is not None:
                health = measure(self.db, dev.device, target, int(dev.target_revision))
                changes["health"] = health.to_dict()
            if failure:
                changes["failure"] = failure
            if changes:
                # Compare-and-set on what was read: with two drivers (daemon and a
                # CLI --wait) each observation, and its event, is recorded once.
                guard = {
                    k: getattr(dev, k)
                    for k in ("seen_online", "last_started_at", "restarts", "loaded_at")
                }
                with self.store.transaction():
                    if not self.store.update_device(r.id, dev.device, changes, where=guard):
                        verdict.waiting.append(f"{dev.device} was updated concurrently")
                        continue
                    for step, message, data in events:
                        self._event(r.id, step, message, **data)
            if failure:
                failures.append(failure)
            # Offline when its batch came (or shut down cleanly since): not waited
            # for; the retained desired state reaches it when it returns. A device
            # seen online that then vanished ("lost") may be crashing: wait for it.
            seen = bool(dev.seen_online or online)
            stopped = not online and status.get("reason") == "stopped"
            if not seen or stopped:
                verdict.offline.append(dev.device)
                continue
            if loaded_at is None:
                verdict.waiting.append(
                    f"{dev.device} has not loaded it (reports r{status.get('revision')})"
                    if online
                    else f"{dev.device} went offline ({status.get('reason', 'lost')}) "
                    "before loading it"
                )
            elif not soaked(inventory, loaded_at, int(dev.target_revision), config.soak_s):
                verdict.waiting.append(
                    f"{dev.device} has no telemetry {config.soak_s:g} s after loading yet"
                )
            elif health is not None and health.requests < config.min_requests:
                verdict.waiting.append(
                    f"{dev.device} served {health.requests} of the {config.min_requests} "
                    "requests the gate needs"
                )
            elif health is not None:
                verdict.judged[dev.device] = health
        if failures:
            verdict.failure = "; ".join(failures)
            return verdict
        if verdict.waiting:
            return verdict
        # Every device we wait for has soaked: now the health gates decide.
        for device, health in verdict.judged.items():
            why = unhealthy(health, config)
            if why:
                failures.append(f"{device}: {why}")
                self.store.update_device(r.id, device, {"failure": why})
        if failures:
            verdict.failure = "; ".join(failures)
            return verdict
        verdict.passed = True
        return verdict

    def _pass(self, r: Row, idx: int, verdict: Verdict, now: float) -> bool:
        last = idx + 1 >= r.n_batches
        with self.store.transaction():
            fields: dict[str, Any] = {"updated_at": now, "last_error": None}
            if last:
                fields.update(state=COMPLETED, finished_at=now)
            else:
                fields["current_batch"] = idx + 1
            if not self.store.update_rollout(
                r.id, fields, where={"state": RUNNING, "current_batch": idx}
            ):
                return False  # another driver (daemon or CLI) took this step
            self.store.update_batch(r.id, idx, {"passed_at": now})
            judged = ", ".join(
                f"{d} ({h.requests} req, {h.error_rate:.1%} errors"
                + (f", p99 {h.p99_ms:.1f} ms" if h.p99_ms is not None else "")
                + ")"
                for d, h in verdict.judged.items()
            )
            note = (
                f"; not waited for (offline): {', '.join(verdict.offline)}"
                if verdict.offline
                else ""
            )
            self._event(
                r.id,
                "batch_passed",
                f"batch {idx + 1}/{r.n_batches} passed: "
                f"{judged or 'no device online to judge'}{note}",
                batch=idx + 1,
                health={d: h.to_dict() for d, h in verdict.judged.items()},
                offline=verdict.offline,
            )
            if last:
                pending = self._pending_offline(r.id)
                self._event(
                    r.id,
                    "completed",
                    f"completed: {r.model}@{r.version} on every device"
                    + (
                        f" (still offline, get it on return: {', '.join(pending)})"
                        if pending
                        else ""
                    ),
                    offline=pending,
                )
        return True

    def _pending_offline(self, rollout_id: str) -> list[str]:
        target = Target.from_dict(self.store.rollout(rollout_id).target)  # type: ignore[union-attr]
        out = []
        for dev in self.store.devices(rollout_id):
            status = (self.db.device(dev.device) or {}).get("status")
            if dev.loaded_at is None and not serves_target(status, target, dev.target_revision):
                out.append(dev.device)
        return out

    # -- failing and rolling back ---------------------------------------------------

    def _fail(self, r: Row, idx: int, reason: str, now: float) -> None:
        with self.store.transaction():
            if not self.store.update_rollout(
                r.id,
                {"state": ROLLING_BACK, "failure": f"batch {idx + 1}: {reason}", "updated_at": now},
                where={"state": RUNNING},
            ):
                return
            self.store.update_batch(r.id, idx, {"failed_at": now})
            self._event(
                r.id,
                "batch_failed",
                f"batch {idx + 1}/{r.n_batches} failed: {reason}",
                batch=idx + 1,
                reason=reason,
            )
            self._announce_rollback(r.id)

    def _announce_rollback(self, rollout_id: str) -> None:
        switched = [d.device for d in self.store.devices(rollout_id) if d.target_doc is not None]
        self._event(
            rollout_id,
            "rolling_back",
            f"rolling back {len(switched)} device(s) to their previous models: "
            + (", ".join(switched) or "none had been switched"),
            devices=switched,
        )

    def _roll_back(self, r: Row, now: float) -> None:
        # Plan every rollback document before sending any, so a restart in the
        # middle republishes exactly the same documents.
        for dev in self.store.devices(r.id):
            if dev.target_doc is not None and dev.rollback_doc is None:
                self._plan_rollback(r.id, dev.device)
        devices = [d for d in self.store.devices(r.id) if d.target_doc is not None]
        if r.rollback_artifacts_at is None:
            self._republish_previous_artifacts(devices)
            self.store.update_rollout(r.id, {"rollback_artifacts_at": now})
        for dev in devices:
            if dev.rolled_back_at is not None:
                continue
            if dev.rollback_doc is not None:
                try:
                    publish_desired(
                        self._client(),
                        self.db,
                        self.prefix,
                        dev.device,
                        dev.rollback_doc,
                        signer=self._signer(),
                    )
                except PUBLISH_ERRORS as exc:
                    self._note_error(r.id, f"rolling back {dev.device}: {exc}", now)
                    return  # next tick tries again; nothing is lost
            self.store.update_device(
                r.id, dev.device, {"rolled_back_at": now}, where={"rolled_back_at": None}
            )
        with self.store.transaction():
            if self.store.update_rollout(
                r.id,
                {"state": ROLLED_BACK, "finished_at": now, "updated_at": now, "last_error": None},
                where={"state": ROLLING_BACK},
            ):
                r = self.store.rollout(r.id)  # type: ignore[assignment]
                self._event(
                    r.id,
                    "rolled_back",
                    f"rolled back {len(devices)} device(s): "
                    + ", ".join(
                        f"{d.device} -> r{d.rollback_doc['revision']}"
                        for d in devices
                        if d.rollback_doc
                    )
                    + f" ({r.failure})",
                    devices={d.device: (d.rollback_doc or {}).get("revision") for d in devices},
                    reason=r.failure,
                )

    def _plan_rollback(self, rollout_id: str, device: str) -> None:
        with self.store.transaction():
            dev = self.store.device(rollout_id, device)
            if dev.rollback_doc is not None:
                return
            if dev.previous_doc is None:
                log.warning("rollout %s: no previous desired state for %s", rollout_id, device)
                return
            current = self.db.desired(device)
            doc = rollback_doc(
                dev.previous_doc, current[0] if current else None, dev.target_revision
            )
            self.store.update_device(rollout_id, device, {"rollback_doc": doc})

    def _republish_previous_artifacts(self, devices: list[Row]) -> None:
        """Best effort: the previous artifacts are normally still retained on the broker
        from their own deployment; republishing them from the registry makes the
        rollback independent of that. A failure here only logs."""
        wanted: dict[str, str] = {}
        for dev in devices:
            for m in (dev.previous_doc or {}).get("models") or []:
                wanted[f"{m.get('name')}@{m.get('version')}"] = str(m.get("sha256"))
        for ref, sha in sorted(wanted.items()):
            try:
                registry = self._open_registry()
                mv = registry.get(ref)
                if mv.sha256 != sha:
                    log.warning("rollback: %s in the registry differs from the deployed one", ref)
                    continue
                publish_artifact(self._client(), self.prefix, mv, registry.artifact_bytes(mv))
            except Exception as exc:  # best effort by design (see above)
                log.warning("rollback: could not republish artifact %s: %s", ref, exc)

    def abort(self, rollout_id: str, reason: str = "aborted by the operator") -> dict[str, Any]:
        """Stop a running rollout and roll back every device it switched."""
        r = self.store.rollout(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}; see `edgeloop rollout status`")
        if r.state in FINAL:
            raise RolloutError(f"rollout {rollout_id} is already {r.state}; nothing to abort")
        now = time.time()
        if r.state == RUNNING:
            with self.store.transaction():
                if self.store.update_rollout(
                    rollout_id,
                    {"state": ROLLING_BACK, "failure": f"aborted: {reason}", "updated_at": now},
                    where={"state": RUNNING},
                ):
                    self._event(rollout_id, "aborted", f"aborted: {reason}", reason=reason)
                    self._announce_rollback(rollout_id)
        if self.publisher is not None:
            self._advance(rollout_id, now)
        return self.status(rollout_id)[0]

    # -- reading -----------------------------------------------------------------------

    def status(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        """Progress of one rollout (or all, oldest first): batches, devices, timings."""
        if rollout_id is not None:
            r = self.store.rollout(rollout_id)
            if r is None:
                raise RolloutError(f"no rollout {rollout_id!r}; see `edgeloop rollout status`")
            rows = [r]
        else:
            rows = self.store.rollouts()
        inventory = {d["device"]: d for d in self.db.devices()}
        return [self._describe(r, inventory) for r in rows]

    def _describe(self, r: Row, inventory: dict[str, dict[str, Any]]) -> dict[str, Any]:
        target = Target.from_dict(r.target)
        devices = self.store.devices(r.id)
        batches = []
        counts: dict[str, int] = {}
        for b in self.store.batches(r.id):
            members = []
            for dev in (d for d in devices if d.batch == b.idx):
                state = _device_state(r, dev, inventory.get(dev.device) or {}, target)
                counts[state] = counts.get(state, 0) + 1
                members.append(
                    {
                        "device": dev.device,
                        "state": state,
                        "target_revision": dev.target_revision,
                        "reported_revision": (
                            (inventory.get(dev.device) or {}).get("status") or {}
                        ).get("revision"),
                        "published_at": dev.published_at,
                        "loaded_at": dev.loaded_at,
                        "restarts": dev.restarts,
                        "health": dev.health,
                        "failure": dev.failure,
                        "rollback_revision": (dev.rollback_doc or {}).get("revision"),
                        "rolled_back_at": dev.rolled_back_at,
                    }
                )
            batches.append(
                {
                    "number": b.idx + 1,
                    "kind": "canary" if b.idx == 0 else "step",
                    "state": _batch_state(r, b),
                    "started_at": b.started_at,
                    "published_at": b.published_at,
                    "passed_at": b.passed_at,
                    "failed_at": b.failed_at,
                    "devices": members,
                }
            )
        return {
            "id": r.id,
            "model": target.variant,
            "state": r.state,
            "reason": r.reason,
            "failure": r.failure,
            "last_error": r.last_error,
            "selector": r.selector,
            "config": r.config,
            "current_batch": min(r.current_batch + 1, r.n_batches),
            "batch_count": r.n_batches,
            "previous_models": sorted(
                {
                    str(m.get("variant") or f"{m.get('name')}@{m.get('version')}")
                    for d in devices
                    for m in (d.previous_doc or {}).get("models") or []
                    if m.get("role", "serve") == "serve"
                }
            ),
            "devices_total": len(devices),
            "devices_loaded": counts.get("loaded", 0),
            "device_states": counts,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "finished_at": r.finished_at,
            "batches": batches,
        }

    # -- plumbing ------------------------------------------------------------------------

    def _client(self) -> ControlClient:
        if self.publisher is None:
            raise RolloutError("this rollout manager has no broker connection to publish with")
        # deploy's helpers are typed for the CLI's client; the daemon's publisher
        # has the same publish() signature.
        return cast(ControlClient, self.publisher)

    def _signer(self) -> DesiredSigner:
        if self._desired_signer is None:
            self._desired_signer = DesiredSigner.for_workspace(self.ws)
        return self._desired_signer

    def _open_registry(self) -> Any:
        if self._registry is None:
            from edgeloop_control.registry import Registry

            self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
        return self._registry

    def _note_error(self, rollout_id: str, message: str, now: float) -> None:
        r = self.store.rollout(rollout_id)
        if r is not None and r.last_error != message:
            log.warning("rollout %s: %s", rollout_id, message)
            self.store.update_rollout(rollout_id, {"last_error": message, "updated_at": now})

    def _event(self, rollout_id: str, step: str, message: str, **data: Any) -> None:
        # One kind per step, like the experiments' ab_* events: rollout_started,
        # rollout_batch_passed, rollout_completed, rollout_rolled_back, ...
        self.db.add_event(
            f"rollout_{step}",
            f"{rollout_id}: {message}",
            subject=rollout_id,
            data={"rollout": rollout_id, "step": step, **data},
        )


def _online(inventory: dict[str, Any]) -> bool:
    status = inventory.get("status") or {}
    return bool(inventory.get("online")) and bool(status.get("online", True))


def _device_state(r: Row, dev: Row, inventory: dict[str, Any], target: Target) -> str:
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
    if dev.loaded_at is not None or serves_target(status, target, dev.target_revision):
        return "loaded"
    if load_error(status, dev.target_revision):
        return "failed"
    return "pending" if _online(inventory) else "offline"


def _batch_state(r: Row, b: Row) -> str:
    if b.failed_at is not None:
        return "failed"
    if b.passed_at is not None:
        return "passed"
    if b.started_at is None:
        return "skipped" if r.state in FINAL or r.state == ROLLING_BACK else "waiting"
    if b.published_at is None:
        return "publishing"
    return "checking" if r.state == RUNNING else "stopped"
