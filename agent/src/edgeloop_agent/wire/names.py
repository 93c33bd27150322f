"""What a string must be before it goes on the wire as a topic or into a topic.

Shared by the agent and the control node, so both sides refuse the same names.
The rules are the MQTT 5 specification's (1.5.4 UTF-8 strings, 4.7 topic names)
plus what Mosquitto enforces on top: a PUBLISH or SUBSCRIBE whose topic breaks
them makes the broker drop the connection, and a client that resends it on
reconnect is disconnected for ever. So a bad name must be refused before it is
ever handed to paho.
"""

from __future__ import annotations

import re
from typing import Final

from edgeloop_agent.wire.jsontext import json_kind, json_text

# MQTT's own limit is 65,535 bytes; nothing edgeloop publishes needs more than
# this, and a short limit keeps a hostile ``reply_to`` from costing memory.
MAX_TOPIC_BYTES: Final = 1024

# Device ids, model names and versions are topic levels and directory names:
# letters, digits, '_', '.', '-', starting with a letter or digit (so never
# '.', '..', '$SYS' or an empty level).
MAX_ID_LENGTH: Final = 128
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Levels directly under the topic prefix that are not devices.
RESERVED_IDS: Final = frozenset({"models", "control", "fleet", "broker", "all"})


class InvalidName(ValueError):
    """A topic, device id or model name that must not reach the broker."""


def utf8_problem(value: str) -> str | None:
    """Why ``value`` is not an MQTT 5 UTF-8 string Mosquitto accepts, or None."""
    for i, ch in enumerate(value):
        cp = ord(ch)
        if cp == 0:
            return f"contains U+0000 at position {i}"
        if 0xD800 <= cp <= 0xDFFF:
            return f"contains a lone surrogate U+{cp:04X} at position {i}"
        if cp <= 0x1F or 0x7F <= cp <= 0x9F:
            return f"contains control character U+{cp:04X} at position {i}"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return f"contains non-character U+{cp:04X} at position {i}"
    return None


def topic_problem(topic: object, *, max_bytes: int = MAX_TOPIC_BYTES) -> str | None:
    """Why ``topic`` cannot be published to, or None when it can."""
    if not isinstance(topic, str):
        return f"must be a string, got {type(topic).__name__}"
    if not topic:
        return "must not be empty"
    bad = utf8_problem(topic)
    if bad:
        return bad
    if "+" in topic or "#" in topic:
        return "must not contain the wildcards '+' or '#'"
    size = len(topic.encode("utf-8"))
    if size > max_bytes:
        return f"is {size} bytes long; the limit is {max_bytes}"
    return None


def check_topic(what: str, topic: object, *, max_bytes: int = MAX_TOPIC_BYTES) -> str:
    problem = topic_problem(topic, max_bytes=max_bytes)
    if problem:
        raise InvalidName(f"{what} {_show(topic)} {problem}")
    return topic  # type: ignore[return-value]


def id_problem(value: object, *, reserved: bool = True) -> str | None:
    """Why ``value`` cannot be a device id / model name / version, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
    # fullmatch: `$` with re.match accepts a trailing newline.
    if not _ID.fullmatch(value):
        return "must be letters, digits, '_', '.' or '-', starting with a letter or digit"
    if reserved and value.lower() in RESERVED_IDS:
        return f"is reserved (topic levels {', '.join(sorted(RESERVED_IDS))} are not devices)"
    return None


def check_device_id(value: object) -> str:
    problem = id_problem(value)
    if problem:
        raise InvalidName(f"device id {_show(value)} {problem}")
    return value  # type: ignore[return-value]


def check_model_name(what: str, value: object) -> str:
    """A model name or version (``what`` says which); no reserved words apply."""
    problem = id_problem(value, reserved=False)
    if problem:
        raise InvalidName(f"{what} {_show(value)} {problem}")
    return value  # type: ignore[return-value]


def _show(value: object) -> str:
    return json_text(value) if isinstance(value, str) else json_kind(value)
