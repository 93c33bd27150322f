"""A rollout whose target is an agent package, not a model version.

The same machinery (batches, canary, soak, error/p99 gates, crash loops,
rollback) with three differences, each asked for by ``Target.agent``:

* the artifact is the package's chunks (``fleet/agentpackages.py``);
* each device's target document is its current one plus the signed ``agent``
  entry (models unchanged);
* a device has "loaded" the target when its status reports that package version
  (``serves_target``), and it fails when its one-shot reports the package rolled
  back or failed (``gate.agent_update_failure``).

Rolling back re-publishes each device's previous document, and it names the
package to go back to: the one it named already, or else the package the device
reported running when its target was planned, if that version is stored in the
workspace (``edgeloop agent publish``); the agent then installs it the same way
(a downgrade). A device whose previous package is not stored stays on the new
one (docs/operations.md, "Updating the agent").
"""

from __future__ import annotations

from typing import Any

from edgeloop_agent.wire.agentpackage import PACKAGE, AgentPackage
from edgeloop_control.fleet.agentpackages import (
    AgentPackageRefused,
    AgentPackages,
    StoredPackage,
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


def publish_agent_package(ctx: RolloutContext, target: Target, devices: list[str]) -> int:
    """Publish the target's chunks (retained), and those of the stored packages
    ``devices`` run now (what a rollback goes back to); returns the target's size."""
    assert target.agent is not None
    pkg = AgentPackage.from_dict(target.agent)
    if ctx.publisher is None:
        raise RolloutError("publishing an agent package needs a broker connection")
    try:
        stored = packages(ctx.ws).get(pkg.version, pkg.architecture)
        if stored.package.sha256 != pkg.sha256:
            raise RolloutError(
                f"{target.variant} in the workspace (sha256 {stored.package.sha256[:12]}) is "
                f"not the package this rollout started with ({pkg.sha256[:12]})"
            )
        packages(ctx.ws).publish(ctx.publisher, ctx.prefix, stored)
    except AgentPackageRefused as exc:
        raise RolloutError(str(exc)) from None
    running = {_running_package(ctx, d, pkg.architecture) for d in devices} - {None}
    for previous in running:
        assert previous is not None
        if previous.package.sha256 != pkg.sha256:
            packages(ctx.ws).publish(ctx.publisher, ctx.prefix, previous)
    return pkg.size


def _running_package(ctx: RolloutContext, device: str, arch: str) -> StoredPackage | None:
    """The stored package of the version ``device`` reports running, if any."""
    status = (ctx.db.device(device) or {}).get("status") or {}
    version = status.get("agent_package_version")
    if not isinstance(version, str):
        return None
    try:
        return packages(ctx.ws).get(version, arch)
    except AgentPackageRefused:
        return None


def agent_plan(
    ctx: RolloutContext, device: str, previous: dict[str, Any] | None, target: Target
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the target document, the document a rollback restores) for ``device``."""
    assert target.agent is not None
    doc = agent_doc(ctx, device, previous, target)
    if previous is None or previous.get("agent"):
        return doc, previous
    running = _running_package(ctx, device, str(target.agent["architecture"]))
    if running is None:
        return doc, previous
    return doc, {**previous, "agent": running.package.to_dict()}


def agent_doc(
    ctx: RolloutContext, device: str, previous: dict[str, Any] | None, target: Target
) -> dict[str, Any]:
    """``device``'s current document naming the target package, one revision up."""
    assert target.agent is not None
    current = ctx.desired.current(device) or previous
    if current is None:
        raise DeployError(f"{device} has no desired state to add the agent package to")
    return with_agent(current, AgentPackage.from_dict(target.agent))
