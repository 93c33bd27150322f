"""JSON columns in the control database, encoded and decoded one way.

Policy stores keep structured fields (device lists, metrics, plans) in TEXT
columns. Writing them through one helper keeps the encoding stable (sorted keys,
no NaN, which SQLite readers and other languages cannot parse) and turns a
corrupt value into one error naming the table and column instead of a
``JSONDecodeError`` from deep inside a policy tick.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from edgeloop_control.errors import EdgeloopError

T = TypeVar("T")


class CorruptColumn(EdgeloopError):
    """A JSON column holds something that is not the JSON it should be."""


def encode(value: Any) -> str:
    """The column text for ``value``: compact, sorted keys, NaN/inf refused."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"cannot store {value!r} as JSON: {exc}") from None


def decode(text: str | bytes | None, default: T, *, where: str = "column") -> Any | T:
    """The value stored in ``text``; ``default`` for NULL or an empty string.

    ``where`` names the column in the error (``"rollouts.plan of r-12"``).
    """
    if text is None or text == "" or text == b"":
        return default
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise CorruptColumn(f"{where} is not valid JSON ({exc})") from None
