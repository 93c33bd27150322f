"""Input checks shared by the statistics modules.

Every check names the offending field and echoes the value, so an error raised deep inside a
report still tells the operator which aggregate from which device was wrong.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_count(name: str, value: Any) -> int:
    """A non-negative integer (numpy integers accepted, bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a non-negative integer, got {value!r} ({type(value).__name__})"
        )
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return value


def check_finite(name: str, value: Any) -> float:
    """A finite real number (ints and numpy scalars accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_open_unit(name: str, value: Any) -> float:
    """A probability strictly between 0 and 1 (alpha, confidence levels, thresholds)."""
    value = check_finite(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    value = check_finite(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def json_float(value: float | None) -> float | None:
    """``None`` for NaN/inf so reports stay strict JSON (``json.dumps(allow_nan=False)``)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
