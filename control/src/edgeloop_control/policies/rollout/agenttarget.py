"""A rollout whose target is an agent package, not a model version.

The same machinery (batches, canary, soak, error/p99 gates, crash loops,
rollback) with three differences, each asked for by ``Target.agent``:

* the artifact is the package's chunks (``fleet/agentpackages.py``);
* each device's target document is its current one plus the signed ``agent``
  entry (models unchanged);
* a device has "loaded" the target when its status reports that package version
  (``serves_target``), and it fails when its one-shot reports the package rolled
  back or failed (``gate.agent_update_failure``).

Rolling back re-publishes each device's previous document: one that named an
earlier package brings that package back (the agent installs it the same way);
one that named none leaves an upgraded device on the new package, since nothing
tells it which package to go back to (docs/operations.md, "Updating the agent").
"""

from __future__ import annotations

from typing import Any

from edgeloop_agent.wire.agentpackage import PACKAGE, AgentPackage
from edgeloop_control.fleet.agentpackages import (
    AgentPackageRefused,
    AgentPackages,
    with_agent,
)
from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout.config import RolloutError
from edgeloop_control.policies.rollout.context import RolloutContext
from edgeloop_control.policies.rollout.plan import Target

# How a rollout names an agent package: ``edgeloop-agent=0.2.0`` (a model ref has "@").
AGENT_REF = f"{PACKAGE}="


def packages(ws: Workspace) -> AgentPackages:
    return AgentPackages.for_workspace(ws)


def agent_target(ws: Workspace, version: str, architecture: str | None) -> Target:
    """The target of ``edgeloop rollout start --agent-version VERSION``."""
    try:
        stored = packages(ws).get(version, architecture)
    except AgentPackageRefused as exc:
        raise RolloutError(str(exc)) from None
    pkg = stored.package
    return Target(PACKAGE, pkg.version, pkg.sha256, pkg.size, None, agent=pkg.to_dict())


def publish_agent_package(ctx: RolloutContext, target: Target) -> int:
    """Publish the target's chunks (retained); returns the package's size."""
    assert target.agent is not None
    pkg = AgentPackage.from_dict(target.agent)
    try:
        stored = packages(ctx.ws).get(pkg.version, pkg.architecture)
        if stored.package.sha256 != pkg.sha256:
            raise RolloutError(
                f"{target.variant} in the workspace (sha256 {stored.package.sha256[:12]}) is "
                f"not the package this rollout started with ({pkg.sha256[:12]})"
            )
        if ctx.publisher is None:
            raise RolloutError("publishing an agent package needs a broker connection")
        packages(ctx.ws).publish(ctx.publisher, ctx.prefix, stored)
    except AgentPackageRefused as exc:
        raise RolloutError(str(exc)) from None
    return pkg.size


def agent_doc(
    ctx: RolloutContext, device: str, previous: dict[str, Any] | None, target: Target
) -> dict[str, Any]:
    """``device``'s current document naming the target package, one revision up."""
    assert target.agent is not None
    current = ctx.desired.current(device) or previous
    if current is None:
        raise DeployError(f"{device} has no desired state to add the agent package to")
    return with_agent(current, AgentPackage.from_dict(target.agent))
