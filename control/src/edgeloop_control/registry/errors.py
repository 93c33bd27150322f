"""The one exception type the registry raises."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry operation failed; the message says what and, where possible, why."""
