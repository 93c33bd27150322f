"""Exceptions raised by the feature store.

Every error carries one human-readable line naming the offending view, column or
value, so the CLI can print ``str(exc)`` as is.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class for every feature-store failure."""


class InvalidInputError(FeatureStoreError, ValueError):
    """An argument or a piece of data is malformed (bad name, ref, TTL, column...)."""


class TimestampError(InvalidInputError):
    """A timestamp value cannot be read as an instant."""


class SchemaMismatchError(InvalidInputError):
    """Ingested data does not match the latest version of its view."""


class MissingColumnError(InvalidInputError):
    """A column the operation needs (entity, timestamp, feature) is absent."""


class UnknownViewError(FeatureStoreError, LookupError):
    """No view, or no version of a view, by that name."""
