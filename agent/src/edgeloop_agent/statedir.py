"""The agent's state directory: verified artifacts and the last good deployment.

Layout::

    STATE_DIR/models/{name}@{version}-{sha256[:16]}.onnx
    STATE_DIR/deployment.json   # the desired state last applied successfully
    STATE_DIR/outbox.sqlite     # durable telemetry (see outbox.py)

Every write is atomic (temp file, fsync, rename, fsync of the directory), so a
power cut leaves either the old file or the new one, never a torn one.

The state is private to the agent's user whatever the umask: directories 0700,
files 0600 (captured samples and models are the client's data). A write that
fails because the filesystem is full or read-only raises :class:`DiskFullError`
or :class:`ReadOnlyError` (both :class:`StorageError`, an ``OSError``) with a
``code`` for the status document.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

DEPLOYMENT_FILE = "deployment.json"

log = logging.getLogger("edgeloop.agent.state")


class ArtifactError(Exception):
    """An artifact failed verification; ``code`` is reported on status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(OSError):
    """A write to the state directory failed because of the filesystem.

    ``code`` names the condition for the status document. The updater reports it
    and keeps the current deployment serving.
    """

    code = "storage_error"


class DiskFullError(StorageError):
    """ENOSPC / EDQUOT: the state filesystem (or the agent's quota) is full."""

    code = "disk_full"


class ReadOnlyError(StorageError):
    """EROFS: the state filesystem is mounted (or was remounted) read-only."""

    code = "read_only"


def storage_error(exc: OSError, what: str) -> StorageError:
    """The :class:`StorageError` subclass for ``exc``, with a message saying what failed."""
    if isinstance(exc, StorageError):
        return exc
    code = exc.errno or 0
    cls: type[StorageError]
    if code in _FULL_ERRNOS:
        cls = DiskFullError
    elif code == errno.EROFS:
        cls = ReadOnlyError
    else:
        cls = StorageError
    reason = exc.strerror or str(exc)
    err = cls(code, f"{what}: {reason}")
    err.filename = exc.filename
    return err


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700, whatever the umask.

    An existing directory is tightened too, unless it is a shared sticky
    directory such as /tmp, which must keep its mode. On a read-only filesystem
    the directory is used as it is.
    """
    path.mkdir(parents=True, exist_ok=True)
    try:
        st = path.stat()
        if st.st_mode & stat.S_ISVTX:
            log.warning("state directory %s is a shared sticky directory; not changing it", path)
        elif stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE and st.st_uid == os.geteuid():
            os.chmod(path, PRIVATE_DIR_MODE)
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc.strerror or exc)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600 (files written by older agents were 0644)."""
    with contextlib.suppress(OSError):  # missing, or a read-only filesystem
        if stat.S_IMODE(path.stat().st_mode) != PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one.

    The temporary file is created with ``mode`` from the start: a chmod after
    writing would leave a window in which, say, a private key is readable.
    A full or read-only filesystem raises :class:`DiskFullError` /
    :class:`ReadOnlyError` and leaves the old file and no temporary file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover would keep its old permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise storage_error(exc, f"cannot write {path}") from exc
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask; the file is still empty
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, f"cannot write {path}") from exc
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
        private_dir(self.root)
        private_dir(self.models)
        for stale in self.models.glob(".*.tmp"):
            with contextlib.suppress(OSError):  # a read-only filesystem keeps them
                stale.unlink(missing_ok=True)  # left by a crash mid-write
        # State written by older agents was world-readable (0644 under the usual umask).
        private_file(self.root / DEPLOYMENT_FILE)
        for artifact in self.models.glob("*.onnx"):
            private_file(artifact)

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
        path = self.root / DEPLOYMENT_FILE
        # Restoring the last good deployment at start-up saves the same document again;
        # skipping the identical write lets the agent start on a full or read-only disk.
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                return
        atomic_write(path, data)

    def prune(self, keep: set[Path], keep_extra: int = 4) -> list[Path]:
        """Delete old artifacts, keeping those in use plus the newest few others."""
        others = sorted(
            (p for p in self.models.glob("*.onnx") if p not in keep),
            key=_mtime,
            reverse=True,
        )
        removed = others[keep_extra:]
        for path in removed:
            with contextlib.suppress(OSError):  # read-only disk: pruned another time
                path.unlink(missing_ok=True)
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
