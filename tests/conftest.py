"""Shared fixtures: every test that needs MQTT gets its own real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from tests.mqtt_helpers import AgentProcess, Probe


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
