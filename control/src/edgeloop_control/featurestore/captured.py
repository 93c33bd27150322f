"""Samples and feedback labels captured by agents, as feature views.

Agents send the requests they served (a *sample*) and, later, the ground
truth for some of them (a *label*); taking them off MQTT is the fleet layer's
job (``fleet/captured.py``), this module sees records only. Both are at-least-once, so both
are de-duplicated: samples by ``sample_id``, labels by ``sample_id`` and ``ts``
(so that a corrected label, sent later, is kept). Samples of model ``m`` go to the view
``captured__m`` (entity ``device``, event time ``ts``); labels of every model
go to ``captured_labels`` (entity ``sample_id``), since a label record does
not say which model it is for.

A bad record is rejected with a reason (passed to ``on_reject``, logged by
default) and never stops the batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from edgeloop_control.featurestore.errors import FeatureStoreError, UnknownViewError
from edgeloop_control.featurestore.reads import ViewReader
from edgeloop_control.featurestore.refs import check_view_name
from edgeloop_control.featurestore.schema import RESERVED_PREFIX, ColumnType
from edgeloop_control.featurestore.writes import ViewWriter

log = logging.getLogger(__name__)

CAPTURED_PREFIX = "captured__"
LABELS_VIEW = "captured_labels"
SAMPLE_COLUMNS = ("sample_id", "device", "ts", "request_id", "version", "variant")
# Stored as JSON text: predictions and labels may be ints, floats, strings or
# lists depending on the model, and one column type must hold them all.
OUTCOME_COLUMNS = ("prediction", "label")
LABEL_COLUMNS = {
    "sample_id": "string",
    "device": "string",
    "request_id": "string",
    "ts": "float64",
    "label": "string",
}
RESERVED_FEATURES = frozenset({*SAMPLE_COLUMNS, *OUTCOME_COLUMNS, "model", "label_ts"})
_MAX_UNIX_SECONDS = 1e10

RejectHandler = Callable[[int, Any, str], None]


class _Rejected(Exception):
    """A record that cannot be stored; the message is the reason."""


def captured_view(model: str) -> str:
    return f"{CAPTURED_PREFIX}{model}"


def log_reject(index: int, record: Any, reason: str) -> None:
    """The default ``on_reject``: one warning line naming the record and the reason."""
    sample = record.get("sample_id") if isinstance(record, Mapping) else None
    log.warning("rejected record %d (sample_id=%r): %s", index, sample, reason)


class CapturedSamples(ViewWriter, ViewReader):
    """A feature store that also keeps agents' captured samples and feedback labels."""

    def ingest_samples(
        self, records: Iterable[Any], *, on_reject: RejectHandler | None = None
    ) -> tuple[int, int]:
        """Store agents' captured samples; see :func:`ingest_samples`."""
        return ingest_samples(self, records, on_reject=on_reject)

    def ingest_labels(
        self, records: Iterable[Any], *, on_reject: RejectHandler | None = None
    ) -> tuple[int, int]:
        """Store feedback labels; see :func:`ingest_labels`."""
        return ingest_labels(self, records, on_reject=on_reject)

    def captured_training_frame(
        self, model: str, since: Any = None, until: Any = None
    ) -> pd.DataFrame:
        """Labelled captured samples of ``model``; see :func:`captured_training_frame`."""
        return captured_training_frame(self, model, since=since, until=until)


# -- samples -------------------------------------------------------------------------


def ingest_samples(
    store: CapturedSamples,
    records: Iterable[Any],
    *,
    on_reject: RejectHandler | None = None,
) -> tuple[int, int]:
    """Store captured samples; return ``(accepted, duplicates)``.

    A record is a dict with ``sample_id``, ``device``, ``ts`` (unix seconds or
    ISO 8601), ``model``, ``features`` (name -> number, string or null) and
    optionally ``request_id``, ``version``, ``variant``, ``prediction``,
    ``label``. ``on_reject(index, record, reason)`` is called for each record
    that cannot be stored.
    """
    reject = on_reject if on_reject is not None else log_reject
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[int, dict[str, Any], Any]]] = {}
    for index, record in enumerate(records):
        try:
            model, row = _sample_row(record)
        except _Rejected as exc:
            reject(index, record, str(exc))
            continue
        names = tuple(sorted(row["features"]))
        groups.setdefault((model, names), []).append((index, row, record))

    accepted = duplicates = 0
    for (model, names), rows in groups.items():
        view = captured_view(model)
        types = _feature_types(store, view, names, [row["features"] for _, row, _ in rows])
        table_rows = []
        for index, row, record in rows:
            try:
                table_rows.append(_typed_row(row, types))
            except _Rejected as exc:
                reject(index, record, str(exc))
        if not table_rows:
            continue
        frame = _sample_frame(table_rows, names, types)
        try:
            result = store._ingest_routed(
                frame,
                view,
                "captured samples",
                entity=["device"],
                timestamp="ts",
                key=["sample_id"],
            )
        except FeatureStoreError as exc:
            for index, _, record in rows:
                reject(index, record, f"cannot store in {view}: {exc}")
            continue
        accepted += result.accepted
        duplicates += result.duplicates
    return accepted, duplicates


