"""Shared fixtures: every test that needs MQTT gets its own real Mosquitto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# rich fixes a console's width for good when COLUMNS is set as the console is made, and the
# CLI's consoles are made at import: import them here, before any test (or pytest-xdist's
# worker environment) sets COLUMNS, so each CliRunner's COLUMNS is the width it gets.
os.environ.pop("COLUMNS", None)
import edgeloop_control.cli.common  # noqa: F401, I001

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.mqtt_helpers import AgentProcess, Probe
from tests.pgserver import PostgresServer, follow_engine


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--control-db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the control database every test's workspace uses (default: sqlite; modules "
        "marked both_engines run on both whatever this says)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_engines: run the module's tests on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_engines") is not None:
        if "control_engine" not in metafunc.fixturenames:
            metafunc.fixturenames.append("control_engine")
        metafunc.parametrize("control_engine", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def control_engine(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", None) or request.config.getoption("--control-db"))


@pytest.fixture(autouse=True)
def _control_db_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL, each test gets a fresh database, and every workspace (CLI commands and
    daemons the test starts included) uses it through $EDGELOOP_CONTROL_DB."""
    engine = (
        request.getfixturevalue("control_engine")
        if "control_engine" in request.fixturenames
        else request.config.getoption("--control-db")
    )
    if engine == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
        monkeypatch.setenv("EDGELOOP_CONTROL_DB", url)
        if "fleet_history" in request.fixturenames:  # the shared history, on this engine
            follow_engine(request.getfixturevalue("fleet_history").ws.root)


@pytest.fixture
def control_db_location(control_engine: str, tmp_path: Path) -> str | Path:
    """The control database a test runs against: the engine's ($EDGELOOP_CONTROL_DB on
    PostgreSQL, set by _control_db_engine), else a SQLite file."""
    return os.environ.get("EDGELOOP_CONTROL_DB") or tmp_path / "control.sqlite"
