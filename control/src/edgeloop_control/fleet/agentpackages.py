"""Agent packages the control node can roll out: the agent updates itself.

``edgeloop agent publish PATH.deb`` stores a built ``edgeloop-agent`` .deb in the
workspace (``agent-packages/``, with its version and architecture read by
``dpkg-deb -f`` and its sha256) and publishes it, retained, in chunks on
``{prefix}/models/_agent/{sha256}/{i}`` (wire/agentpackage.py: the broker's
message size limit, 40 MiB as shipped, is under a package's ~50 MB, and the
agent keeps one chunk in memory). :func:`with_agent` adds the signed ``agent``
entry to a device's next desired document; :class:`DesiredState` signs it with
the rest, so the control key pins the package's sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop_agent.wire.agentpackage import (
    DEFAULT_CHUNK_BYTES,
    MAX_PACKAGE_BYTES,
    PACKAGE,
    AgentPackage,
    AgentPackageError,
    chunk_topic,
    split_chunks,
)
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.workspace import Workspace

STORE_DIR = "agent-packages"
INDEX = "index.json"
_SEALED = ("device", "expires")


class AgentPackageRefused(EdgeloopError, ValueError):
    """A package that cannot be published or rolled out (one line for the CLI)."""


@dataclass(frozen=True)
class StoredPackage:
    package: AgentPackage
    path: Path


def read_deb(path: Path) -> AgentPackage:
    """The entry for ``path``, an edgeloop-agent .deb (checked with dpkg-deb)."""
    if shutil.which("dpkg-deb") is None:
        raise AgentPackageRefused("dpkg-deb is not installed (apt-get install dpkg)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AgentPackageRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    if size > MAX_PACKAGE_BYTES:
        raise AgentPackageRefused(f"{path} is {size} bytes, over {MAX_PACKAGE_BYTES}")
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if fields.returncode != 0:
        why = (fields.stderr.strip().splitlines() or ["not a Debian package"])[-1]
        raise AgentPackageRefused(f"{path}: {why}")
    info = dict(
        line.split(": ", 1) for line in fields.stdout.splitlines() if re.match(r"\w[\w-]*: ", line)
    )
    if info.get("Package") != PACKAGE:
        raise AgentPackageRefused(f"{path} is {info.get('Package')!r}, not {PACKAGE}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    try:
        return AgentPackage.from_dict(
            {
                "version": info.get("Version"),
                "architecture": info.get("Architecture"),
                "sha256": digest.hexdigest(),
                "size": size,
                "chunk_size": DEFAULT_CHUNK_BYTES,
            }
        )
    except AgentPackageError as exc:
        raise AgentPackageRefused(f"{path}: {exc}") from None


class AgentPackages:
    """The workspace's store of agent packages (``{workspace}/agent-packages``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_workspace(cls, ws: Workspace) -> AgentPackages:
        return cls(ws.root / STORE_DIR)

    def _index(self) -> list[dict[str, Any]]:
        try:
            data = json.loads((self.root / INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return list(data) if isinstance(data, list) else []

    def add(self, deb: Path) -> StoredPackage:
        pkg = read_deb(deb)
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / pkg.filename
        if deb.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(deb, tmp)
            tmp.replace(target)
        index = [
            e
            for e in self._index()
            if (e.get("version"), e.get("architecture")) != (pkg.version, pkg.architecture)
        ]
        index.append(pkg.to_dict())
        tmp_index = self.root / f".{INDEX}.tmp"
        tmp_index.write_text(json.dumps(index, indent=2), encoding="utf-8")
        tmp_index.replace(self.root / INDEX)
        return StoredPackage(pkg, target)

    def list(self) -> list[AgentPackage]:
        out = []
        for entry in self._index():
            try:
                out.append(AgentPackage.from_dict(entry))
            except AgentPackageError:
                continue  # a hand-edited index: skipped, the rest still listed
        return out

    def get(self, version: str, architecture: str | None = None) -> StoredPackage:
        found = [
            p
            for p in self.list()
            if p.version == version and architecture in (None, p.architecture)
        ]
        if not found:
            raise AgentPackageRefused(
                f"no published agent package {version}"
                + (f" for {architecture}" if architecture else "")
                + " (edgeloop agent publish PATH.deb)"
            )
        if len(found) > 1:
            archs = ", ".join(sorted(p.architecture for p in found))
            raise AgentPackageRefused(
                f"agent package {version} exists for {archs}: say which (--arch)"
            )
        return StoredPackage(found[0], self.root / found[0].filename)

    def publish(self, publisher: Publisher, prefix: str, stored: StoredPackage) -> int:
        """Publish the package's chunks, retained; returns how many."""
        pkg = stored.package
        data = stored.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != pkg.sha256 or len(data) != pkg.size:
            raise AgentPackageRefused(f"{stored.path} no longer matches its recorded sha256")
        chunks = split_chunks(data, pkg.chunk_size)
        for i, chunk in enumerate(chunks):
            publisher.publish(chunk_topic(prefix, pkg.sha256, i), chunk, retain=True, timeout=120)
        return len(chunks)


def with_agent(current: dict[str, Any], pkg: AgentPackage | None) -> dict[str, Any]:
    """The device's next document: ``current`` (as last published) naming ``pkg``
    (None: no agent entry), under the next revision. Signing adds device and expiry."""
    doc = {k: v for k, v in current.items() if k not in _SEALED}
    doc["revision"] = int(current["revision"]) + 1
    if pkg is None:
        doc.pop("agent", None)
    else:
        doc["agent"] = pkg.to_dict()
    return doc
