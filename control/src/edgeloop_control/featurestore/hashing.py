"""Row keys and data hashes, computed column-wise on Arrow data.

Row keys make re-ingestion idempotent: a key is a 64-bit hash of the row's key
columns after coercion to the view schema, so ``21`` from a CSV and ``21.0`` from
Parquet give the same key. The hash is our own (splitmix64 over the values' bits,
salted by column name) rather than pandas' so that stored keys do not change
with a library upgrade; only string values go through ``pandas.util.hash_array``,
whose SipHash key has been fixed for years.

64 bits are enough because duplicates are only looked for within one event date
of one view (see :mod:`.dedup`): at ten million rows a day the chance of any
false duplicate that day is about 3e-6.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from edgeloop_control.featurestore.errors import InvalidInputError

_NULL_MARK = np.uint64(0x5BD1E9955BD1E995)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-distributed bijection on uint64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _salt(name: str) -> np.uint64:
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _value_bits(array: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """uint64 bits per value and the validity mask (``None`` when no nulls)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    valid = None
    if array.null_count:
        valid = array.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = array.to_numpy(zero_copy_only=False)
        bits = pd.util.hash_array(values, categorize=True)
        return bits.astype(np.uint64, copy=False), valid
    if pa.types.is_timestamp(kind):
        # Sub-microsecond digits are dropped: the store keeps microseconds.
        array = array.cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
    elif pa.types.is_date(kind):
        array = array.cast(pa.timestamp("us")).cast(pa.int64())
    elif pa.types.is_boolean(kind):
        array = array.cast(pa.int64())
    elif pa.types.is_floating(kind):
        array = array.cast(pa.float64())
        # Equal values must hash equally: fold -0.0 into 0.0 and every NaN into one.
        array = pc.if_else(pc.equal(array, 0.0), 0.0, array)
        array = pc.if_else(pc.is_nan(array), float("nan"), array)
    elif pa.types.is_unsigned_integer(kind):
        array = array.cast(pa.uint64())
    elif pa.types.is_integer(kind):
        array = array.cast(pa.int64())
    else:
        raise InvalidInputError(f"cannot hash values of type {kind}")
    filled = array.fill_null(0) if array.null_count else array
    bits = filled.to_numpy(zero_copy_only=False).view(np.uint64)
    return bits, valid


def row_keys(table: pa.Table, columns: Iterable[str]) -> np.ndarray:
    """One uint64 key per row over ``columns`` (order-independent in the column names)."""
    keys = np.zeros(table.num_rows, dtype=np.uint64)
    for name in sorted(columns):
        bits, valid = _value_bits(table.column(name))
        salt = _salt(name)
        column_hash = _mix(bits ^ salt)
        if valid is not None:
            column_hash[~valid] = _mix(np.asarray([salt ^ _NULL_MARK]))[0]
        keys = _mix(keys ^ column_hash)
    return keys


def _to_arrow(series: pd.Series) -> pa.Array:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        # Arrow's pandas bridge reads .values here, which pandas 3.1 deprecates.
        naive = series.dt.tz_convert(None).to_numpy()
        return pa.array(naive, from_pandas=True).cast(pa.timestamp("us", tz="UTC"), safe=False)
    values = series.to_numpy() if isinstance(series.dtype, np.dtype) else series.array
    return pa.array(values, from_pandas=True)


def data_hash(df: pd.DataFrame) -> str:
    """Content hash of a DataFrame: same rows and columns give the same hash.

    Row order and column order do not matter, duplicates do; column names and
    types do. Use it to record which data a model was trained on.
    """
    try:
        table = pa.table({str(name): _to_arrow(df[name]) for name in df.columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(f"cannot hash DataFrame: {exc}") from None
    keys = np.sort(row_keys(table, table.column_names))
    header = json.dumps(
        sorted([name, _type_name(table.schema.field(name).type)] for name in table.column_names),
        separators=(",", ":"),
    )
    digest = hashlib.sha256(header.encode("utf-8"))
    digest.update(keys.tobytes())
    return digest.hexdigest()


def _type_name(kind: pa.DataType) -> str:
    """Type label for the hash header: equal for the several Arrow spellings of one type."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_large_string(kind):
        kind = pa.string()
    return str(kind)
