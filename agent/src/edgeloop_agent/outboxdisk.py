"""How the outbox lives with a small, full or read-only state filesystem.

The outbox's housekeeping half (:class:`DiskCare`, mixed into
:class:`~edgeloop_agent.outbox.Outbox`): a bounded WAL, a pre-allocated reserve file
given back when the disk fills so that checkpoints and deletes still find room, a
capacity learned from the full disk, an in-memory outbox moved back to disk when space
returns. See "Full and read-only disks" in docs/outbox.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

log = logging.getLogger("edgeloop_agent.outbox")

# The WAL is kept small because on a small state filesystem it competes with the data: with
# SQLite's defaults (checkpoint every 1000 pages, i.e. ~4 MiB) it alone filled a 3 MB disk,
# and once the disk is full a checkpoint cannot move the WAL into the main file, so nothing
# could ever be freed. The WAL limit is 1/16 of the filesystem, between 64 KiB and SQLite's
# 4 MiB: checkpoint when the WAL reaches it, truncate the file back to it after each
# checkpoint; maintain() truncates it to zero. Not smaller than needed: every checkpoint
# fsyncs the main file, and checkpointing every 64 pages cut single puts from ~9,400/s to
# ~960/s on an ext4 disk (bench/bench_outbox.py).
_WAL_LIMIT_MIN = 64 * 1024
_WAL_LIMIT_MAX = 4 * 1024 * 1024
# While the disk is full the WAL must fit in the room the reserve gave back.
_WAL_FULL_DISK_PAGES = 16
# Pre-allocated next to the database and given back when the disk is full, so that opening
# (the -shm and -wal files), checkpointing and deleting still find room.
DEFAULT_RESERVE_BYTES = 512 * 1024
# When the outbox cannot live on disk it keeps at most this much in memory.
DEFAULT_MEMORY_MAX_BYTES = 4 * 1024 * 1024
# maintain() truncates the WAL at least this often (seconds).
_TRUNCATE_EVERY_S = 30.0
# Disk conditions, as reported in stats() and on the agent's status.
DISK_OK, DISK_FULL, READ_ONLY = "ok", "disk_full", "read_only"


def fs_condition(directory: str) -> tuple[str, int | None]:
    """``(DISK_OK | DISK_FULL | READ_ONLY, free bytes)`` of the filesystem holding ``directory``.

    Full means less room than one SQLite page plus the 32 KiB -shm file needs.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return DISK_OK, None
    free = st.f_bavail * st.f_frsize
    if st.f_flag & os.ST_RDONLY:
        return READ_ONLY, free
    return (DISK_FULL if free < 64 * 1024 else DISK_OK), free


class OutboxError(Exception):
    """The outbox cannot be opened or was used after close."""


