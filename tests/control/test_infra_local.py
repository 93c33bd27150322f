"""The control node's own small helpers that replaced imports of agent internals:
``infra.logs.setup_logging`` (journal priorities) and ``infra.files.atomic_write``."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop_control.infra.files import atomic_write

LOG_SCRIPT = """
import logging
from edgeloop_control.infra.logs import setup_logging
setup_logging("info")
log = logging.getLogger("edgeloop.control")
log.debug("hidden")
log.info("hello")
log.warning("careful")
log.error("broken")
"""


def _run(env: dict[str, str], stderr: int | socket.socket) -> None:
    subprocess.run([sys.executable, "-c", LOG_SCRIPT], stderr=stderr, env=env, check=True)


def test_plain_stderr_gets_timestamped_lines() -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    out = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    lines = out.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(re.match(r"\d{4}-\d\d-\d\d .* edgeloop\.control: ", line) for line in lines)
    assert "INFO edgeloop.control: hello" in lines[0]


def test_journal_stream_gets_priority_prefixes_and_no_timestamps() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(theirs.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    try:
        _run(env, theirs)
        theirs.close()
        ours.settimeout(10)
        text = b""
        while chunk := ours.recv(65536):
            text += chunk
    finally:
        ours.close()
    assert text.decode().splitlines() == [
        "<6>edgeloop.control: hello",
        "<4>edgeloop.control: careful",
        "<3>edgeloop.control: broken",
    ]


def test_journal_stream_naming_another_socket_is_not_the_journal() -> None:
    other, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(other.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    out = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    other.close()
    _peer.close()
    assert not [line for line in out.stderr.splitlines() if line.startswith("<")]


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_atomic_write_replaces_with_exact_mode_whatever_the_umask(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    os.chmod(path, 0o666)
    old_umask = os.umask(0o000)
    try:
        atomic_write(path, b"new", mode=mode)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temporary file left


def test_atomic_write_into_a_missing_directory_fails_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "absent" / "key.pem", b"x")
    assert list(tmp_path.iterdir()) == []
