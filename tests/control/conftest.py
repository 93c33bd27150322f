"""Fixtures shared by the control-node test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.control.fleet_history import History, build


@pytest.fixture(scope="session")
def fleet_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """A workspace with five days of drift, two experiments and two rollouts (about 20 s
    to build, once per session; tests only read it)."""
    root = tmp_path_factory.mktemp("fleet-history")
    broker = PrivateBroker(root / "broker").start()
    try:
        yield build(root, broker)
    finally:
        broker.stop()
