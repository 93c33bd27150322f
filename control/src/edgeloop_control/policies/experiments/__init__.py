"""A/B experiments: champion vs challenger on real traffic, decided by always-valid statistics.

The statistics are :mod:`edgeloop_control.stats`; this package feeds them the fleet's
telemetry, runs the guardrails, acts on the decision and keeps it all in the control database.
See docs/experiments.md.
"""

from .config import ExperimentConfig, ExperimentError
from .manager import ACTIVE, ENDING, FINAL, STATES, ExperimentManager

__all__ = [
    "ACTIVE",
    "ENDING",
    "FINAL",
    "STATES",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentManager",
]
