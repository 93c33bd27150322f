"""The control database's PostgreSQL server restarts (maintenance, a fail-over): every
connection drops. The statement that meets the broken connection fails like any database
error (the daemon keeps that message and retries it); the next one reconnects. A transaction
the restart cut is rolled back by the server and reported, and nothing half of it stays."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB
from tests.pgserver import PostgresServer


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()  # its own: the restart must not cut other tests
    try:
        yield server
    finally:
        server.stop()


def retried(work):  # type: ignore[no-untyped-def]
    """What the daemon does with a message whose store failed: try it again."""
    try:
        return work()
    except sql.OperationalError:
        return work()


def test_statements_and_transactions_survive_a_server_restart(
    own_server: PostgresServer,
) -> None:
    db = ControlDB(own_server.new_database())
    try:
        assert db.first_sighting("before")
        own_server.restart()
        assert retried(lambda: db.first_sighting("after")) is True
        assert db.first_sighting("after") is False  # stored once, and read back
        with pytest.raises(sql.OperationalError), db.transaction() as tx:
            tx.execute("INSERT INTO seen_messages(msg_id, ts) VALUES ('half', 1)")
            own_server.restart()
            tx.execute("INSERT INTO seen_messages(msg_id, ts) VALUES ('other', 1)")
        assert not db.conn.in_transaction
        ids = retried(lambda: {r[0] for r in db.conn.execute("SELECT msg_id FROM seen_messages")})
        assert ids == {"before", "after"}  # the cut transaction left nothing behind
        with db.transaction() as tx:
            tx.execute("INSERT INTO seen_messages(msg_id, ts) VALUES ('again', 1)")
        assert db.first_sighting("again") is False
    finally:
        db.close()
