"""A/B experiment statistics for the control node (champion vs challenger).

Per-variant intervals, fixed-horizon tests, the always-valid mSPRT with its confidence
sequence, the sample-ratio-mismatch check and the promote/rollback/continue decision. The
formulas, defaults and references are in ``docs/ab-statistics.md``.
"""

from .decision import Decision, Guardrail, decide
from .means import ContinuousStats, t_interval, welch_ttest
from .proportions import BinaryStats, two_proportion_ztest, wilson_interval
from .report import experiment_report
from .results import Interval, TestResult
from .sequential import MixtureSPRT, mixture_half_width, mixture_log_likelihood_ratio
from .srm import SRMResult, sample_ratio_mismatch

__all__ = [
    "BinaryStats",
    "ContinuousStats",
    "Decision",
    "Guardrail",
    "Interval",
    "MixtureSPRT",
    "SRMResult",
    "TestResult",
    "decide",
    "experiment_report",
    "mixture_half_width",
    "mixture_log_likelihood_ratio",
    "sample_ratio_mismatch",
    "t_interval",
    "two_proportion_ztest",
    "welch_ttest",
    "wilson_interval",
]
