"""What every step of a rollout works with: the database, its tables, the one
writer of desired state, the registry, and the rollout's events.

The steps themselves (``start.py``, ``advance.py``, ``judge.py``,
``rollback.py``, ``describe.py``) are functions of a :class:`RolloutContext`, so
each can be read on its own; :class:`~.manager.RolloutManager` wires them up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgeloop_control.fleet.desired import DeployError, DesiredState, Owner
from edgeloop_control.fleet.inventory import offline_after_s
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, Publisher
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout.config import RolloutError
from edgeloop_control.policies.rollout.store import RolloutStore

if TYPE_CHECKING:
    from edgeloop_control.registry import Registry

log = logging.getLogger("edgeloop.control.rollout")

# What a publish can raise: a publisher (BrokerError; RuntimeError from paho itself),
# a vanished socket (OSError), a bad artifact or an owned device (DeployError).
PUBLISH_ERRORS: tuple[type[Exception], ...] = (RuntimeError, OSError, BrokerError, DeployError)


class NotRunning(Exception):
    """The rollout left ``running`` (abort, failure seen by another driver) mid-step."""


class _NoBroker:
    """The publisher of a manager made without a broker connection (status, start,
    an abort the daemon carries out): ownership works, publishing says why not."""

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None:
        raise RolloutError("this rollout manager has no broker connection to publish with")


class RolloutContext:
    def __init__(self, ws: Workspace, db: ControlDB, publisher: Publisher | None) -> None:
        self.ws = ws
        self.db = db
        self.publisher = publisher
        self.store = RolloutStore(db)
        self._signer: DesiredSigner | None = None
        self._registry: Registry | None = None
        self._desired: DesiredState | None = None
        self._offline_after_s: float | None = None

    def open_desired(self) -> DesiredState:
        """Make the desired-state owner; call it before any transaction that uses it.

        Not made in ``__init__``: its schema script writes, and a manager made only
        to read status (the dashboard's read-only database) must not. Not made on
        first use inside a transaction either: the script would commit it early.
        """
        if self._desired is None:
            self._desired = DesiredState(
                self.db, self.publisher or _NoBroker(), self.ws.topic_prefix, self.signer
            )
        return self._desired

    @property
    def desired(self) -> DesiredState:
        if self._desired is None:
            raise RuntimeError("RolloutContext.open_desired() was not called before writing")
        return self._desired

    @property
    def offline_after_s(self) -> float:
        """``[fleet] offline_after_s``: devices offline longer are skipped, not waited for."""
        if self._offline_after_s is None:
            self._offline_after_s = offline_after_s(self.ws)
        return self._offline_after_s

    @property
    def prefix(self) -> str:
        return self.ws.topic_prefix

    def signer(self) -> DesiredSigner:
        # Loaded on the first publish only: reading status needs no signing key.
        if self._signer is None:
            self._signer = DesiredSigner.for_workspace(self.ws)
        return self._signer

    def registry(self) -> Registry:
        if self._registry is None:
            # Imported here: the registry pulls in git and DVC, which a status read
            # of rollouts (the report, the dashboard) never needs.
            from edgeloop_control.registry import Registry

            self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
        return self._registry

    @staticmethod
    def owner(rollout_id: str) -> Owner:
        return Owner("rollout", rollout_id)

    def publish_desired(self, rollout_id: str, device: str, doc: dict[str, Any]) -> None:
        self.desired.publish(device, doc, owner=self.owner(rollout_id))

    def event(self, rollout_id: str, step: str, message: str, **data: Any) -> None:
        # One kind per step, like the experiments' ab_* events: rollout_started,
        # rollout_batch_passed, rollout_completed, rollout_rolled_back, ...
        self.db.add_event(
            f"rollout_{step}",
            f"{rollout_id}: {message}",
            subject=rollout_id,
            data={"rollout": rollout_id, "step": step, **data},
        )

    def note_error(self, rollout_id: str, message: str, now: float) -> None:
        # Reads the one column it needs: the error may be that the row cannot be decoded.
        if self.store.last_error(rollout_id) != message:
            log.warning("rollout %s: %s", rollout_id, message)
            self.store.update_rollout(rollout_id, {"last_error": message, "updated_at": now})


def online(inventory: dict[str, Any]) -> bool:
    """The device's connection is up and its last status does not say it went away."""
    status = inventory.get("status") or {}
    return bool(inventory.get("online")) and bool(status.get("online", True))
