"""Streaming drift detection: reference profiles, PSI, binned KS, windows, monitors."""

from edgeloop_agent.drift.profile import (
    ColumnProfile,
    ReferenceProfile,
    build_reference_profile,
)

__all__ = [
    "ColumnProfile",
    "ReferenceProfile",
    "build_reference_profile",
]
