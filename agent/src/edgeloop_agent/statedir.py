"""The agent's state directory: verified artifacts and the last good deployment.

Layout::

    STATE_DIR/models/{name}@{version}-{sha256[:16]}.onnx
    STATE_DIR/deployment.json   # the desired state last applied successfully
    STATE_DIR/outbox.sqlite     # durable telemetry (see outbox.py)

Every write is atomic (temp file, fsync, rename, fsync of the directory), so a
power cut leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

DEPLOYMENT_FILE = "deployment.json"

log = logging.getLogger("edgeloop.agent.state")


class ArtifactError(Exception):
    """An artifact failed verification; ``code`` is reported on status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one.

    The temporary file is created with ``mode`` from the start: a chmod after
    writing would leave a window in which, say, a private key is readable.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its old permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask; the file is still empty
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        for stale in self.models.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # left by a crash mid-write

    def artifact_path(self, name: str, version: str, sha256: str) -> Path:
        return self.models / f"{name}@{version}-{sha256[:16]}.onnx"

    def has_artifact(self, name: str, version: str, sha256: str) -> bool:
        return self.artifact_path(name, version, sha256).is_file()

    def store_artifact(self, name: str, version: str, sha256: str, data: bytes) -> Path:
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactError(
                "artifact_sha256_mismatch",
                f"artifact {name}@{version} has sha256 {actual}, desired state says {sha256}",
            )
        path = self.artifact_path(name, version, sha256)
        atomic_write(path, data)
        return path

    def read_artifact(self, name: str, version: str, sha256: str) -> bytes:
        """Artifact bytes from disk, re-verified: disks rot and people edit files."""
        path = self.artifact_path(name, version, sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                "artifact_missing", f"artifact {name}@{version} is not in {self.models}"
            ) from None
        if sha256_hex(data) != sha256:
            raise ArtifactError(
                "artifact_corrupt", f"artifact file {path.name} no longer matches its sha256"
            )
        return data

    def load_deployment(self) -> dict[str, Any] | None:
        path = self.root / DEPLOYMENT_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Written atomically, so this is disk damage or a hand edit: say so, and
            # start without a model rather than not at all.
            log.error("ignoring unreadable %s: %s", path, exc)
            return None

    def save_deployment(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        atomic_write(self.root / DEPLOYMENT_FILE, data)

    def prune(self, keep: set[Path], keep_extra: int = 4) -> list[Path]:
        """Delete old artifacts, keeping those in use plus the newest few others."""
        others = sorted(
            (p for p in self.models.glob("*.onnx") if p not in keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        removed = others[keep_extra:]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed
