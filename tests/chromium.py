"""Headless Chromium for tests that render the product's HTML (installed by the set-up)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_TIMEOUT = 30.0


def run_chromium(args: list[str], workdir: Path) -> str:
    """Run headless Chromium with a fresh profile; stdout. The whole process group is
    killed afterwards (and on timeout): the browser's helpers must not outlive the test."""
    assert os.path.exists(CHROMIUM), "chromium is installed by the project's setup"
    profile = workdir / f"profile-{len(list(workdir.glob('profile-*')))}"
    command = [
        CHROMIUM,
        "--headless",
        # Root in a container has no usable sandbox; the page is our own local file.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT:.0f} s: {command}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8")
