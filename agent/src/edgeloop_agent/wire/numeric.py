"""What counts as a number in edgeloop, on both sides of the wire.

One rule, so a value that one side accepts the other does not refuse:

* a number is an int or a float, or any other real (numpy scalars, Fraction);
* a bool is never a number (``True`` is an int to Python, but a flag is not a
  count, a weight or a timestamp);
* NaN and +-inf are not numbers either: JSON cannot carry them, and a check such
  as ``0 < share <= 1`` is silently False for NaN. A caller that must see them
  (to count or plot them as gaps) asks with ``finite=False``.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard


def is_number(value: object, *, finite: bool = True) -> TypeGuard[float]:
    """True when ``value`` is a real number and not a bool; NaN and +-inf only when
    ``finite`` is False. Any size of int is finite; another real must fit a float."""
    # The exact types first: this runs on the agent's per-request path.
    if type(value) is float:
        return not finite or math.isfinite(value)
    if type(value) is int:
        return True
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral) or not finite:
        return True
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a Fraction beyond the float range
        return False
