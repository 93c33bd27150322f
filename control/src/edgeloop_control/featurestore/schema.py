"""Typed view schemas: inference from a DataFrame, fingerprints, diffs, coercion to Arrow.

A view's schema is its columns (name and one of five logical types), its entity
key columns and its event-timestamp column. The fingerprint hashes exactly that,
independent of column order, so the same CSV with reordered columns is the same
schema while a renamed or retyped column is a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

from edgeloop_control.featurestore.errors import InvalidInputError, MissingColumnError
from edgeloop_control.featurestore.timestamps import TIMESTAMP_DTYPE, to_utc

ColumnType = Literal["int64", "float64", "bool", "string", "timestamp"]
COLUMN_TYPES: tuple[str, ...] = get_args(ColumnType)
ENTITY_TYPES = ("int64", "string")

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}

# Columns the store adds to every Parquet file; user columns may not start with "__".
RESERVED_PREFIX = "__"
KEY_COLUMN = "__key"  # uint64 idempotency key of the row
SEQ_COLUMN = "__seq"  # ingest sequence number: later ingests win ties
ROW_ID_COLUMN = "__row_id"  # synthetic identity for views without an entity


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType


@dataclass(frozen=True)
class ViewSchema:
    columns: tuple[Column, ...]
    entity: tuple[str, ...]
    timestamp: str

    def __post_init__(self) -> None:
        types = self.types
        if len(types) != len(self.columns):
            raise InvalidInputError("schema has duplicate column names")
        for name in (*self.entity, self.timestamp):
            if name not in types:
                raise MissingColumnError(f"schema lacks column {name!r}")
        if types[self.timestamp] != "timestamp":
            raise InvalidInputError(f"timestamp column {self.timestamp!r} must have type timestamp")
        for name in self.entity:
            if types[name] not in ENTITY_TYPES:
                raise InvalidInputError(
                    f"entity column {name!r} has type {types[name]}; entity keys must be "
                    "integer or string"
                )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def types(self) -> dict[str, ColumnType]:
        return {c.name: c.type for c in self.columns}

    @property
    def features(self) -> list[str]:
        """Columns that are neither entity keys nor the event timestamp."""
        skip = {*self.entity, self.timestamp}
        return [c.name for c in self.columns if c.name not in skip]

    def fingerprint(self) -> str:
        canonical = {
            "columns": sorted([c.name, c.type] for c in self.columns),
            "entity": list(self.entity),
            "timestamp": self.timestamp,
        }
        text = json.dumps(canonical, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def arrow_schema(self, *, row_id: bool = False) -> pa.Schema:
        """The Parquet file schema: user columns, then the hidden bookkeeping columns."""
        fields = [pa.field(c.name, ARROW_TYPES[c.type]) for c in self.columns]
        fields += [pa.field(KEY_COLUMN, pa.uint64()), pa.field(SEQ_COLUMN, pa.int64())]
        if row_id:
            fields.append(pa.field(ROW_ID_COLUMN, pa.int64()))
        return pa.schema(fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [[c.name, c.type] for c in self.columns],
            "entity": list(self.entity),
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ViewSchema:
        return cls(
            columns=tuple(Column(str(n), cast(ColumnType, t)) for n, t in data["columns"]),
            entity=tuple(data["entity"]),
            timestamp=str(data["timestamp"]),
        )


def check_column_names(names: list[Any]) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"column names must be non-empty strings, got {name!r}")
        if name.startswith(RESERVED_PREFIX):
            raise InvalidInputError(
                f"column {name!r} uses the reserved prefix {RESERVED_PREFIX!r}; rename it"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInputError(f"column {name!r} appears more than once")
        seen.add(name)


def infer_types(df: pd.DataFrame) -> dict[str, ColumnType | None]:
    """Logical type per column; ``None`` for a column with no non-null value."""
    check_column_names(list(df.columns))
    return {str(name): _infer_column(df[name], str(name)) for name in df.columns}


def _infer_column(series: pd.Series, name: str) -> ColumnType | None:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        series = series.astype(dtype.categories.dtype)
        dtype = series.dtype
    if isinstance(dtype, pd.StringDtype):
        return "string"  # an explicit string dtype says so even when every value is missing
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int64"
    if pd.api.types.is_float_dtype(dtype):
        return "float64" if series.notna().any() else None
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    kind = pd.api.types.infer_dtype(series, skipna=True)
    by_kind: dict[str, ColumnType | None] = {
        "string": "string",
        "integer": "int64",
        "floating": "float64",
        "mixed-integer-float": "float64",
        "decimal": "float64",
        "boolean": "bool",
        "datetime": "timestamp",
        "datetime64": "timestamp",
        "date": "timestamp",
        "empty": None,
    }
    if kind not in by_kind:
        example = series.dropna().iloc[0] if series.notna().any() else None
        raise InvalidInputError(
            f"column {name!r} has values of unsupported or mixed types ({kind}, e.g. "
            f"{example!r}); supported: {', '.join(COLUMN_TYPES)}"
        )
    return by_kind[kind]


def fits(got: ColumnType | None, want: ColumnType) -> bool:
    """Can data inferred as ``got`` go into a column of type ``want`` without loss?"""
    # int -> float is allowed because CSV readers type "21" and "21.5" differently.
    return got is None or got == want or (got == "int64" and want == "float64")


def diff(expected: ViewSchema, incoming: Mapping[str, ColumnType | None]) -> list[str]:
    """Human-readable differences between a stored schema and incoming column types."""
    types = expected.types
    problems = []
    missing = [n for n in expected.names if n not in incoming]
    extra = [n for n in incoming if n not in types]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"new columns {extra}")
    changed = [
        f"{n}: {types[n]} -> {incoming[n]}"
        for n in expected.names
        if n in incoming and not fits(incoming[n], types[n])
    ]
    if changed:
        problems.append(f"changed types {changed}")
    return problems


def to_arrow_columns(df: pd.DataFrame, schema: ViewSchema) -> dict[str, pa.Array]:
    """Coerce ``df``'s columns to the schema's Arrow types, with clear errors."""
    out: dict[str, pa.Array] = {}
    for column in schema.columns:
        series = df[column.name]
        try:
            out[column.name] = _to_arrow(series, column)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(
                f"column {column.name!r} cannot be stored as {column.type}: {exc}"
            ) from None
    return out


def _to_arrow(series: pd.Series, column: Column) -> pa.Array:
    arrow_type = ARROW_TYPES[column.type]
    if not series.notna().any():
        return pa.nulls(len(series), arrow_type)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.dtype.categories.dtype)
    if column.type == "timestamp":
        present = series.notna()
        if present.all():
            return _timestamp_array(to_utc(series, column.name))
        # Only the event timestamp must be complete; other timestamp columns may have gaps.
        full = pd.Series(pd.NaT, index=series.index, dtype=TIMESTAMP_DTYPE)
        full[present] = to_utc(series[present], column.name)
        return _timestamp_array(full)
    if column.type == "float64":
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        return pa.array(values, type=arrow_type, from_pandas=True)
    return pa.array(series, type=arrow_type, from_pandas=True)


def _timestamp_array(series: pd.Series) -> pa.Array:
    """A UTC ``datetime64[us]`` series as Arrow, NaT as null."""
    naive = series.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    return pa.array(naive, type=pa.timestamp("us"), from_pandas=True).cast(ARROW_TYPES["timestamp"])
