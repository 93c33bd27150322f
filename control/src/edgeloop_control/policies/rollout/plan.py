"""Batch arithmetic and the target version, free of I/O so it is easy to reason about."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """The version being rolled out, as the desired-state planner needs it: a model
    version, or (``agent`` set, the wire's agent entry) an agent package, whose
    ``name`` is then ``edgeloop-agent`` and ``version`` the package's."""

    name: str
    version: str
    sha256: str
    size: int
    signature: str | None
    agent: dict[str, Any] | None = None

    @property
    def variant(self) -> str:
        if self.agent is not None:
            return f"{self.name}={self.version}"
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature,
        }
        if self.agent is not None:
            out["agent"] = self.agent
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        agent = data.get("agent")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            signature=data.get("signature"),
            agent=dict(agent) if isinstance(agent, dict) else None,
        )


def share_count(share: float, n: int) -> int:
    """ceil(share * n), at least 1.

    Rounded to 9 decimals first: 0.7 * 10 is 7.000000000000001 in binary
    floating point, and a canary of 70% of 10 devices must be 7, not 8.
    """
    return max(1, math.ceil(round(share * n, 9)))


def batch_sizes(n: int, canary: float, step: float) -> list[int]:
    """Canary first (ceil(canary*N), at least 1), then steps of ceil(step*N) until done."""
    if n <= 0:
        return []
    sizes = [min(n, share_count(canary, n))]
    stride = share_count(step, n)
    while sum(sizes) < n:
        sizes.append(min(stride, n - sum(sizes)))
    return sizes


def split_batches(devices: list[str], canary: float, step: float) -> list[list[str]]:
    out: list[list[str]] = []
    start = 0
    for size in batch_sizes(len(devices), canary, step):
        out.append(devices[start : start + size])
        start += size
    return out


def serves_target(status: dict[str, Any] | None, target: Target, revision: int | None) -> bool:
    """The device's status shows ``target`` loaded at ``revision`` or later."""
    if not status or not status.get("online") or revision is None:
        return False
    reported = status.get("revision")
    if not isinstance(reported, int) or reported < revision:
        return False
    if target.agent is not None:
        # The new agent runs: the package version it was installed with (its unit
        # says so) and READY (status is published only by a running agent).
        return status.get("agent_package_version") == target.version
    return any(
        isinstance(m, dict)
        and m.get("name") == target.name
        and m.get("version") == target.version
        and m.get("role", "serve") == "serve"
        for m in status.get("models") or []
    )


def rollback_doc(
    previous: dict[str, Any], current_revision: int | None, target_revision: int | None
) -> dict[str, Any]:
    """The previous model set again, under a revision above anything the device was sent.

    Agents apply whatever desired document is retained, but a fresh, higher
    revision keeps ``revision`` monotonic for everyone reading status and
    desired state (the inventory, `edgeloop fleet`, the next deployment).
    """
    revision = max(
        int(previous.get("revision") or 0), int(current_revision or 0), int(target_revision or 0)
    )
    return {**previous, "revision": revision + 1}
