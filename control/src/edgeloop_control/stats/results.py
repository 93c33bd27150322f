"""Small result records shared by the per-variant and two-sample statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._validation import json_float


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at ``confidence``.

    All three numbers are NaN when the data cannot define them (e.g. no outcomes yet).
    """

    estimate: float
    lower: float
    upper: float
    confidence: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": json_float(self.estimate),
            "lower": json_float(self.lower),
            "upper": json_float(self.upper),
            "confidence": self.confidence,
            "method": self.method,
        }


@dataclass(frozen=True)
class TestResult:
    """A two-sided fixed-horizon test of "no difference" between variants a and b.

    ``difference`` is always b − a (challenger minus champion). ``df`` is ``None`` for
    z-tests. NaN fields mean the test is undefined for these data (too few outcomes, or no
    variation at all).
    """

    __test__ = False  # keep pytest from collecting this class because of its name

    test: str
    statistic: float
    p_value: float
    difference: float
    df: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": json_float(self.statistic),
            "p_value": json_float(self.p_value),
            "difference": json_float(self.difference),
            "df": json_float(self.df),
        }
