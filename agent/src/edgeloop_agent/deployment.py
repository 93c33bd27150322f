"""What the agent is serving right now: an immutable snapshot.

The serving loop reads ``agent.deployment`` once per micro-batch; an update
builds a complete new snapshot and swaps the reference. Requests in flight
finish on the snapshot they started with, so a swap never drops or fails one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeloop_agent.model import OnnxModel
from edgeloop_agent.router import Router
from edgeloop_agent.wire.allocation import Allocation, allocate
from edgeloop_agent.wire.desired import DesiredState


@dataclass(frozen=True)
class Deployment:
    desired: DesiredState
    models: dict[str, OnnxModel]  # variant -> model (serving variants)
    shadows: dict[str, OnnxModel]  # variant -> model (shadow variants)
    router: Router
    allocation: Allocation

    @classmethod
    def build(cls, desired: DesiredState, loaded: dict[str, OnnxModel]) -> Deployment:
        """``loaded`` maps model ref (name@version) to a loaded model."""
        serving = {m.variant: loaded[m.ref] for m in desired.serving}
        shadows = {m.variant: loaded[m.ref] for m in desired.shadows}
        if desired.allocation is not None:
            allocation = Allocation.from_dict(desired.allocation)
            if set(allocation.variants) != set(serving):
                raise ValueError(
                    f"allocation covers variants {sorted(allocation.variants)} but the serving "
                    f"variants are {sorted(serving)}"
                )
        else:
            allocation = allocate(
                None,
                {m.variant: m.weight for m in desired.serving},
                experiment_id=desired.experiment or "default",
            )
        router = Router(allocation)
        return cls(
            desired=desired,
            models=serving,
            shadows=shadows,
            router=router,
            allocation=allocation,
        )

    @property
    def revision(self) -> int:
        return self.desired.revision

    def route(self, key: str | None) -> str:
        if len(self.models) == 1:
            return next(iter(self.models))
        return self.router.route(key)

    def describe(self) -> list[dict[str, Any]]:
        """The loaded versions, as reported on the status topic."""
        return [
            {
                "name": e.name,
                "version": e.version,
                "sha256": e.sha256,
                "role": e.role,
                "weight": e.weight,
                "variant": e.variant,
            }
            for e in self.desired.models
        ]
