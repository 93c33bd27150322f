"""What the experiment policy's modules share: the stores, the desired-state owner, the
registry, the configuration, and who is acting (one process holds an experiment's lease).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgeloop_control.fleet.desired import DesiredState, Owner
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.infra.workspace import Workspace

from .config import ExperimentConfig, ExperimentError
from .store import ExperimentStore
from .versions import Versions


class RolloutStarter(Protocol):
    def start(
        self,
        model_ref: str,
        *,
        devices: list[str],
        canary: float | None = None,
        step: float | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]: ...


class NoPublisher:
    """The publisher of a read-only manager (status, promote from the CLI without a broker).

    Every path that would publish checks :attr:`Parts.publisher` first and leaves the step
    pending instead, so this only turns a missed check into one clear error.
    """

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 30
    ) -> None:
        raise ExperimentError(f"cannot publish {topic}: this process has no MQTT publisher")


def owner(exp_id: str) -> Owner:
    """The experiment as the owner of its devices' desired state."""
    return Owner("experiment", exp_id)


@dataclass
class Parts:
    ws: Workspace
    db: ControlDB
    config: ExperimentConfig
    rollouts: RolloutStarter | None
    store: ExperimentStore = field(init=False)
    versions: Versions = field(init=False)
    desired: DesiredState = field(init=False)
    # Who holds an experiment's lease while this process acts on it.
    holder: str = field(init=False, default_factory=lambda: f"{os.getpid()}:{secrets.token_hex(4)}")
    _publisher: Publisher | None = field(init=False, default=None)
    _signer: DesiredSigner | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.store = ExperimentStore(self.db)
        self.versions = Versions(self.ws)
        self.desired = DesiredState(self.db, NoPublisher(), self.ws.topic_prefix, self.signer)

    @property
    def prefix(self) -> str:
        return self.ws.topic_prefix

    @property
    def publisher(self) -> Publisher | None:
        return self._publisher

    @publisher.setter
    def publisher(self, publisher: Publisher | None) -> None:
        self._publisher = publisher
        self.desired.publisher = publisher if publisher is not None else NoPublisher()

    def signer(self) -> DesiredSigner:
        # Loaded on first publish only: a read-only manager needs no signing key.
        if self._signer is None:
            self._signer = DesiredSigner.for_workspace(self.ws)
        return self._signer
