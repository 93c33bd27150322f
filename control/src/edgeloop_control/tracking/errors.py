"""The one error of tracking."""

from __future__ import annotations


class TrackingError(Exception):
    """A run cannot be logged, read or pushed; the message says why."""