def _sample_row(record: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(record, Mapping):
        raise _Rejected(f"expected a JSON object, got {type(record).__name__}")
    model = record.get("model")
    if not isinstance(model, str) or not model:
        raise _Rejected(f"'model' must be a non-empty string, got {model!r}")
    try:
        check_view_name(captured_view(model))
    except FeatureStoreError:
        raise _Rejected(f"model name {model!r} cannot name a view") from None
    features = record.get("features")
    if not isinstance(features, Mapping) or not features:
        raise _Rejected(f"'features' must be a non-empty object, got {features!r}")
    for name, value in features.items():
        if not isinstance(name, str) or not name or name.startswith(RESERVED_PREFIX):
            raise _Rejected(f"invalid feature name {name!r}")
        if name in RESERVED_FEATURES:
            raise _Rejected(f"feature name {name!r} is reserved for sample metadata")
        if value is not None and not isinstance(value, (str, int, float)):
            raise _Rejected(f"feature {name!r} must be a number, string or null, got {value!r}")
    row = {
        "sample_id": _required_text(record, "sample_id"),
        "device": _required_text(record, "device"),
        "ts": _unix_seconds(record.get("ts")),
        "request_id": _optional_text(record, "request_id"),
        "version": _optional_text(record, "version"),
        "variant": _optional_text(record, "variant"),
        "prediction": _json_text(record, "prediction"),
        "label": _json_text(record, "label"),
        "features": dict(features),
    }
    return model, row


def _feature_types(
    store: CapturedSamples, view: str, names: tuple[str, ...], rows: list[Mapping[str, Any]]
) -> dict[str, ColumnType]:
    """Column type per feature: the stored one when the batch fits it, else the batch's."""
    stored: dict[str, ColumnType] = {}
    try:
        for version in store.versions(view):
            stored.update(version.types)  # later versions override earlier ones
    except UnknownViewError:
        pass
    types: dict[str, ColumnType] = {}
    for name in names:
        values = [row[name] for row in rows if row[name] is not None]
        has_text = any(isinstance(v, str) for v in values)
        has_number = any(not isinstance(v, str) for v in values)
        previous = stored.get(name)
        if previous == "string" and (has_text or not has_number):
            types[name] = "string"
        elif previous == "float64" and (has_number or not has_text):
            types[name] = "float64"
        else:
            types[name] = "string" if has_text else "float64"
    return types


def _typed_row(row: dict[str, Any], types: Mapping[str, ColumnType]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "features"}
    for name, value in row["features"].items():
        if types[name] == "string":
            if value is not None and not isinstance(value, str):
                raise _Rejected(f"feature {name!r} is a string feature, got {value!r}")
            out[name] = value
        else:
            if isinstance(value, str):
                raise _Rejected(f"feature {name!r} is a numeric feature, got {value!r}")
            try:
                number = np.nan if value is None else float(value)
            except OverflowError:  # an int beyond float range, e.g. 10**400
                raise _Rejected(f"feature {name!r} is out of range: {value!r}") from None
            if not (number != number or math.isfinite(number)):
                raise _Rejected(f"feature {name!r} must be finite, got {value!r}")
            out[name] = number
    return out


def _sample_frame(
    rows: list[dict[str, Any]], names: tuple[str, ...], types: Mapping[str, ColumnType]
) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}
    for name in (*SAMPLE_COLUMNS, *names, *OUTCOME_COLUMNS):
        values = [row[name] for row in rows]
        if name == "ts" or (name in names and types[name] == "float64"):
            columns[name] = pd.Series(values, dtype="float64")
        else:
            # An explicit string dtype keeps an all-null batch typed as string.
            columns[name] = pd.Series(values, dtype="string")
    return pd.DataFrame(columns)


# -- labels --------------------------------------------------------------------------


def ingest_labels(
    store: CapturedSamples,
    records: Iterable[Any],
    *,
    on_reject: RejectHandler | None = None,
) -> tuple[int, int]:
    """Store feedback labels; return ``(accepted, duplicates)``.

    A record is a dict with ``sample_id``, ``ts`` and a non-null ``label``, and
    optionally ``device`` and ``request_id``. A record with the ``sample_id``
    and ``ts`` of a stored one is a duplicate (a re-delivery); a label with a
    later ``ts`` is a correction, and the latest label of a sample is the one
    :func:`captured_training_frame` uses.
    """
    reject = on_reject if on_reject is not None else log_reject
    rows: list[dict[str, Any]] = []
    originals: list[tuple[int, Any]] = []
    for index, record in enumerate(records):
        try:
            if not isinstance(record, Mapping):
                raise _Rejected(f"expected a JSON object, got {type(record).__name__}")
            if record.get("label") is None:
                raise _Rejected("'label' is missing or null")
            rows.append(
                {
                    "sample_id": _required_text(record, "sample_id"),
                    "device": _optional_text(record, "device"),
                    "request_id": _optional_text(record, "request_id"),
                    "ts": _unix_seconds(record.get("ts")),
                    "label": _json_text(record, "label"),
                }
            )
            originals.append((index, record))
        except _Rejected as exc:
            reject(index, record, str(exc))
    if not rows:
        return 0, 0
    frame = pd.DataFrame(
        {
            name: pd.Series([row[name] for row in rows], dtype=dtype)
            for name, dtype in LABEL_COLUMNS.items()
        }
    )
    try:
        result = store._ingest_routed(
            frame,
            LABELS_VIEW,
            "captured labels",
            entity=["sample_id"],
            timestamp="ts",
            key=["sample_id", "ts"],
        )
    except FeatureStoreError as exc:
        for index, record in originals:
            reject(index, record, f"cannot store in {LABELS_VIEW}: {exc}")
        return 0, 0
    return result.accepted, result.duplicates


