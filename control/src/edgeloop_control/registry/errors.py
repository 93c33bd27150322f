"""The one exception type the registry raises."""

from __future__ import annotations

from edgeloop_control.errors import EdgeloopError


class RegistryError(EdgeloopError):
    """A registry operation failed; the message says what and, where possible, why."""
