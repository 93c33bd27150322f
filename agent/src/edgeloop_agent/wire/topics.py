"""Every MQTT topic edgeloop uses, and the filters that subscribe to them.

The one place a topic is spelled: the agent publishes and subscribes with these,
the control node publishes desired state and artifacts, ingests device messages
and writes its site-bridge configuration with them. docs/protocol.md lists the
same topics for people; change one, change the other.

Layout under a prefix (``edgeloop`` by default):

* ``{prefix}/{device}/{leaf}`` for each leaf in :data:`DEVICE_LEAVES`;
* ``{prefix}/models/{name}/{version}``: retained ONNX bytes of one model version;
* ``{prefix}/broker/{site}/bridge``: Mosquitto's connection notice for a site bridge.
"""

from __future__ import annotations

from typing import Final

from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.names import check_device_id, id_problem

DEFAULT_PREFIX: Final = "edgeloop"

# The levels under {prefix}/{device}/; who publishes each is in docs/protocol.md.
DEVICE_LEAVES: Final = (
    "predict",
    "predictions",
    "feedback",
    "errors",
    "status",
    "desired",
    "telemetry",
    "samples",
    "labels",
    "events",
)


class Topics:
    """Topic names for one device under a prefix (``{prefix}/{device}/...``).

    The static methods build what spans devices: subscription filters and the
    artifact topics, so a caller holding only a prefix never writes a topic by hand.
    """

    def __init__(self, device_id: str, prefix: str = DEFAULT_PREFIX) -> None:
        # The one device-id rule of agent and control node (MQTT rules, reserved levels).
        check_device_id(device_id)
        validate_prefix(prefix)
        self.prefix = prefix
        self.device = device_id
        base = f"{prefix}/{device_id}"
        self.predict = f"{base}/predict"
        self.predictions = f"{base}/predictions"
        self.feedback = f"{base}/feedback"
        self.errors = f"{base}/errors"
        self.status = f"{base}/status"
        self.desired = f"{base}/desired"
        self.telemetry = f"{base}/telemetry"
        self.samples = f"{base}/samples"
        self.labels = f"{base}/labels"
        self.events = f"{base}/events"
        # A filter, not a topic: the subtree apps pick their response topics from
        # (the reply policy's default, and the broker ACL's grant to the device).
        self.replies = f"{base}/replies/#"

    @staticmethod
    def every_device(leaf: str, prefix: str = DEFAULT_PREFIX) -> str:
        """Subscription filter for ``leaf`` of every device: ``{prefix}/+/{leaf}``."""
        validate_prefix(prefix)
        _check_leaf(leaf)
        return f"{prefix}/+/{leaf}"

    @staticmethod
    def every_artifact(prefix: str = DEFAULT_PREFIX) -> str:
        """Subscription filter for every model artifact: ``{prefix}/models/#``."""
        validate_prefix(prefix)
        return f"{prefix}/models/#"

    @staticmethod
    def bridge_notification(site: str, prefix: str = DEFAULT_PREFIX) -> str:
        """Where Mosquitto says whether the bridge of ``site`` is connected (1 or 0)."""
        validate_prefix(prefix)
        problem = id_problem(site, reserved=False)
        if problem:
            raise ValueError(f"site name {json_text(site)} {problem}")
        return f"{prefix}/broker/{site}/bridge"

    @staticmethod
    def split(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
        """``(device, leaf)`` of ``{prefix}/{device}/{leaf}``, as written (unchecked).

        Raises ValueError when the topic is not two levels under the prefix; the
        caller checks the device id, since what a bad one means is its business.
        """
        head = prefix + "/"
        rest = topic[len(head) :] if topic.startswith(head) else ""
        device, _, leaf = rest.partition("/")
        if not rest or not leaf or "/" in leaf:
            raise ValueError(f"topic {json_text(topic[:60])} is not {prefix}/<device>/<leaf>")
        return device, leaf


def artifact_topic(prefix: str, name: str, version: str) -> str:
    """Retained topic carrying the raw ONNX bytes of one model version."""
    return f"{prefix}/models/{name}/{version}"


def validate_prefix(prefix: str) -> None:
    if not prefix or any(c in prefix for c in "+#\x00") or prefix.startswith("/"):
        raise ValueError(
            f"topic prefix {json_text(prefix)} must be non-empty without + # or a leading /"
        )
    if prefix.endswith("/"):
        raise ValueError(f"topic prefix {json_text(prefix)} must not end with /")


def _check_leaf(leaf: str) -> None:
    if leaf not in DEVICE_LEAVES:
        raise ValueError(f"topic leaf {json_text(leaf)} is not one of {', '.join(DEVICE_LEAVES)}")
