"""A/B experiments between a champion and a challenger, decided by always-valid statistics.

Lifecycle (docs/experiments.md)::

    running --decision (auto)------------> promoting --registry--> promoted --> staged rollout
    running --decision (auto) or stop()--> rolling_back --desired, registry--> rolled_back
    running --decision (manual)----------> decided --promote()--> promoting
                                                   --stop()-----> rolling_back

Every state, the sequential test, the per-arm totals and the pending actions live in the
control database (:mod:`.store`), and every transition is a compare-and-set on the state
inside one transaction. So the daemon and CLI commands can act on the same experiment without
deciding twice, a restart continues exactly where the last tick stopped, and an action that
failed half-way (a broker outage during rollback) is retried from the step that failed.

A running experiment owns its devices' desired state
(:class:`~edgeloop_control.fleet.desired.DesiredState`): claimed at start, released when it
is decided, stopped or fails to start.

This module is the policy's face (what the daemon, the CLI and the web UI call); the work is
in :mod:`.start`, :mod:`.decide` (looks and decisions), :mod:`.actions` (carrying them out)
and :mod:`.view` (what readers see).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from edgeloop_control.fleet.desired import DeviceOwned
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.stats import MixtureSPRT

from . import actions, decide, view
from .config import ExperimentConfig, ExperimentError
from .parts import Parts, RolloutStarter, owner
from .start import Request, start
from .store import ACTIVE, ENDING, FINAL, STATES, Experiment, ExperimentStore

__all__ = ["ACTIVE", "ENDING", "FINAL", "STATES", "ExperimentManager", "RolloutStarter"]

log = logging.getLogger("edgeloop.control.experiments")


class ExperimentManager:
    """Starts, evaluates and ends A/B experiments; a daemon policy (``tick`` every second).

    ``publisher`` is any :class:`~edgeloop_control.infra.mqtt.Publisher` (the daemon's
    session or a short-lived :class:`~edgeloop_control.infra.mqtt.ControlClient`); ``None``
    for read-only use (status, looks). ``rollouts`` receives promoted versions; without it a
    promotion's rollout waits for a manager that has one (the daemon's).
    """

    name = "experiments"

    def __init__(
        self,
        ws: Workspace,
        db: ControlDB,
        publisher: Publisher | None,
        *,
        rollouts: RolloutStarter | None = None,
        config: ExperimentConfig | None = None,
    ) -> None:
        cfg = config if config is not None else ExperimentConfig.from_workspace(ws)
        self.parts = Parts(ws, db, cfg, rollouts)
        self.parts.publisher = publisher
        self._unclaimed: set[str] = set()  # experiments whose devices another owner holds

    @property
    def ws(self) -> Workspace:
        return self.parts.ws

    @property
    def db(self) -> ControlDB:
        return self.parts.db

    @property
    def config(self) -> ExperimentConfig:
        return self.parts.config

    @property
    def store(self) -> ExperimentStore:
        return self.parts.store

    @property
    def publisher(self) -> Publisher | None:
        return self.parts.publisher

    @publisher.setter
    def publisher(self, publisher: Publisher | None) -> None:
        self.parts.publisher = publisher

    # -- operator actions ----------------------------------------------------------

    def start(
        self,
        model: str,
        champion: str,
        challenger: str,
        devices: Sequence[str],
        *,
        weight: float | str | None = None,
        cause: str | None = None,
        auto_decide: bool | None = None,
    ) -> dict[str, Any]:
        """Split the devices' traffic between champion and challenger and start measuring.

        ``weight`` is the challenger's share (``10%``, ``0.1``, or ``10`` meaning percent;
        default ``challenger_weight``), ``auto_decide`` defaults to the configured one.
        Returns the experiment (as in :meth:`status`, without looks).
        """
        req = Request(model, champion, challenger, devices, weight, cause, auto_decide)
        return view.summary(start(self.parts, req))

    def stop(self, exp_id: str, reason: str | None = None) -> dict[str, Any]:
        """End the experiment keeping the champion: every device back to it at 100 %.

        When this returns the experiment no longer owns its devices (a deployment may take
        them at once); the rollback of each device is published now if this process can
        (else by the daemon), and skipped for a device someone else has written since.
        """
        exp = self._get(exp_id)
        if exp.state not in ACTIVE:
            raise ExperimentError(f"{exp_id} is {exp.state}; only a running or decided "
                                  f"experiment can be stopped")  # fmt: skip
        why = f"Stopped by an operator: {reason or 'no reason given'}."
        decision = decide.operator_decision("rollback", why, exp.decision)
        decide.transition(
            self.parts, exp, "rolling_back", decision, "ab_stopped", f"{exp_id}: {why}"
        )
        actions.act(self.parts, exp_id, time.time(), force=True)
        return self.status(exp_id)[0]

    def promote(self, exp_id: str, *, force: bool = False) -> dict[str, Any]:
        """Promote the challenger now; without ``force`` only when the decision was promote."""
        exp = self._get(exp_id)
        if exp.state not in ACTIVE:
            raise ExperimentError(f"{exp_id} is {exp.state}; only a running or decided "
                                  f"experiment can be promoted")  # fmt: skip
        recorded = exp.decision
        if not force:
            if exp.state == "running":
                raise ExperimentError(
                    f"{exp_id} has not reached a decision yet; promote anyway with --force"
                )
            if recorded and recorded.get("action") != "promote":
                raise ExperimentError(
                    f"{exp_id} was decided {recorded.get('action')!r}, not promote "
                    f"({recorded.get('reason')}); promote anyway with --force"
                )
        why = "Promoted by an operator" + (
            "." if recorded is None else f"; the experiment said: {recorded.get('reason')}"
        )
        decision = decide.operator_decision("promote", why, recorded)
        decide.transition(self.parts, exp, "promoting", decision, "ab_decision", f"{exp_id}: {why}")
        actions.act(self.parts, exp_id, time.time(), force=True)
        return self.status(exp_id)[0]

    # -- the policy ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Evaluate running experiments and carry out pending actions; idempotent."""
        for exp_id, state in self.store.due():
            try:
                if state in ACTIVE:
                    self._hold_devices(exp_id)
                    decide.look(self.parts, exp_id, now)
                actions.act(self.parts, exp_id, now)
            except Exception:  # one experiment's failure must not stop the others
                log.exception("experiment %s: tick failed", exp_id)

    def _hold_devices(self, exp_id: str) -> None:
        """Claim a running experiment's devices if it does not hold them yet (experiments
        started before the desired-state owner kept a table); a no-op once it does."""
        devices = self.store.devices(exp_id)
        me = owner(exp_id)
        held = self.parts.desired.owners(devices)
        if all(held.get(d) == me for d in devices):
            return
        try:
            self.parts.desired.claim(me, devices)
        except DeviceOwned as exc:
            if exp_id not in self._unclaimed:  # said once per process, not every second
                self._unclaimed.add(exp_id)
                log.warning("%s cannot claim its devices: %s", exp_id, exc)

    # -- reading -------------------------------------------------------------------

    def status(self, exp_id: str | None = None) -> list[dict[str, Any]]:
        """The report of one experiment (``exp_id``) or of all, oldest first.

        Running experiments are evaluated afresh on the telemetry stored so far (without
        writing anything, so this works while the daemon is down); ended ones show the report
        at their last look.
        """
        rows = [self._get(exp_id)] if exp_id is not None else self.store.all()
        now = time.time()
        out = []
        for exp in rows:
            if exp.state in ACTIVE:
                lk = decide.take_look(self.parts, exp, now)
                test, report = lk.test, lk.ev.report
                evaluation: dict[str, Any] | None = {"action": lk.ev.action, "reason": lk.ev.reason}
            else:
                test = MixtureSPRT.from_dict(exp.test)
                report = exp.report or {}
                evaluation = report.get("decision")
            out.append(view.status_entry(exp, test, report, evaluation, self.looks(exp.id)))
        return out

    def looks(self, exp_id: str) -> list[dict[str, Any]]:
        """Every look that saw new counts, oldest first (what the demo report plots)."""
        return self.store.looks(exp_id)

    def running_for(self, model: str) -> list[dict[str, Any]]:
        """Experiments of ``model`` that still split traffic (running or awaiting a decision)."""
        return [view.summary(e) for e in self.store.all() if e.model == model
                and e.state in ACTIVE]  # fmt: skip

    def devices_running(self, model: str) -> list[str]:
        """Devices whose desired state serves any version of ``model``."""
        return actions.devices_running(self.parts, model)

    def _get(self, exp_id: str) -> Experiment:
        try:
            return self.store.get(exp_id)
        except KeyError:
            raise ExperimentError(
                f"no experiment {exp_id!r}; `edgeloop ab status` lists them"
            ) from None
