"""Traffic and fleet shares: one way to write them in every config and flag.

A share is stored as a fraction in (0, 1]. Users may write ``10%``, ``"10%"``,
``0.1`` or ``10`` (a bare number above 1 is read as percent), in the workspace
file and on the command line alike, so an experiment's challenger weight and a
rollout's canary size are written the same way.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.errors import ConfigError


def parse_share(value: Any, what: str = "share", *, allow_one: bool = True) -> float:
    """``"10%"``, ``10`` (above 1 means percent), ``"0.1"`` or ``0.1`` -> ``0.1``.

    With ``allow_one=False`` the share must be strictly below 100 % (a challenger
    that takes all traffic is not an experiment).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a share like 10% or 0.1, got {value!r}")
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except ValueError:
        raise ConfigError(f"{what} must be a share like 10% or 0.1, got {value!r}") from None
    if percent or number > 1:
        number /= 100.0
    upper_ok = number <= 1 if allow_one else number < 1
    if not (number > 0 and upper_ok) or number != number:
        bound = "(0%, 100%]" if allow_one else "(0%, 100%)"
        raise ConfigError(f"{what} must be within {bound}, got {value!r}")
    return number
