"""The outbox envelope: how every report, sample and label a device sends is wrapped.

``{"id", "device_id", "kind", "ts", "payload"}``: ``id`` is globally unique
(``device:boot:seq``), so the control node stores a message redelivered after a
reconnect only once; ``kind`` is the outbox kind (telemetry, samples, labels, ...);
``ts`` is when the device queued it (unix seconds); ``payload`` is the record itself.
The agent writes it with :func:`encode_envelope`; the control node tells an envelope
from a bare record (older agents, hand-written test messages) with :func:`is_envelope`
and takes the record out with :func:`envelope_record`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

FIELDS: Final = ("id", "device_id", "kind", "ts", "payload")


def encode_envelope(msg_id: str, device_id: str, kind: str, ts: float, payload_json: str) -> bytes:
    """The envelope's UTF-8 JSON, around a payload already serialised as strict JSON.

    Built by concatenation so the payload is serialised once (the outbox checks it on
    append); the bytes equal ``json.dumps`` of the whole envelope with ``(",", ":")``.
    """
    return (
        '{"id":'
        + json.dumps(msg_id)
        + ',"device_id":'
        + json.dumps(device_id)
        + ',"kind":'
        + json.dumps(kind)
        + ',"ts":'
        + repr(float(ts))
        + ',"payload":'
        + payload_json
        + "}"
    ).encode()


def is_envelope(doc: object) -> bool:
    """Whether a decoded message is an envelope rather than a bare record."""
    return isinstance(doc, Mapping) and "payload" in doc and "kind" in doc


def envelope_record(doc: Any) -> Any:
    """The record a message carries: an envelope's payload, or the message itself."""
    return doc["payload"] if is_envelope(doc) else doc
