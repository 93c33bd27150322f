"""Exceptions raised by the feature store.

Every error carries one human-readable line naming the offending view, column or
value, so the CLI can print ``str(exc)`` as is.
"""

from __future__ import annotations

from edgeloop_control.errors import EdgeloopError


class FeatureStoreError(EdgeloopError):
    """Base class for every feature-store failure."""


class InvalidInputError(FeatureStoreError, ValueError):
    """An argument or a piece of data is malformed (bad name, ref, TTL, column...)."""


class TimestampError(InvalidInputError):
    """A timestamp value cannot be read as an instant."""


class SchemaMismatchError(InvalidInputError):
    """Ingested data does not match the latest version of its view."""

    def __init__(self, message: str, *, problems: list[str], next_ref: str) -> None:
        super().__init__(message)
        self.problems = problems
        self.next_ref = next_ref

    def cli_message(self) -> str:
        """The same, in the command line's terms."""
        return f"{'; '.join(self.problems)}. Rerun with --new-version to create {self.next_ref}"


class MissingColumnError(InvalidInputError):
    """A column the operation needs (entity, timestamp, feature) is absent."""


class UnknownViewError(FeatureStoreError, LookupError):
    """No view, or no version of a view, by that name."""
