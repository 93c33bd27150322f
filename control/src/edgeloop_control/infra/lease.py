"""A lease in the control database: which ``edgeloop serve`` worker runs the policies.

Several workers share the ingest (MQTT 5 shared subscriptions), but a policy tick must run
in one place: two workers advancing the same rollout would publish its batches twice. The
workers agree through a row of ``leases``: its holder runs the ticks and renews it every
tick; when the holder stops renewing (killed, cut off), another takes it once it expires.

The lease also fences: :meth:`Lease.check` runs inside every write transaction of a policy
tick (``ControlDB.fenced``) and refuses it when this worker no longer holds the lease. The
check and a takeover both take the database's write lock, so either the step commits
first (and the new holder sees it) or the takeover does (and the step is not written):
a worker that stalls past its lease and wakes mid-tick cannot do a step twice.

Expiry compares the workers' wall clocks: keep them in NTP sync, well inside ``ttl_s``.
"""

from __future__ import annotations

import logging
import time

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB

log = logging.getLogger("edgeloop.control.lease")

SCHEMA = """CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    acquired_at REAL NOT NULL,
    term INTEGER NOT NULL
)"""


class LeaseLost(EdgeloopError):
    """This worker no longer holds the lease: the write it was about to make is refused."""


class Lease:
    def __init__(self, db: ControlDB, name: str, holder: str, *, ttl_s: float = 15.0) -> None:
        if ttl_s <= 0:
            raise ValueError("a lease's ttl_s must be positive")
        self.db = db
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.term = 0  # the lease's term while held (bumped at every change of holder)
        db.conn.execute(SCHEMA)

    def hold(self, now: float | None = None) -> bool:
        """Take or renew the lease; True while this worker holds it."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT holder, expires_at, term FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO leases(name, holder, expires_at, acquired_at, term) "
                    "VALUES (?, ?, ?, ?, 1)",
                    (self.name, self.holder, now + self.ttl_s, now),
                )
                term, previous = 1, None
            elif row["holder"] == self.holder:
                conn.execute(
                    "UPDATE leases SET expires_at = ? WHERE name = ?",
                    (now + self.ttl_s, self.name),
                )
                term, previous = int(row["term"]), self.holder
            elif float(row["expires_at"]) <= now:
                term, previous = int(row["term"]) + 1, str(row["holder"])
                conn.execute(
                    "UPDATE leases SET holder = ?, expires_at = ?, acquired_at = ?, term = ? "
                    "WHERE name = ?",
                    (self.holder, now + self.ttl_s, now, term, self.name),
                )
            else:
                if self.term:
                    log.warning("lease %s: now held by %s", self.name, row["holder"])
                self.term = 0
                return False
        if term != self.term:
            after = f" after {previous}" if previous and previous != self.holder else ""
            log.info("lease %s: %s holds it (term %d)%s", self.name, self.holder, term, after)
            if previous and previous != self.holder:
                self.db.add_event(
                    "lease_taken",
                    f"{self.holder} took the {self.name} lease from {previous} (expired)",
                    subject=self.name,
                    data={"holder": self.holder, "previous": previous, "term": term},
                )
        self.term = term
        return True

    def check(self, conn: sql.Connection) -> None:
        """Inside a write transaction: raise :class:`LeaseLost` unless still held."""
        row = conn.execute(
            "SELECT holder, expires_at, term FROM leases WHERE name = ?", (self.name,)
        ).fetchone()
        if (
            row is None
            or row["holder"] != self.holder
            or int(row["term"]) != self.term
            or float(row["expires_at"]) <= time.time()
        ):
            self.term = 0
            raise LeaseLost(f"lease {self.name} is no longer held by {self.holder}: write refused")

    def release(self) -> None:
        """Give the lease up now (a clean stop), so another worker need not wait it out."""
        if not self.term:
            return
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?",
                (self.name, self.holder),
            )
        self.term = 0

    def holder_now(self) -> tuple[str, float] | None:
        row = self.db.conn.execute(
            "SELECT holder, expires_at FROM leases WHERE name = ?", (self.name,)
        ).fetchone()
        return (str(row["holder"]), float(row["expires_at"])) if row else None
