"""Staged fleet rollout with automatic rollback (see docs/rollout.md).

``start`` only records a rollout (and claims its devices); ``tick`` (the
daemon's worker thread, or a CLI with ``--wait``) moves it: publish the
artifact, then desired state to one batch, gate it on what the devices report,
then the next batch. A failed gate or an abort republishes every switched
device's previous model set, then releases the devices.

The steps live in their own modules: ``start.py`` (selection, claim, record),
``advance.py`` (publish, pass), ``judge.py`` (the gates), ``rollback.py``
(fail, abort, roll back), ``describe.py`` (status).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.fleet.desired import DeviceOwned
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout.advance import advance
from edgeloop_control.policies.rollout.agenttarget import AGENT_REF, agent_target
from edgeloop_control.policies.rollout.config import RolloutConfig, RolloutError
from edgeloop_control.policies.rollout.context import RolloutContext
from edgeloop_control.policies.rollout.describe import describe
from edgeloop_control.policies.rollout.plan import Target
from edgeloop_control.policies.rollout.rollback import begin_abort
from edgeloop_control.policies.rollout.start import start_rollout
from edgeloop_control.policies.rollout.store import ACTIVE, FINAL, RUNNING, RolloutStore

log = logging.getLogger("edgeloop.control.rollout")


class RolloutManager:
    """The rollout policy of the control daemon; also usable on its own (CLI).

    ``publisher`` may be None for reading, starting and aborting (the daemon
    then publishes); ``tick`` needs one.
    """

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
        self.config = config if config is not None else RolloutConfig.from_workspace(ws)
        self.ctx = RolloutContext(ws, db, publisher)
        # Rollouts whose devices this manager has (re)claimed: once per process.
        self._claimed: set[str] = set()

    @property
    def store(self) -> RolloutStore:
        return self.ctx.store

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
        agent_arch: str | None = None,
    ) -> dict[str, Any]:
        """Record a rollout of ``model_ref``; ``tick`` carries it out. Returns its status.

        ``model_ref`` ``edgeloop-agent=VERSION`` rolls out a published agent package
        instead (``edgeloop agent publish``; ``agent_arch`` when several are published).
        """
        config = self.config.with_overrides(
            canary=canary, step=step, gates=gates, batch_timeout_s=batch_timeout_s
        )
        self.ctx.open_desired()
        target: str | Target = model_ref
        if model_ref.startswith(AGENT_REF):
            target = agent_target(self.ws, model_ref[len(AGENT_REF) :], agent_arch)
        rollout_id = start_rollout(
            self.ctx, config, target, devices=devices, group=group, reason=reason
        )
        self._claimed.add(rollout_id)
        return self.status(rollout_id)[0]

    def tick(self, now: float | None = None) -> None:
        """Advance every running rollout by as much as the fleet's reports allow."""
        if self.publisher is None:
            raise RolloutError(
                "a rollout manager without a broker connection cannot drive rollouts"
            )
        now = time.time() if now is None else now
        self.ctx.open_desired()
        for rollout_id in self.store.rollout_ids(states=ACTIVE):
            try:
                self._claim(rollout_id, now)
                advance(self.ctx, rollout_id, now)
            except EdgeloopError as exc:  # RolloutError, a corrupt row (CorruptColumn), ...
                self.ctx.note_error(rollout_id, str(exc), now)
            except Exception as exc:  # one rollout's bug must not stall the others
                log.exception("rollout %s: unexpected error", rollout_id)
                self.ctx.note_error(rollout_id, f"unexpected error: {exc!r}", now)

    def _claim(self, rollout_id: str, now: float) -> None:
        """Claim the devices of a rollout started before ``device_owners`` existed.

        Idempotent; done under the rollout's state in one transaction, so a rollout
        that finished (and released) meanwhile is never claimed again.
        """
        if rollout_id in self._claimed:
            return
        with self.store.transaction() as conn:
            current = self.store.rollout(rollout_id)
            if current is None or current.state not in ACTIVE:
                return
            try:
                self.ctx.desired.claim(
                    self.ctx.owner(rollout_id), self.store.device_ids(rollout_id), conn=conn
                )
            except DeviceOwned as exc:
                # Publishing to those devices is refused until their owner ends.
                self.ctx.note_error(rollout_id, str(exc), now)
                return
        self._claimed.add(rollout_id)

    def abort(self, rollout_id: str, reason: str = "aborted by the operator") -> dict[str, Any]:
        """Stop a running rollout and roll back every device it switched.

        With a publisher the rollback is sent here and the devices are released
        before this returns (``state`` is then ``rolled_back``); without one the
        daemon sends it on its next tick and releases them then.
        """
        r = self.store.rollout(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}; see `edgeloop rollout status`")
        if r.state in FINAL:
            raise RolloutError(f"rollout {rollout_id} is already {r.state}; nothing to abort")
        now = time.time()
        self.ctx.open_desired()
        if r.state == RUNNING:
            begin_abort(self.ctx, rollout_id, reason, now)
        if self.publisher is not None:
            advance(self.ctx, rollout_id, now)
        return self.status(rollout_id)[0]

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
        return [describe(self.store, r, inventory) for r in rows]
