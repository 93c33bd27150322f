"""How a value is quoted inside an error message: as JSON, clipped.

Requests, desired state and model metadata arrive as JSON, so a message that
names what was wrong says it in the sender's language: ``got true``, ``got null``,
``got "abc"``, ``got [1, 2]``, never Python's ``True``, ``None``, ``'abc'``. One
helper, used by every agent message that embeds a value (and by the control
node through the wire), so no message drifts back to ``repr``.
"""

from __future__ import annotations

import json
import numbers
from typing import Final

LIMIT: Final = 80
_ELLIPSIS: Final = "..."


def json_text(value: object, limit: int = LIMIT) -> str:
    """``value`` as compact-but-readable JSON text (ASCII only, so a control
    character or lone surrogate cannot break a log line), clipped to ``limit``
    characters. NaN and infinities come out as Python's JSON encoder writes
    them (``NaN``, ``Infinity``): what a client that sent them sees in its own
    payload. A value JSON cannot hold (bytes, a set) falls back to ``ascii()``."""
    try:
        text = json.dumps(value, ensure_ascii=True, separators=(", ", ": "), default=_plain)
    except (TypeError, ValueError, RecursionError):
        text = ascii(value)
    return clip(text, limit)


def json_name(name: object, limit: int = LIMIT) -> str:
    """A name (feature, input, model, setting) quoted as a JSON string."""
    return json_text(name if isinstance(name, str) else str(name), limit)


def clip(text: str, limit: int = LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, ``...`` marking the cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS


def _plain(value: object) -> object:
    """numpy scalars and arrays (and other reals) as the JSON numbers they hold."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_kind(value: object) -> str:
    """What kind of JSON value ``value`` is, with its article: "an array", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
