"""The control database's de-duplication ids: exactly once, and bounded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeloop_control.infra.db import ControlDB

pytestmark = pytest.mark.both_engines


def test_first_sighting_once_and_old_ids_are_forgotten(control_db_location: str | Path) -> None:
    db = ControlDB(control_db_location)
    try:
        assert db.first_sighting("dev:boot:1") is True
        assert db.first_sighting("dev:boot:1") is False
        db.conn.execute("UPDATE seen_messages SET ts = ?", (time.time() - 100,))
        assert db.first_sighting("dev:boot:2") is True
        assert db.forget_seen(older_than_s=50) == 1
        # The recent id is still remembered; the old one was dropped.
        assert db.first_sighting("dev:boot:2") is False
        assert db.first_sighting("dev:boot:1") is True
    finally:
        db.close()
