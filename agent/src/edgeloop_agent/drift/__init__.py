"""Streaming drift detection for the agent (numpy only).

* The training-time reference (:class:`~edgeloop_agent.wire.profile.ReferenceProfile`) is
  part of the wire: training builds it, model metadata carries it (``edgeloop_agent.wire``).
* :class:`DriftMonitor` with :class:`DriftConfig` / :class:`WindowConfig` — data and
  prediction drift per window: PSI, binned two-sample KS, missing rates; chi-square and PSI
  of categorical features and the PCA reconstruction error when the profile has them.
* :class:`HDDM_A`, :class:`PageHinkley`, :class:`DDM` — concept drift from the labelled
  error stream.

See ``docs/drift.md`` for formulas, defaults, error bounds and costs.
"""

from edgeloop_agent.drift.concept import DDM, HDDM_A, PageHinkley
from edgeloop_agent.drift.ks import ks_from_histograms, ks_pvalue, ks_statistic
from edgeloop_agent.drift.monitor import DriftConfig, DriftMonitor
from edgeloop_agent.drift.multitest import adjust_pvalues
from edgeloop_agent.drift.psi import psi
from edgeloop_agent.drift.report import CategoricalDrift, ColumnDrift, DriftReport
from edgeloop_agent.drift.window import WindowConfig

__all__ = [
    "DDM",
    "HDDM_A",
    "CategoricalDrift",
    "ColumnDrift",
    "DriftConfig",
    "DriftMonitor",
    "DriftReport",
    "PageHinkley",
    "WindowConfig",
    "adjust_pvalues",
    "ks_from_histograms",
    "ks_pvalue",
    "ks_statistic",
    "psi",
]
