"""Names and references: ``view``, ``view@v2``, ``view:column``, ``view@v2:column``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeloop_control.featurestore.errors import InvalidInputError

# Letters, digits, "_", "-" and "."; no "@" or ":" (reference syntax) and no "/".
_VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"v?([1-9][0-9]*)")


def check_view_name(name: object) -> str:
    if not isinstance(name, str) or not _VIEW_NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid view name {name!r}: use letters, digits, '_', '-' or '.' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class ViewRef:
    name: str
    version: int | None = None  # None: the latest version

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class FeatureRef:
    view: ViewRef
    column: str


def parse_view_ref(text: object) -> ViewRef:
    """``"sensors"`` or ``"sensors@v2"`` (``@latest`` is accepted too)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"view reference must be a string, got {text!r}")
    name, sep, version = text.partition("@")
    check_view_name(name)
    if not sep or version == "latest":
        return ViewRef(name)
    match = _VERSION.fullmatch(version)
    if not match:
        raise InvalidInputError(
            f"invalid version {version!r} in {text!r}: expected v1, v2, ... or latest"
        )
    return ViewRef(name, int(match.group(1)))


def parse_feature_ref(text: object) -> FeatureRef:
    """``"view:column"`` or ``"view@v2:column"``."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidInputError(
            f"invalid feature reference {text!r}: expected 'view:column' or 'view@v2:column'"
        )
    view, _, column = text.partition(":")
    if not column:
        raise InvalidInputError(f"feature reference {text!r} names no column")
    return FeatureRef(parse_view_ref(view), column)
