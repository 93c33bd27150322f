"""A real small tmpfs for full-disk tests (the suite runs as root; skipped where it cannot)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "3m") on ``where``; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount(8)): {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, timeout=10)


def fill(path: Path) -> int:
    """Fill the filesystem holding ``path`` (ENOSPC); return the bytes written.

    One fallocate of all the free space, then small writes for the rest: the agent under
    test reacts to the full disk within a second, and a slow fill would race it for the
    space it gives back.
    """
    free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, free)
        written = os.fstat(fd).st_size
        for chunk in (4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.pwrite(fd, block, written)
                except OSError:
                    break
    finally:
        os.close(fd)
    st = os.statvfs(path.parent)
    assert st.f_bavail * st.f_frsize < 4096, "the filesystem did not fill up"
    return written
