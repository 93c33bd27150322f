"""A real PostgreSQL from Debian's package, started by the tests on a private port and socket
directory, the way Mosquitto is: its own data directory (initdb), stopped afterwards.

PostgreSQL refuses to run as root; when the suite runs as root (CI containers) the server
runs as the ``postgres`` account the Debian package created. One server serves the session;
each test gets its own database (:meth:`PostgresServer.new_database`).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is missing: `make setup` installs Debian's postgresql package")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user = "edgeloop"
        self._names = itertools.count(1)
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._run_as, *args], check=True, capture_output=True, text=True, cwd=self.dir
        )

    def start(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
            "--auth=trust", "--no-locale", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        # Durability off: a test database is thrown away; this is what makes it quick.
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._options = options
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def restart(self) -> None:
        """Stop the server (every connection drops) and start it again. Fast, not immediate:
        with synchronous_commit off an immediate stop loses the last commits."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
            "-o", self._options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def copy_database(self, url: str) -> str:
        """A new database holding what the one at ``url`` holds (no one may be connected)."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {url.rsplit('/', 1)[1]}")
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        deadline = time.monotonic() + 10
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


def follow_engine(ws_root: Path) -> None:
    """On a PostgreSQL run, copy the SQLite control database a test copied from a template
    into the test's fresh database ($EDGELOOP_CONTROL_DB), with ``edgeloop db copy``'s code."""
    url = os.environ.get("EDGELOOP_CONTROL_DB")
    source = ws_root / "control.sqlite"
    if url and source.exists() and not _holds_state(url):
        from edgeloop_control.infra.dbcopy import copy_control_db

        copy_control_db(source, url)


def _holds_state(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('devices') IS NOT NULL").fetchone()
        return bool(row and row[0])
