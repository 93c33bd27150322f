"""The one error of tracking."""

from __future__ import annotations

from edgeloop_control.errors import EdgeloopError


class TrackingError(EdgeloopError):
    """A run cannot be logged, read or pushed; the message says why."""
