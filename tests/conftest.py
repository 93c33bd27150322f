"""Shared fixtures: every test that needs MQTT gets its own real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.mqtt_helpers import AgentProcess, Probe
from tests.pgserver import PostgresServer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def probe(broker: PrivateBroker) -> Iterator[Probe]:
    p = Probe(broker.url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """Agent processes started by a test are stopped (and logs kept) afterwards."""
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def control_db_location(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str | Path:
    """The control database a test runs against, once on each engine.

    The workspace follows it too ($EDGELOOP_CONTROL_DB), so CLI commands and daemons
    the test starts use the same database.
    """
    if request.param == "sqlite":
        return tmp_path / "control.sqlite"
    url = request.getfixturevalue("postgres").new_database()
    monkeypatch.setenv("EDGELOOP_CONTROL_DB", url)
    return url
