"""Where the agent may send a reply: the MQTT 5 topic rules plus an operator policy.

A request names its own reply topic (MQTT 5 Response Topic, or ``reply_to`` in the
payload for MQTT 3.1.1 apps), so without a check an app that may only write to
``{prefix}/+/predict`` could make the device publish on its own ``desired``,
``status`` or ``telemetry``, on another device's topics or on the model
artifacts, with the device's credentials; and a topic Mosquitto finds malformed
(a control character, a lone surrogate) makes the broker drop the agent's
connection, paho resend it, the broker drop it again: the device goes offline
for good. Every reply topic therefore passes two checks before paho sees it:

1. ``names.topic_problem``: the MQTT 5 rules (UTF-8, no U+0000, no control
   characters, no surrogates, no wildcards, a length limit);
2. the policy: never a ``$`` topic and never one of the product's own topics
   (any device's predict, feedback, desired, status, telemetry, samples, labels,
   events; ``{prefix}/models/...``), whatever the configuration says; under
   ``{prefix}/`` only what the operator's topic filters allow (by default this
   device's ``predictions``, ``errors`` and ``replies/#``, the subtree the shipped
   ACL gives apps); outside ``{prefix}/`` any other topic, unless the operator
   turns that off (``reply_outside_prefix = false``).

Verdicts are cached per distinct topic in a bounded dict: apps reuse a handful of
reply topics, so the per-request cost is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.names import MAX_TOPIC_BYTES, topic_problem

# The topic filters allowed under the prefix unless the operator sets others.
# ``{prefix}`` and ``{device}`` are replaced by this agent's own values.
DEFAULT_REPLY_TOPICS: Final = (
    "{prefix}/{device}/predictions",
    "{prefix}/{device}/errors",
    "{prefix}/{device}/replies/#",
)

# Leaves under {prefix}/{any device}/ that carry the product's own traffic: a reply
# there would be read as a request, a label, a desired state or a report.
PRODUCT_LEAVES: Final = frozenset(
    {"predict", "feedback", "desired", "status", "telemetry", "samples", "labels", "events"}
)

CACHE_SIZE: Final = 1024

# Error codes (kept in step with protocol.Code, which re-exports them).
INVALID_REPLY_TO: Final = "invalid_reply_to"
REPLY_TO_REFUSED: Final = "reply_to_refused"


class PolicyError(ValueError):
    """The reply-policy settings are invalid; the message names the setting."""


def _filter_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not an MQTT topic filter, or None."""
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _matches(levels: list[str], topic_levels: list[str]) -> bool:
    """MQTT topic-filter matching (levels already split)."""
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(levels) == len(topic_levels)


class ReplyPolicy:
    """Decides whether the agent may publish a reply on a topic."""

    def __init__(
        self,
        *,
        prefix: str,
        device: str,
        allowed: Iterable[str] = DEFAULT_REPLY_TOPICS,
        outside_prefix: bool = True,
        max_bytes: int = MAX_TOPIC_BYTES,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.prefix = prefix
        self.device = device
        self.outside_prefix = outside_prefix
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self._prefix_levels = prefix.split("/")
        self.allowed: list[str] = []
        self._filters: list[list[str]] = []
        for raw in allowed:
            pattern = self._expand(raw)
            self.allowed.append(pattern)
            self._filters.append(pattern.split("/"))
        self._cache: dict[str, tuple[str, str] | None] = {}

    def _expand(self, raw: object) -> str:
        if not isinstance(raw, str) or not raw:
            raise PolicyError(
                f"reply_topics: each entry must be a non-empty string, got {json_text(raw)}"
            )
        try:
            pattern = raw.format(prefix=self.prefix, device=self.device)
        except (KeyError, IndexError, ValueError) as exc:
            raise PolicyError(
                f"reply_topics: {json_text(raw)} may only use the placeholders {{prefix}} and "
                f"{{device}} ({exc})"
            ) from None
        # The pattern goes through the topic rules with its wildcards masked.
        problem = topic_problem(pattern.replace("+", "x").replace("#", "x"))
        problem = problem or _filter_problem(pattern)
        if problem is None and not pattern.startswith(self.prefix + "/"):
            problem = (
                f"must lie under the topic prefix {json_text(self.prefix)}/ (topics outside it are "
                "governed by reply_outside_prefix)"
            )
        if problem:
            raise PolicyError(f"reply_topics: {json_text(raw)} {problem}")
        return pattern

    def problem(self, topic: str) -> tuple[str, str] | None:
        """``(code, message)`` when the agent must not reply on ``topic``, else None."""
        cache = self._cache
        try:
            return cache[topic]
        except KeyError:
            pass
        except TypeError:  # not hashable: not a string either
            return INVALID_REPLY_TO, f"reply topic must be a string, got {type(topic).__name__}"
        verdict = self._decide(topic)
        # Only sane-sized strings are remembered: a flood of distinct long topics
        # costs at most cache_size entries of max_bytes each.
        if isinstance(topic, str) and len(topic) <= self.max_bytes:
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]  # oldest first
            cache[topic] = verdict
        return verdict

    def _decide(self, topic: str) -> tuple[str, str] | None:
        bad = topic_problem(topic, max_bytes=self.max_bytes)
        if bad:
            return INVALID_REPLY_TO, f"reply topic {_show(topic)} {bad}"
        if topic.startswith("$"):
            return REPLY_TO_REFUSED, (
                f"reply topic {_show(topic)} is a $-topic (reserved for the broker)"
            )
        levels = topic.split("/")
        n = len(self._prefix_levels)
        if levels[:n] != self._prefix_levels:
            if self.outside_prefix:
                return None
            return REPLY_TO_REFUSED, (
                f"reply topic {_show(topic)} is outside {self.prefix}/ and this device "
                "only replies under it (reply_outside_prefix = false)"
            )
        rest = levels[n:]
        if rest and rest[0] == "models":
            return REPLY_TO_REFUSED, f"reply topic {_show(topic)} is a model artifact topic"
        if len(rest) == 2 and rest[1] in PRODUCT_LEAVES:
            return REPLY_TO_REFUSED, (
                f"reply topic {_show(topic)} carries edgeloop's own {rest[1]} traffic"
            )
        for f in self._filters:
            if _matches(f, levels):
                return None
        return REPLY_TO_REFUSED, (
            f"reply topic {_show(topic)} is under {self.prefix}/ but not one this device "
            f"replies on (allowed: {', '.join(self.allowed) or 'none'})"
        )


def _show(value: str) -> str:
    return json_text(value)
