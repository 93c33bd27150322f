"""A/B experiments: champion vs challenger on real traffic, decided by always-valid statistics.

The statistics are :mod:`edgeloop_control.stats`; this package feeds them the fleet's
telemetry, runs the guardrails, acts on the decision and keeps it all in the control database.
See docs/experiments.md.

Layout: :mod:`.manager` (the policy's face), :mod:`.start`, :mod:`.decide` (looks and
decisions), :mod:`.actions` (carrying decisions out), :mod:`.store` (tables and SQL),
:mod:`.versions` (registry and ONNX), :mod:`.view` (what readers see), :mod:`.config`,
:mod:`.evaluate` and :mod:`.totals` (the numbers).
"""

from .config import ExperimentConfig, ExperimentConfigError, ExperimentError
from .manager import ACTIVE, ENDING, FINAL, STATES, ExperimentManager
from .store import Experiment, ExperimentStore, Step, StepKind

__all__ = [
    "ACTIVE",
    "ENDING",
    "FINAL",
    "STATES",
    "Experiment",
    "ExperimentConfig",
    "ExperimentConfigError",
    "ExperimentError",
    "ExperimentManager",
    "ExperimentStore",
    "Step",
    "StepKind",
]