class DiskCare:
    """Full-disk and WAL housekeeping; the state it uses is the outbox's own."""

    # Set by Outbox.__init__ (declared here for the type checker).
    path: str
    reserve_path: str
    reserve_bytes: int
    wal_limit: int
    storage: str
    disk_state: str
    last_error: str | None
    _conn: sqlite3.Connection
    _lock: threading.Lock
    _closed: bool
    _disk_cap: int | None
    _full_floor: int
    _last_truncate: float
    _last_warned: dict[str, float]
    _ack_backlog: set[str]
    _counters: dict[str, Any]
    _acc: dict[tuple[int, str], list[int]]

    if TYPE_CHECKING:

        def _delete(self, ids: list[str]) -> int: ...
        def _open_disk(self) -> sqlite3.Connection: ...
        def _reload_accounting(self, conn: sqlite3.Connection) -> None: ...
        def _storage_failed(
            self, exc: sqlite3.DatabaseError, op: str, kinds: Sequence[str] = ()
        ) -> None: ...
        def _rollback(self) -> None: ...
        def close(self) -> None: ...

    def maintain(self) -> str:
        """Housekeeping, every second or so (the agent's housekeeping thread); returns the
        disk state. Never raises.

        Retries failed acks, truncates the WAL now and then, notices when a full or read-only
        filesystem can take writes again (then re-allocates the reserve, lifts the capacity
        learned from the full disk, and moves an in-memory outbox to disk), and notices a
        filesystem that filled up or turned read-only under an idle outbox.
        """
        with self._lock:
            if self._closed:
                return self.disk_state
            if self._ack_backlog:
                self._delete(list(self._ack_backlog))
            if self.storage == "memory":
                state, _free = fs_condition(os.path.dirname(self.path) or ".")
                if state == DISK_OK:
                    self._move_to_disk()
                else:
                    self.disk_state = state
                return self.disk_state
            self._check_space()
            now = time.monotonic()
            wal = _size(self.path + "-wal") or 0
            if wal > self.wal_limit or (wal and now - self._last_truncate >= _TRUNCATE_EVERY_S):
                self._truncate_wal("checkpoint")
            return self.disk_state

    def _check_space(self) -> None:
        """Update the disk state from the filesystem (lock held, outbox on disk)."""
        state, free = fs_condition(os.path.dirname(self.path) or ".")
        if state == READ_ONLY:
            self._set_state(READ_ONLY)
        elif self.disk_state == DISK_OK and state == DISK_FULL:
            self._set_state(DISK_FULL)  # filled by someone else; the reserve is kept for now
        elif self.disk_state != DISK_OK or not os.path.exists(self.reserve_path):
            # Space is back once the reserve can be allocated again with room to spare for
            # the WAL; until then the learned capacity stays.
            # Hysteresis: right after the outbox gave back its reserve and truncated its WAL
            # the filesystem shows that room free, but the WAL will take it again. "Room
            # again" means the reserve, the WAL's full size and a margin all fit.
            reserve, headroom = self._reserve_sizes()
            wal = _size(self.path + "-wal") or 0
            wanted = reserve + max(0, self._wal_room() - wal) + headroom
            if free is not None and free >= wanted and self._ensure_reserve():
                if self._disk_cap is not None or self.disk_state != DISK_OK:
                    log.warning(
                        "outbox %s: the disk has room again (%d bytes free, %d wanted)",
                        self.path,
                        free,
                        wanted,
                    )
                self._disk_cap = None
                self._full_floor = 0
                self._set_state(DISK_OK)

    def _truncate_wal(self, op: str) -> None:
        self._last_truncate = time.monotonic()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            self._storage_failed(exc, op)

    def _move_to_disk(self) -> None:
        """Open the database on disk and move the in-memory messages into it (lock held)."""
        try:
            conn = self._open_disk()
        except OutboxError as exc:
            self.last_error = f"open: {exc}"
            return
        rows = self._conn.execute(
            "SELECT id, topic, kind, priority, body, size, created FROM messages ORDER BY seq"
        ).fetchall()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO messages (id, topic, kind, priority, body, size, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.close()
            self.last_error = f"move to disk: {exc}"
            log.warning("outbox %s: cannot move to disk yet: %s", self.path, exc)
            return
        self._conn.close()
        self._conn = conn
        self.storage = "disk"
        self._reload_accounting(conn)
        self._ensure_reserve()
        self._set_state(DISK_OK)
        log.warning("outbox %s: on disk again, %d messages moved from memory", self.path, len(rows))

    # ------------------------------------------------------------------ full and read-only disks

    def _condition(self, exc: sqlite3.DatabaseError) -> str:
        """DISK_FULL, READ_ONLY or "error" for a storage failure."""
        msg = str(exc).lower()
        if "database or disk is full" in msg:
            return DISK_FULL
        if "readonly" in msg or "read-only" in msg:
            return READ_ONLY
        # Other I/O errors (a -shm that cannot grow, a short write) on a full or read-only
        # filesystem: ask the filesystem.
        state, _free = fs_condition(os.path.dirname(self.path) or ".")
        return state if state != DISK_OK else "error"

    def _set_state(self, state: str) -> None:
        if state == self.disk_state:
            return
        log.warning("outbox %s: disk state %s -> %s", self.path, self.disk_state, state)
        self.disk_state = state
        if self.storage == "disk":
            # While the disk is full every commit's pages must fit in what the reserve gave
            # back: checkpoint every few pages.
            with contextlib.suppress(sqlite3.DatabaseError):
                pages = _WAL_FULL_DISK_PAGES if state == DISK_FULL else self._wal_pages(self._conn)
                self._conn.execute(f"PRAGMA wal_autocheckpoint={pages}")

    def _enter_disk_full(self, *, put_attempt: int | None) -> None:
        """React to SQLITE_FULL (lock held, no transaction open).

        ``put_attempt``: which try of a put failed (None for a delete, which learns no
        capacity). After the first, new messages must fit in the bytes stored now (they
        evict as much as they add); after the second, in 90% of them. Each put starts from
        what is stored, so repeated failures on a disk with no room at all do not compound
        into evicting the backlog later.
        """
        self._counters["disk_full_errors"] += 1  # every SQLITE_FULL met, retried or not
        self._set_state(DISK_FULL)
        self._release_reserve()
        with contextlib.suppress(sqlite3.DatabaseError):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if put_attempt is None:
            return
        used = sum(v[1] for v in self._acc.values())
        # New rows take the pages of the ones they evict. The reserve's room is mostly for
        # the WAL; an eighth of it may take rows, so that an outbox that was empty when the
        # disk filled can still carry telemetry reports.
        if put_attempt == 0:
            self._disk_cap = max(used, self._full_floor)
        else:
            self._disk_cap = used * 9 // 10

    def _release_reserve(self) -> bool:
        size = _size(self.reserve_path) or 0
        try:
            os.unlink(self.reserve_path)
        except OSError:
            return False
        self._full_floor = max(self._full_floor, size // 8)
        log.warning("outbox %s: disk full, released the %s reserve", self.path, self.reserve_path)
        return True

    def _wal_room(self) -> int:
        """What the WAL may take: its size limit."""
        return self.wal_limit

    def _wal_pages(self, conn: sqlite3.Connection) -> int:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return max(_WAL_FULL_DISK_PAGES, self.wal_limit // page_size)

    def _reserve_sizes(self) -> tuple[int, int]:
        """(reserve, headroom): the reserve file's size and the free space, beyond it, that
        counts as "room again". The reserve is at least the WAL limit (a full WAL must be
        checkpointed into it), both at most an eighth of the filesystem, so that on a tiny
        state filesystem the reserve does not take the room the outbox needs."""
        headroom = self.wal_limit
        reserve = max(self.reserve_bytes, self.wal_limit) if self.reserve_bytes else 0
        with contextlib.suppress(OSError):
            st = os.statvfs(os.path.dirname(self.path) or ".")
            eighth = st.f_blocks * st.f_frsize // 8
            reserve, headroom = min(reserve, eighth), min(headroom, eighth)
        return reserve, headroom

    def _ensure_reserve(self) -> bool:
        """Allocate the reserve file if it is missing; True if it is in place."""
        size, _headroom = self._reserve_sizes()
        if size == 0:
            return True
        if (_size(self.reserve_path) or 0) >= size:
            return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            os.fchmod(fd, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # No fallocate on this filesystem: write the blocks.
                os.pwrite(fd, bytes(size), 0)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.reserve_path)
            return False
        os.close(fd)
        return True


def _wal_limit(directory: str) -> int:
    """1/16 of the filesystem holding ``directory``, within [64 KiB, 4 MiB]."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return _WAL_LIMIT_MAX
    return max(_WAL_LIMIT_MIN, min(_WAL_LIMIT_MAX, st.f_blocks * st.f_frsize // 16))


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