# -- training frame ------------------------------------------------------------------


def captured_training_frame(
    store: CapturedSamples, model: str, *, since: Any = None, until: Any = None
) -> pd.DataFrame:
    """Captured samples of ``model`` in ``[since, until)`` that have a label.

    The label is the latest feedback label of the sample, or the label the
    sample carried itself. Columns: ``sample_id, device, ts, request_id,
    version, variant``, the features (union over the view's versions; NaN where
    a version lacked one), ``prediction``, ``label`` (decoded from JSON) and
    ``label_ts`` (None for labels carried by the sample). Sorted by ``ts``.
    """
    view = captured_view(model)
    try:
        versions = store.versions(view)
    except UnknownViewError:
        raise UnknownViewError(f"no captured samples for model {model!r} (view {view})") from None
    parts = [store.read(v.ref, start=since, end=until) for v in versions]
    parts = [part for part in parts if not part.empty]
    feature_names: list[str] = []
    for version in versions:
        feature_names += [
            n for n in version.features if n not in RESERVED_FEATURES and n not in feature_names
        ]
    columns = [*SAMPLE_COLUMNS, *feature_names, *OUTCOME_COLUMNS, "label_ts"]
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    samples = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    feedback = _latest_labels(store, samples["sample_id"])
    samples = samples.merge(feedback, on="sample_id", how="left")
    from_feedback = samples["feedback"].notna()
    samples["label"] = samples["feedback"].where(from_feedback, samples["label"])
    samples = samples[samples["label"].notna()].copy()
    samples["label_ts"] = samples["label_ts"].where(from_feedback[samples.index])
    for name in OUTCOME_COLUMNS:
        samples[name] = _decode_json(samples[name])
    for name in feature_names:
        if name not in samples.columns:
            samples[name] = np.nan
    samples = samples.sort_values(["ts", "sample_id"], kind="stable", ignore_index=True)
    return samples[columns]


def _latest_labels(store: CapturedSamples, sample_ids: pd.Series) -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            "sample_id": pd.Series(dtype="str"),
            "feedback": pd.Series(dtype="str"),
            "label_ts": pd.Series(dtype="datetime64[us, UTC]"),
        }
    )
    try:
        versions = store.versions(LABELS_VIEW)
    except UnknownViewError:
        return empty
    wanted = set(sample_ids.tolist())
    parts = []
    for version in versions:
        part = store.read(version.ref, columns=["label"])
        parts.append(part[part["sample_id"].isin(wanted)][["sample_id", "ts", "label"]])
    labels = pd.concat(parts, ignore_index=True)
    if labels.empty:
        return empty
    labels = labels.sort_values("ts", kind="stable").drop_duplicates("sample_id", keep="last")
    labels = labels.rename(columns={"label": "feedback", "ts": "label_ts"})
    return labels.astype({"sample_id": "str", "feedback": "str"})


def _decode_json(values: pd.Series) -> pd.Series:
    # Build from Python objects so pandas infers int64 for class ids, float64 for
    # regression targets and object for strings or lists.
    decoded = [json.loads(v) if isinstance(v, str) else None for v in values]
    return pd.Series(decoded, index=values.index)


# -- field checks --------------------------------------------------------------------


def _required_text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise _Rejected(f"{name!r} must be a non-empty string, got {value!r}")
    return value


def _optional_text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise _Rejected(f"{name!r} must be a string or null, got {value!r}")
    return value


def _json_text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise _Rejected(f"{name!r} is not JSON-serialisable: {value!r}") from None


def _unix_seconds(value: Any) -> float:
    """Unix seconds of a record's ``ts``: a number, an ISO 8601 string or a datetime."""
    if isinstance(value, bool) or value is None:
        raise _Rejected(f"'ts' must be unix seconds or an ISO 8601 string, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or abs(seconds) >= _MAX_UNIX_SECONDS:
            raise _Rejected(f"'ts' is out of range (unix seconds expected): {value!r}")
        return seconds
    if isinstance(value, (str, dt.datetime)):
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise _Rejected(f"'ts' is not a timestamp: {value!r}") from None
        if stamp is pd.NaT:
            raise _Rejected(f"'ts' is not a timestamp: {value!r}")
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return float(stamp.timestamp())
    raise _Rejected(f"'ts' must be unix seconds or an ISO 8601 string, got {value!r}")
