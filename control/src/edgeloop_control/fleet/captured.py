"""Samples and labels that devices publish over MQTT, into the feature store.

The feature store knows records, views and versions; this module knows the
transport: which topic carries which kind of record and how the agent's outbox
envelope wraps it (:func:`.messages.open_envelope`, the one unwrapping the
daemon's telemetry ingest uses too). The daemon checks each message first
(:func:`.messages.parse_captured`) and stores a batch with :func:`store_captured`;
:func:`ingest_messages` takes raw ``(topic, payload)`` pairs for callers that
have no daemon in front of them (tests, replays, benchmarks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.featurestore.captured import RejectHandler, log_reject
from edgeloop_control.fleet.messages import (
    CAPTURED_KINDS,
    Captured,
    CapturedKind,
    open_envelope,
)

Counts = dict[str, tuple[int, int]]


def store_captured(
    store: FeatureStore,
    items: Sequence[Captured],
    *,
    on_reject: RejectHandler | None = None,
) -> Counts:
    """Store checked sample and label records; ``{"samples": (accepted, duplicates),
    "labels": (...)}``. ``on_reject(index, record, reason)`` names the item by its
    position in ``items``."""
    reject = on_reject if on_reject is not None else log_reject
    batches: dict[CapturedKind, tuple[list[Any], list[int]]] = {
        "samples": ([], []),
        "labels": ([], []),
    }
    for index, item in enumerate(items):
        records, indices = batches[item.kind]
        records.append(item.record)
        indices.append(index)
    return {kind: _ingest_kind(store, kind, *batches[kind], reject) for kind in CAPTURED_KINDS}


def ingest_messages(
    store: FeatureStore,
    messages: Iterable[tuple[str, bytes | str | Mapping[str, Any]]],
    *,
    on_reject: RejectHandler | None = None,
) -> Counts:
    """Store a batch of MQTT messages from ``{prefix}/{device}/samples`` and ``.../labels``.

    ``messages`` are ``(topic, payload)`` pairs as received; a payload is JSON
    text (or bytes, or an already decoded dict): an agent outbox envelope
    ``{"id", "device_id", "kind", "ts", "payload": record}`` or a bare record.
    Returns ``{"samples": (accepted, duplicates), "labels": (...)}``; messages
    on other topics or that are not JSON objects go to ``on_reject``.
    """
    reject = on_reject if on_reject is not None else log_reject
    batches: dict[CapturedKind, tuple[list[Any], list[int]]] = {
        "samples": ([], []),
        "labels": ([], []),
    }
    for index, (topic, payload) in enumerate(messages):
        kind = topic_kind(topic)
        if kind is None:
            reject(index, payload, f"topic {topic!r} carries neither samples nor labels")
            continue
        try:
            record = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
        except (UnicodeDecodeError, ValueError) as exc:
            reject(index, payload, f"payload is not JSON: {exc}")
            continue
        if isinstance(record, Mapping):
            record = open_envelope(record)[1]
        records, indices = batches[kind]
        records.append(record)
        indices.append(index)
    return {kind: _ingest_kind(store, kind, *batches[kind], reject) for kind in CAPTURED_KINDS}


def topic_kind(topic: Any) -> CapturedKind | None:
    """``"samples"`` or ``"labels"`` for a topic ending in that leaf, else None."""
    leaf = topic.rsplit("/", 1)[-1] if isinstance(topic, str) else ""
    if leaf == "samples":
        return "samples"
    if leaf == "labels":
        return "labels"
    return None


def _ingest_kind(
    store: FeatureStore,
    kind: CapturedKind,
    records: list[Any],
    indices: list[int],
    reject: Callable[[int, Any, str], None],
) -> tuple[int, int]:
    if not records:
        return 0, 0
    ingest = store.ingest_samples if kind == "samples" else store.ingest_labels
    # Report rejections by the message's position in the batch, not the
    # record's within its kind.
    return ingest(records, on_reject=lambda i, record, reason: reject(indices[i], record, reason))
