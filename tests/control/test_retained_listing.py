"""ControlClient.retained: a complete listing of retained messages, ended by a barrier
message the client sends itself (the broker delivers it after every retained message of
the subscription), or by a quiet period when the broker will not carry the barrier."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from tests.mqtt_helpers import Probe

DEVICES = 1000


def publish_statuses(url: str, n: int) -> None:
    probe = Probe(url)
    try:
        for i in range(n):
            probe.client.publish(f"edgeloop/d{i:04d}/status", f'{{"i": {i}}}', qos=1, retain=True)
        # The last one acknowledged: every earlier one is stored (one connection, in order).
        probe.publish("edgeloop/last/status", '{"i": -1}', retain=True)
    finally:
        probe.close()


def listing(url: str, *, settle: float, timeout: float) -> tuple[set[str], float]:
    client = ControlClient(url).connect()
    try:
        t0 = time.monotonic()
        msgs = client.retained("edgeloop/+/status", settle=settle, timeout=timeout)
        return {m.topic for m in msgs}, time.monotonic() - t0
    finally:
        client.close()


def test_the_barrier_ends_a_complete_listing_without_the_quiet_period(broker) -> None:
    publish_statuses(broker.url, DEVICES)
    want = {f"edgeloop/d{i:04d}/status" for i in range(DEVICES)} | {"edgeloop/last/status"}
    for _ in range(3):
        topics, took = listing(broker.url, settle=30.0, timeout=60.0)
        assert topics == want
        # Ended by the barrier, not by 30 s without a message (nor the 60 s timeout).
        assert took < 30.0


def test_a_listing_is_empty_when_nothing_is_retained(broker) -> None:
    topics, took = listing(broker.url, settle=30.0, timeout=60.0)
    assert topics == set()
    assert took < 30.0


class AclBroker(PrivateBroker):
    """Anonymous clients may write device statuses but not the barrier topic."""

    def write_config(self) -> Path:
        path = super().write_config()
        acl = self.workdir / "acl"
        acl.write_text("topic readwrite edgeloop/+/status\n")
        with path.open("a") as fh:
            fh.write(f"acl_file {acl}\n")
        return path


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    b = AclBroker(tmp_path / "acl-broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_without_the_barrier_the_quiet_period_ends_a_complete_listing(acl_broker) -> None:
    publish_statuses(acl_broker.url, 200)
    topics, took = listing(acl_broker.url, settle=0.5, timeout=60.0)
    assert len(topics) == 201
    assert 0.5 <= took < 60.0
