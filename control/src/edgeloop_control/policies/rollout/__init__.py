"""Staged fleet rollout with automatic rollback (see docs/rollout.md)."""

from edgeloop_control.policies.rollout.config import (
    RolloutConfig,
    RolloutError,
    parse_gates,
)
from edgeloop_control.policies.rollout.manager import RolloutManager
from edgeloop_control.policies.rollout.plan import batch_sizes, split_batches
from edgeloop_control.policies.rollout.store import (
    ACTIVE,
    COMPLETED,
    FINAL,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    Batch,
    Member,
    Rollout,
)
from edgeloop_control.policies.rollout.view import report_view

__all__ = [
    "ACTIVE",
    "COMPLETED",
    "FINAL",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "RUNNING",
    "Batch",
    "Member",
    "Rollout",
    "RolloutConfig",
    "RolloutError",
    "RolloutManager",
    "batch_sizes",
    "parse_gates",
    "report_view",
    "split_batches",
]
