"""The agent package a desired-state document may name: the agent updates itself.

A signed desired document may carry an ``agent`` entry::

    "agent": {"package": "edgeloop-agent", "version": "0.1.0+upgrade1",
              "architecture": "amd64", "sha256": "...", "size": 52428800,
              "chunk_size": 4194304}

The entry is covered by the document's signature, and it pins the package's
sha256 and size: that is the whole trust chain (control key -> document ->
sha256 -> .deb). The bytes travel as retained MQTT messages of ``chunk_size``
bytes each on :func:`chunk_topic` (the last one shorter): the broker's
``message_size_limit`` (40 MiB in the shipped configuration) is smaller than a
package, and the agent never holds more than one chunk in memory.

An agent older than this module ignores the key (``DesiredState.from_dict``
reads only the keys it knows), so a newer document never breaks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from edgeloop_agent.wire.jsontext import json_text

PACKAGE: Final = "edgeloop-agent"
# Debian's version syntax (epoch-less), bounded: it goes into file names and status.
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~-]{0,63}")
_ARCH = re.compile(r"[a-z0-9]{1,16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A package of the agent is ~50 MB (its wheels); four times that is a mistake or an attack.
MAX_PACKAGE_BYTES: Final = 256 * 1024 * 1024
DEFAULT_CHUNK_BYTES: Final = 4 * 1024 * 1024
MIN_CHUNK_BYTES: Final = 1024
# Under the agent's smallest MQTT maximum packet size (its max_artifact_bytes default).
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024


class AgentPackageError(ValueError):
    """An ``agent`` entry the agent refuses."""


@dataclass(frozen=True)
class AgentPackage:
    version: str
    architecture: str
    sha256: str
    size: int
    chunk_size: int = DEFAULT_CHUNK_BYTES

    @property
    def chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    @property
    def filename(self) -> str:
        return f"{PACKAGE}_{self.version}_{self.architecture}.deb"

    def chunk_length(self, index: int) -> int:
        """Bytes chunk ``index`` must have (the last one holds the remainder)."""
        if index < self.chunks - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (self.chunks - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": PACKAGE,
            "version": self.version,
            "architecture": self.architecture,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
        }

    @classmethod
    def from_dict(cls, item: Any) -> AgentPackage:
        if not isinstance(item, dict):
            raise AgentPackageError("'agent' must be an object")
        if item.get("package", PACKAGE) != PACKAGE:
            raise AgentPackageError(
                f"agent.package must be {json_text(PACKAGE)}, got {json_text(item.get('package'))}"
            )
        version = item.get("version")
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise AgentPackageError(
                "agent.version must be a Debian version (digits first, letters, digits, "
                f". + ~ -, at most 64 characters), got {json_text(version)}"
            )
        arch = item.get("architecture")
        if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
            raise AgentPackageError(
                f"agent.architecture must be a Debian architecture, got {json_text(arch)}"
            )
        sha = item.get("sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise AgentPackageError(
                f"agent.sha256 must be 64 lowercase hex digits, got {json_text(sha)}"
            )
        size = item.get("size")
        if not _int_in(size, 1, MAX_PACKAGE_BYTES):
            raise AgentPackageError(
                f"agent.size must be an integer from 1 to {MAX_PACKAGE_BYTES}, "
                f"got {json_text(size)}"
            )
        chunk = item.get("chunk_size", DEFAULT_CHUNK_BYTES)
        if not _int_in(chunk, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES):
            raise AgentPackageError(
                f"agent.chunk_size must be an integer from {MIN_CHUNK_BYTES} to "
                f"{MAX_CHUNK_BYTES}, got {json_text(chunk)}"
            )
        return cls(version, arch, sha, size, chunk)


def _int_in(value: Any, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def chunk_topic(prefix: str, sha256: str, index: int) -> str:
    """Retained topic of one chunk of a package: three levels under ``models/``,
    where a model artifact has two, so no model name can collide with it (and the
    device's broker ACL already lets it read ``{prefix}/models/#``)."""
    return f"{prefix}/models/_agent/{sha256}/{index}"


def chunk_filter(prefix: str, sha256: str) -> str:
    return f"{prefix}/models/_agent/{sha256}/+"


def split_chunks(data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """The chunks the control node publishes for ``data``."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
