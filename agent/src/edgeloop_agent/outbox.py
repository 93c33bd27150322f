"""Durable on-device outbox: everything the agent sends to the control node goes through it.

SQLite in WAL mode. A message accepted by :meth:`Outbox.put` (a non-``None`` id came back) is
committed to the database file, so it survives a broker outage, a crash and ``kill -9`` of the
agent. Delivery is at least once: the MQTT publisher peeks, marks messages in flight, publishes
with QoS 1 and acks (deletes) them on PUBACK; whatever was not acked before a restart is sent
again. Every message carries a globally unique id, also inside its JSON envelope, on which the
control node de-duplicates. See docs/outbox.md for the durability and capacity policies.

The state filesystem may fill up or turn read-only under the agent. The outbox then keeps
working within what the disk holds (see "Full and read-only disks" in docs/outbox.md): its WAL
is bounded, a pre-allocated reserve file is given up so the WAL can still be checkpointed and
rows deleted, the capacity shrinks to what fits (evicting by priority, every drop counted by
kind), an outbox that cannot be opened on disk runs in memory, and :meth:`Outbox.maintain`
brings everything back when space returns.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeloop_agent.outboxdisk import (
    DEFAULT_MEMORY_MAX_BYTES,
    DEFAULT_RESERVE_BYTES,
    DISK_FULL,
    DISK_OK,
    READ_ONLY,
    DiskCare,
    OutboxError,
    _size,
    _wal_limit,
    fs_condition,
)
from edgeloop_agent.wire.envelopes import encode_envelope
from edgeloop_agent.wire.jsontext import json_text

log = logging.getLogger(__name__)

POLICIES = ("drop_oldest", "reject_new")
SYNCHRONOUS = ("NORMAL", "FULL")

# Higher number = more important. Under "drop_oldest" the oldest messages of the lowest
# priority go first, and a message never evicts one of a higher priority than its own.
# Labels outrank samples: a few bytes each, and they are what turns captured
# samples into training data.
DEFAULT_KINDS: Mapping[str, int] = {"sample": 0, "label": 1, "report": 2, "event": 3}

_SCHEMA_VERSION = 1
# SQLite's default limit on bound parameters is 999 on older builds.
_CHUNK = 512  # a power of two: see _chunks
_CACHE_KIB = 256  # SQLite's page cache for the outbox file, in KiB
_MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority DESC, seq);
"""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message. ``body`` is the UTF-8 JSON envelope, ready to publish as is."""

    id: str
    topic: str
    kind: str
    body: bytes
    created: float

    def envelope(self) -> dict[str, Any]:
        """The decoded envelope: ``{"id", "device_id", "kind", "ts", "payload"}``."""
        return json.loads(self.body)


class Outbox(DiskCare):
    """Bounded, durable, thread-safe message store between the agent and the MQTT publisher.

    Thread safety: one SQLite connection guarded by one lock. Every operation is a short
    transaction and SQLite serialises writers anyway, so a second connection would only add
    lock contention (SQLITE_BUSY retries) and force the in-memory byte accounting to be shared
    across connections. In-flight marks live in memory only (see docs/outbox.md).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        device_id: str,
        policy: str = "drop_oldest",
        synchronous: str = "NORMAL",
        kinds: Mapping[str, int] | None = None,
        file_limit_bytes: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        memory_fallback: bool = True,
        memory_max_bytes: int = DEFAULT_MEMORY_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, got {json_text(max_bytes)}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {json_text(policy)}")
        if synchronous not in SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {SYNCHRONOUS}, got {json_text(synchronous)}"
            )
        if not isinstance(device_id, str) or not device_id or len(device_id) > 128:
            raise ValueError(
                "device_id must be a non-empty str of at most 128 chars, "
                f"got {json_text(device_id)}"
            )
        if any(c.isspace() for c in device_id):
            raise ValueError(f"device_id must not contain whitespace, got {json_text(device_id)}")
        kinds = dict(DEFAULT_KINDS if kinds is None else kinds)
        if not kinds:
            raise ValueError("kinds must name at least one message kind")
        for kind, prio in kinds.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"kinds: kind names must be non-empty str, got {json_text(kind)}")
            if isinstance(prio, bool) or not isinstance(prio, int):
                raise ValueError(
                    f"kinds[{json_text(kind)}]: priority must be an int, got {json_text(prio)}"
                )
        if file_limit_bytes is not None and (
            isinstance(file_limit_bytes, bool)
            or not isinstance(file_limit_bytes, int)
            or file_limit_bytes <= 0
        ):
            raise ValueError(
                "file_limit_bytes must be a positive int or None, "
                f"got {json_text(file_limit_bytes)}"
            )
        for name, value in (
            ("reserve_bytes", reserve_bytes),
            ("memory_max_bytes", memory_max_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {json_text(value)}")

        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.device_id = device_id
        self.policy = policy
        self.synchronous = synchronous
        self.kinds: dict[str, int] = kinds
        self.file_limit_bytes = file_limit_bytes
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path + ".reserve"
        self.memory_fallback = memory_fallback
        self.memory_max_bytes = memory_max_bytes
        self._clock = clock
        self.wal_limit = _wal_limit(os.path.dirname(self.path) or ".")
        # "disk", or "memory" when the database could not be opened on disk (read-only or
        # full filesystem, unreadable file): the agent keeps reporting, without durability.
        self.storage = "disk"
        self.disk_state = DISK_OK
        # Capacity learned from a full disk: stored bytes must stay under it (evicting by
        # priority, like max_bytes) until maintain() sees space again. None: no limit learned.
        self._disk_cap: int | None = None
        self._full_floor = 0  # bytes of rows the released reserve may take (see below)
        self._last_truncate = time.monotonic()
        self._last_warned: dict[str, float] = {}
        # A fresh random token per open makes ids unique across restarts and across a
        # re-created database file without having to persist a counter.
        self.boot_id = secrets.token_hex(8)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        # (priority, kind) -> [count, bytes] of stored messages; kept in memory so the
        # capacity check on every put is free. Rebuilt from the table on open and after errors.
        self._acc: dict[tuple[int, str], list[int]] = {}
        # In-flight state lives in memory only. It belongs to this process's MQTT session, so
        # a restart must forget it anyway, and marking or releasing then never writes to disk:
        # on a full disk the publisher can still take messages out and send them.
        self._inflight: set[str] = set()
        # Ids whose ack failed (storage error): retried with the next ack() or sync().
        self._ack_backlog: set[str] = set()
        self._counters: dict[str, Any] = {
            "accepted": {},
            "acked": 0,
            "dropped_oldest": {},
            "rejected_full": {},
            "rejected_oversize": {},
            "refused_storage": {},
            "disk_full_errors": 0,
            "read_only_errors": 0,
            "storage_errors": 0,
        }
        self.last_error: str | None = None
        self.quarantined: str | None = None
        self._conn = self._open()

    # ------------------------------------------------------------------ opening

    def _open(self) -> sqlite3.Connection:
        try:
            conn = self._open_disk()
        except OutboxError as exc:
            if not self.memory_fallback:
                raise
            # The agent must start and serve on a read-only or full state filesystem: keep
            # the outbox in memory (bounded by memory_max_bytes), report it, and move to disk
            # in maintain() once the filesystem allows it.
            state, _free = fs_condition(os.path.dirname(self.path) or ".")
            self.disk_state = state
            self.storage = "memory"
            self.last_error = f"open: {exc}"
            log.error("%s; keeping the outbox in memory until the disk can take it", exc)
            return self._connect(":memory:")
        self._ensure_reserve()
        if self.disk_state == DISK_OK:  # not already known full from opening
            self.disk_state, _free = fs_condition(os.path.dirname(self.path) or ".")
        return conn

    def _open_disk(self) -> sqlite3.Connection:
        """Open (or create) the database file; OutboxError if that is impossible."""
        try:
            self._prepare_file()
            try:
                return self._connect(self.path)
            except sqlite3.DatabaseError as exc:
                msg = str(exc).lower()
                if "not a database" in msg or "malformed" in msg:
                    return self._quarantine_and_connect()
                state, _free = fs_condition(os.path.dirname(self.path) or ".")
                if state != DISK_FULL or not self._release_reserve():
                    raise
                self.disk_state = DISK_FULL
            # Opening a WAL database creates its -shm and -wal files: on a full disk that
            # fails, which the reserve file is there for.
            return self._connect(self.path)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise OutboxError(f"cannot open outbox {json_text(self.path)}: {exc}") from exc

    def _prepare_file(self) -> None:
        """Create the database file 0600 before SQLite does (it would use 0644 minus umask);
        SQLite gives the -wal and -shm files the database file's mode."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for suffix in ("", "-wal", "-shm", ".reserve"):
                with contextlib.suppress(OSError):  # older agents left them 0644
                    if os.stat(self.path + suffix).st_mode & 0o077:
                        os.chmod(self.path + suffix, 0o600)
            return
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
        finally:
            os.close(fd)

    def _quarantine_and_connect(self) -> sqlite3.Connection:
        # A damaged file must not keep the agent from starting: move it aside for post-mortem
        # and start empty. Its messages are lost; the move is reported in stats().
        dest = f"{self.path}.corrupt-{int(time.time())}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, dest + suffix)
        self.quarantined = dest
        log.warning("outbox %s was not a valid database; moved it to %s", self.path, dest)
        self._prepare_file()
        return self._connect(self.path)

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            if target == ":memory:":
                conn.executescript(_SCHEMA)
                self._reload_accounting(conn)
                return conn
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"outbox {json_text(self.path)}: WAL mode unavailable (got {json_text(mode)})"
                )
            # NORMAL in WAL mode: a commit is written to the WAL before put() returns, so it
            # survives a process crash / kill -9 (the OS holds the pages); only an OS crash or
            # power cut can lose the last commits, never corrupt the file. FULL adds an fsync
            # per commit for power-cut safety. Rationale and figures: docs/outbox.md.
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            # SQLite's default page cache (2 MB) filled at steady state and stayed resident;
            # the outbox writes at the tail and reads at the head, and a miss is a read from
            # the OS's cache. docs/performance.md, issue 13.
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit={self.wal_limit}")
            conn.execute(f"PRAGMA wal_autocheckpoint={self._wal_pages(conn)}")
            if self.file_limit_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                pages = max(self.file_limit_bytes // page_size, 8)
                conn.execute(f"PRAGMA max_page_count={pages}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise OutboxError(
                    f"outbox {json_text(self.path)} has schema version {version}, "
                    f"this agent knows {_SCHEMA_VERSION}"
                )
            if version == 0:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            self._reload_accounting(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _reload_accounting(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT priority, kind, count(*), coalesce(sum(size), 0) FROM messages "
            "GROUP BY priority, kind"
        ).fetchall()
        self._acc = {(p, k): [n, b] for p, k, n, b in rows}

    # ------------------------------------------------------------------ writing

    def put(self, topic: str, payload: Mapping[str, Any], kind: str) -> str | None:
        """Store one message; return its id, or ``None`` if it was not stored.

        ``None`` means the outbox is full under its policy, the message alone exceeds
        ``max_bytes``, or the storage failed (e.g. disk full); each is counted in
        :meth:`stats`. Malformed arguments raise ``ValueError``/``TypeError``.
        """
        return self.put_many([(topic, payload, kind)])[0]

    def put_many(self, messages: Iterable[tuple[str, Mapping[str, Any], str]]) -> list[str | None]:
        """Store several ``(topic, payload, kind)`` messages in one transaction.

        One commit for the batch: this is the way to batch puts. Results are per message, as
        for :meth:`put`; a storage error fails the whole batch (all ``None``).
        """
        now = self._clock()
        prepared = [self._prepare(i, t, p, k, now) for i, (t, p, k) in enumerate(messages)]
        results: list[str | None] = [None] * len(prepared)
        if not prepared:
            return results
        with self._lock:
            self._check_open()
            for attempt in range(3):
                try:
                    return self._write_batch(prepared, now)
                except sqlite3.DatabaseError as exc:
                    if attempt == 2 or self._condition(exc) != DISK_FULL:
                        self._storage_failed(exc, "put", [p[2] for p in prepared])
                        return results
                    self._rollback()
                    self.last_error = f"put: {exc}"
                # The disk is full. Give back the reserve so the WAL has room, move the WAL
                # into the main file and truncate it, and from now on keep the stored bytes
                # under what the disk holds: the retry evicts older messages of the same or a
                # lower priority (counted in dropped_oldest), whose pages the new rows reuse.
                self._enter_disk_full(put_attempt=attempt)
            return results  # pragma: no cover - the loop always returns

    def _write_batch(
        self, prepared: list[tuple[str, str, str, int, bytes]], now: float
    ) -> list[str | None]:
        """One transaction for the batch (lock held); in-memory state changes after COMMIT."""
        results: list[str | None] = [None] * len(prepared)
        acc = {key: list(v) for key, v in self._acc.items()}
        counters_delta: list[tuple[str, str]] = []
        evicted: list[str] = []
        try:
            self._write_rows(prepared, now, acc, counters_delta, evicted, results)
        except BaseException:
            self._rollback()
            raise
        self._inflight.difference_update(evicted)
        self._ack_backlog.difference_update(evicted)
        self._acc = {key: v for key, v in acc.items() if v[0] > 0}
        for name, kind in counters_delta:
            bucket = self._counters[name]
            bucket[kind] = bucket.get(kind, 0) + 1
        return results

    def _write_rows(
        self,
        prepared: list[tuple[str, str, str, int, bytes]],
        now: float,
        acc: dict[tuple[int, str], list[int]],
        counters_delta: list[tuple[str, str]],
        evicted: list[str],
        results: list[str | None],
    ) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        for i, (msg_id, topic, kind, prio, body) in enumerate(prepared):
            size = len(body) + len(topic.encode())
            if size > self.max_bytes:
                counters_delta.append(("rejected_oversize", kind))
                continue
            if not self._make_room(acc, prio, size, counters_delta, evicted):
                counters_delta.append(("rejected_full", kind))
                continue
            self._conn.execute(
                "INSERT INTO messages (id, topic, kind, priority, body, size, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (msg_id, topic, kind, prio, body, size, now),
            )
            slot = acc.setdefault((prio, kind), [0, 0])
            slot[0] += 1
            slot[1] += size
            counters_delta.append(("accepted", kind))
            results[i] = msg_id
        self._conn.execute("COMMIT")

    def _prepare(
        self, index: int, topic: Any, payload: Any, kind: Any, now: float
    ) -> tuple[str, str, str, int, bytes]:
        where = f"message {index}"
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"{where}: topic must be a non-empty str, got {json_text(topic)}")
        if "+" in topic or "#" in topic or "\x00" in topic:
            raise ValueError(f"{where}: topic {json_text(topic)} must not contain '+', '#' or NUL")
        try:
            topic_bytes = len(topic.encode())
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{where}: topic {json_text(topic)} is not valid UTF-8 ({exc.reason})"
            ) from exc
        if topic_bytes > _MAX_TOPIC_BYTES:
            raise ValueError(f"{where}: topic is longer than {_MAX_TOPIC_BYTES} bytes")
        if not isinstance(kind, str) or kind not in self.kinds:
            raise ValueError(
                f"{where}: kind must be one of {sorted(self.kinds)}, got {json_text(kind)}"
            )
        if not isinstance(payload, Mapping):
            raise TypeError(f"{where}: payload must be a dict, got {type(payload).__name__}")
        try:
            payload_json = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: payload is not strict JSON ({exc})") from exc
        msg_id = f"{self.device_id}:{self.boot_id}:{next(self._seq)}"
        body = encode_envelope(msg_id, self.device_id, kind, now, payload_json)
        return msg_id, topic, kind, self.kinds[kind], body

    def _capacity(self) -> int:
        cap = self.max_bytes
        if self._disk_cap is not None:
            cap = min(cap, self._disk_cap)
        if self.storage == "memory":
            cap = min(cap, self.memory_max_bytes)
        return cap

    def _make_room(
        self,
        acc: dict[tuple[int, str], list[int]],
        prio: int,
        size: int,
        counters_delta: list[tuple[str, str]],
        evicted: list[str],
    ) -> bool:
        used = sum(v[1] for v in acc.values())
        need = used + size - self._capacity()
        if need <= 0:
            return True
        if self.policy == "reject_new":
            return False
        evictable = sum(v[1] for (p, _k), v in acc.items() if p <= prio)
        if evictable < need:
            return False
        for p in sorted({p for (p, _k) in acc if p <= prio}):
            # In steady state one put evicts about one message: start with a small read and
            # widen it only when many small messages must go.
            limit = 8
            while need > 0:
                rows = self._conn.execute(
                    "SELECT seq, kind, size, id FROM messages WHERE priority=? "
                    "ORDER BY seq LIMIT ?",
                    (p, limit),
                ).fetchall()
                limit = min(limit * 4, _CHUNK)
                if not rows:
                    break
                last = None
                for seq, kind, sz, msg_id in rows:
                    last = seq
                    need -= sz
                    slot = acc[(p, kind)]
                    slot[0] -= 1
                    slot[1] -= sz
                    evicted.append(msg_id)
                    counters_delta.append(("dropped_oldest", kind))
                    if need <= 0:
                        break
                self._conn.execute("DELETE FROM messages WHERE priority=? AND seq<=?", (p, last))
            if need <= 0:
                break
        return need <= 0

    # ------------------------------------------------------------------ reading / acking

    def peek(self, limit: int = 100) -> list[OutboxMessage]:
        """Up to ``limit`` messages not in flight: highest priority first, oldest first within
        a priority. Read-only, so it works on a full disk too."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive int, got {json_text(limit)}")
        with self._lock:
            self._check_open()
            skip = self._inflight
            try:
                # In-flight rows are few (the publisher's window), so over-read and filter.
                rows = self._conn.execute(
                    "SELECT id, topic, kind, body, created FROM messages "
                    "ORDER BY priority DESC, seq LIMIT ?",
                    (limit + len(skip),),
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                self._storage_failed(exc, "peek")
                return []
            out = [
                OutboxMessage(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows if r[0] not in skip
            ]
        return out[:limit]

    def mark_inflight(self, ids: Sequence[str]) -> int:
        """Exclude stored messages from :meth:`peek` until acked, released or the outbox is
        reopened. Returns how many of ``ids`` were stored and not already in flight."""
        ids = _check_ids(ids)
        with self._lock:
            self._check_open()
            fresh = [i for i in dict.fromkeys(ids) if i not in self._inflight]
            try:
                stored = self._existing(fresh)
            except sqlite3.DatabaseError as exc:
                self._storage_failed(exc, "mark_inflight")
                return 0
            self._inflight.update(stored)
        return len(stored)

    def release(self, ids: Sequence[str] | None = None) -> int:
        """Make in-flight messages peekable again (e.g. the broker connection dropped and the
        session is not persistent). ``None`` releases all. Returns how many were released."""
        with self._lock:
            self._check_open()
            if ids is None:
                n = len(self._inflight)
                self._inflight.clear()
            else:
                wanted = set(_check_ids(ids)) & self._inflight
                self._inflight -= wanted
                n = len(wanted)
            # A message whose ack failed is published again rather than waiting for a retry.
            self._ack_backlog &= self._inflight
        return n

    def ack(self, ids: Sequence[str]) -> int:
        """Delete delivered messages; unknown ids (already acked or evicted) are ignored.

        Returns how many were deleted. On a storage error (e.g. disk full: even a delete needs
        room in the WAL) nothing is deleted, the error is counted, and the ids stay in flight
        and are retried with the next ack() or sync(); after a restart they are delivered
        again (at least once).
        """
        ids = _check_ids(ids)
        with self._lock:
            self._check_open()
            return self._delete(list(dict.fromkeys([*self._ack_backlog, *ids])))

    def _delete(self, ids: list[str]) -> int:
        """Delete ``ids`` in one transaction (lock held)."""
        if not ids:
            return 0
        try:
            return self._try_delete(ids)
        except sqlite3.DatabaseError as exc:
            if self._condition(exc) != DISK_FULL:
                return self._delete_failed(exc, ids)
            self._rollback()
            self.last_error = f"ack: {exc}"
        # Even a delete needs WAL room: give back the reserve, checkpoint, try once more.
        self._enter_disk_full(put_attempt=None)
        try:
            return self._try_delete(ids)
        except sqlite3.DatabaseError as exc:
            return self._delete_failed(exc, ids)

    def _delete_failed(self, exc: sqlite3.DatabaseError, ids: list[str]) -> int:
        self._storage_failed(exc, "ack")
        self._ack_backlog.update(ids)
        self._inflight.update(ids)  # not re-peeked while the retry is pending
        return 0

    def _try_delete(self, ids: list[str]) -> int:
        acc = {key: list(v) for key, v in self._acc.items()}
        deleted = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT priority, kind, size FROM messages WHERE id IN ({marks})", chunk
                ).fetchall()
                if not rows:
                    continue
                self._conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
                for prio, kind, size in rows:
                    slot = acc[(prio, kind)]
                    slot[0] -= 1
                    slot[1] -= size
                deleted += len(rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._acc = {key: v for key, v in acc.items() if v[0] > 0}
        self._inflight.difference_update(ids)
        self._ack_backlog.difference_update(ids)
        self._counters["acked"] += deleted
        return deleted

    def _existing(self, ids: list[str]) -> list[str]:
        found: list[str] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            found += [
                r[0]
                for r in self._conn.execute(f"SELECT id FROM messages WHERE id IN ({marks})", chunk)
            ]
        return found

    # ------------------------------------------------------------------ reporting

    def depth(self) -> int:
        """Number of stored (not yet acked) messages, in flight or not."""
        with self._lock:
            return sum(v[0] for v in self._acc.values())

    def bytes_used(self) -> int:
        """Sum of stored envelope + topic bytes: the quantity ``max_bytes`` bounds."""
        with self._lock:
            return sum(v[1] for v in self._acc.values())

    def stats(self) -> dict[str, Any]:
        """JSON-able counters since this process opened the outbox, plus the current fill."""
        with self._lock:
            by_kind: dict[str, dict[str, int]] = {}
            for (_p, kind), (n, b) in self._acc.items():
                slot = by_kind.setdefault(kind, {"depth": 0, "bytes": 0})
                slot["depth"] += n
                slot["bytes"] += b
            out: dict[str, Any] = {
                "depth": sum(v[0] for v in self._acc.values()),
                "bytes_used": sum(v[1] for v in self._acc.values()),
                "max_bytes": self.max_bytes,
                "policy": self.policy,
                "inflight": len(self._inflight),
                "ack_backlog": len(self._ack_backlog),
                "by_kind": by_kind,
                "last_error": self.last_error,
                "quarantined": self.quarantined,
                "disk": self._disk_info(),
            }
            for name, value in self._counters.items():
                out[name] = dict(value) if isinstance(value, dict) else value
            out["dropped"] = self._dropped()
        return out

    def dropped(self) -> dict[str, int]:
        """``{kind: n}``: messages of each kind not delivered because of the outbox: evicted,
        refused (full, oversize) or lost to a storage error, since the outbox was opened."""
        with self._lock:
            return self._dropped()

    def _dropped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("dropped_oldest", "rejected_full", "rejected_oversize", "refused_storage"):
            for kind, n in self._counters[name].items():
                out[kind] = out.get(kind, 0) + n
        return out

    def disk_info(self) -> dict[str, Any]:
        """The storage condition for the agent's status: state, where the outbox lives,
        free bytes on its filesystem, reserve held, WAL size and any capacity learned."""
        with self._lock:
            return self._disk_info()

    def _disk_info(self) -> dict[str, Any]:
        _state, free = fs_condition(os.path.dirname(self.path) or ".")
        return {
            "state": self.disk_state,
            "storage": self.storage,
            "free_bytes": free,
            "reserve_bytes": _size(self.reserve_path),
            "wal_bytes": _size(self.path + "-wal"),
            "capacity_bytes": self._capacity(),
        }

    def file_bytes(self) -> int:
        """Size on disk of the database and its WAL (what the device's storage actually holds)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    # ------------------------------------------------------------------ lifecycle

    def sync(self) -> None:
        """Checkpoint the WAL into the main file with fsync: afterwards everything accepted so
        far also survives a power cut. Call on clean shutdown; errors are counted, not raised."""
        with self._lock:
            self._check_open()
            self._delete(list(self._ack_backlog))
            if self.storage == "disk":
                self._truncate_wal("sync")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                depth = sum(v[0] for v in self._acc.values())
                if self.storage == "memory" and depth:
                    log.error(
                        "outbox %s: %d undelivered messages were only in memory and are lost "
                        "(the disk never took them)",
                        self.path,
                        depth,
                    )
                self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {json_text(self.path)} is closed")

    def _storage_failed(
        self, exc: sqlite3.DatabaseError, op: str, kinds: Sequence[str] = ()
    ) -> None:
        """Record a storage failure (lock held). Never raises: the agent keeps serving.

        ``kinds``: the kinds of the messages a failed put refused, counted per kind."""
        self._rollback()
        text = str(exc)
        condition = self._condition(exc)
        if condition == DISK_FULL:
            self._counters["disk_full_errors"] += 1
            self._set_state(DISK_FULL)
        elif condition == READ_ONLY:
            self._counters["read_only_errors"] += 1
            self._set_state(READ_ONLY)
        else:
            self._counters["storage_errors"] += 1
        refused = self._counters["refused_storage"]
        for kind in kinds:
            refused[kind] = refused.get(kind, 0) + 1
        # On a disk that stays full the same failure repeats every second: log it once a
        # minute, it is counted and on status anyway.
        message = f"{op}: {text}"
        now = time.monotonic()
        if now - self._last_warned.get(message, float("-inf")) >= 60.0:
            self._last_warned[message] = now
            log.warning("outbox %s: %s failed: %s", self.path, op, text)
        self.last_error = message
        with contextlib.suppress(sqlite3.DatabaseError):
            self._reload_accounting(self._conn)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute("ROLLBACK")


def _check_ids(ids: Any) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise TypeError(f"ids must be a sequence of message ids, got {type(ids).__name__}")
    out = list(ids)
    for i in out:
        if not isinstance(i, str):
            raise TypeError(f"message ids must be str, got {json_text(i)}")
    return out


def _chunks(items: list[str]) -> Iterable[list[str]]:
    """Ids for ``id IN (?, ...)`` statements, at most ``_CHUNK`` at a time, each chunk padded
    to a power of two by repeating its last id (the same rows match). Python's sqlite3
    keeps up to 128 prepared statements a connection, and one per distinct list length
    (acks come in every size) held ~2 MB; padded, there are ten lengths."""
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        yield chunk + chunk[-1:] * (size - len(chunk))
