"""The online side of feature views: materialise the latest row per entity, read it by key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from edgeloop_control.featurestore.catalog import ViewVersion
from edgeloop_control.featurestore.errors import InvalidInputError
from edgeloop_control.featurestore.reads import ViewReader
from edgeloop_control.featurestore.refs import ViewRef
from edgeloop_control.featurestore.schema import SEQ_COLUMN
from edgeloop_control.featurestore.timestamps import parse_instant, to_micros


class OnlineViews(ViewReader):
    """Copies the newest row of each entity into the online store and serves it."""

    def materialize(self, ref: str | ViewRef, start: Any = None, end: Any = None) -> int:
        """Copy the latest row per entity with event time in ``[start, end)`` online.

        Returns the number of entities whose online row changed. Works one event
        date at a time, newest first, to bound memory: older dates then only
        fill in entities the newer ones did not have.
        """
        found = self.view(ref)
        _require_entity(found, "materialised")
        lo, hi = parse_instant(start, "start"), parse_instant(end, "end")
        entries = self._catalog.files(
            found.name,
            found.version,
            start_us=None if lo is None else to_micros(lo),
            end_us=None if hi is None else to_micros(hi),
        )
        columns = [*found.entity, found.timestamp, SEQ_COLUMN, *found.features]
        self._online.ensure(found)
        written = 0
        for day in sorted({e.day for e in entries}, reverse=True):
            frame = self._scan(found, columns, lo, hi, days=[day])
            newest = frame.sort_values([found.timestamp, SEQ_COLUMN], kind="stable")
            newest = newest.drop_duplicates(list(found.entity), keep="last")
            written += self._online.upsert(found, newest)
        return written

    def get_online(self, ref: str | ViewRef, keys: Sequence[Any] | Any) -> list[dict[str, Any]]:
        """Latest materialised values for each entity key, in key order.

        A key is a scalar (single entity column), a tuple in entity-column order
        or a mapping. Each result holds the entity columns, the event timestamp
        and the features; for an entity never materialised, or whose row is older
        than the view's TTL, the timestamp and features are ``None``.
        """
        found = self.view(ref)
        _require_entity(found, "read online")
        if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
            keys = [keys]
        normalized = [_entity_key(found, key) for key in keys]
        rows = self._online.get(found, normalized)
        now = pd.Timestamp.now(tz="UTC")
        out = []
        for key, row in zip(normalized, rows, strict=True):
            record: dict[str, Any] = dict(zip(found.entity, key, strict=True))
            if row is not None and found.ttl is not None and now - row[found.timestamp] > found.ttl:
                row = None
            if row is None:
                record[found.timestamp] = None
                record.update({name: None for name in found.features})
            else:
                record.update(row)
            out.append(record)
        return out

    def online_misses(self, ref: str | ViewRef, keys: Sequence[Any] | Any) -> dict[str, int]:
        """Why keys have no online values: counts of ``expired`` (older than the TTL),
        ``unknown`` (not in the materialised rows) and ``not_materialised`` (the view
        never was)."""
        found = self.view(ref)
        _require_entity(found, "read online")
        if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
            keys = [keys]
        normalized = [_entity_key(found, key) for key in keys]
        if not self._online.has_table(found):
            return {"not_materialised": len(normalized)}
        now = pd.Timestamp.now(tz="UTC")
        out = {"expired": 0, "unknown": 0}
        for row in self._online.get(found, normalized):
            if row is None:
                out["unknown"] += 1
            elif found.ttl is not None and now - row[found.timestamp] > found.ttl:
                out["expired"] += 1
        return out


def _require_entity(found: ViewVersion, action: str) -> None:
    if not found.entity:
        raise InvalidInputError(f"view {found.ref} has no entity columns, so it cannot be {action}")


def _entity_key(found: ViewVersion, key: Any) -> tuple[Any, ...]:
    entity = found.entity
    if isinstance(key, Mapping):
        missing = [name for name in entity if name not in key]
        if missing:
            raise InvalidInputError(f"key {key!r} lacks entity column(s) {missing} of {found.ref}")
        values = [key[name] for name in entity]
    elif isinstance(key, (tuple, list)):
        values = list(key)
    else:
        values = [key]
    if len(values) != len(entity):
        raise InvalidInputError(
            f"key {key!r} has {len(values)} value(s) but {found.ref} is keyed by {list(entity)}"
        )
    out: list[Any] = []
    for name, value in zip(entity, values, strict=True):
        if found.types[name] == "int64":
            try:
                as_int = int(value)
                if isinstance(value, bool) or as_int != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"entity {name!r} of {found.ref} is an integer, got {value!r}"
                ) from None
            out.append(as_int)
        elif isinstance(value, str):
            out.append(value)
        else:
            raise InvalidInputError(f"entity {name!r} of {found.ref} is a string, got {value!r}")
    return tuple(out)
