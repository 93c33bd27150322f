"""Every paho client of the control node comes from ``infra.mqtt.new_client``, so each
one reaches a broker that wants a password and TLS (the shipped Mosquitto set-up)."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_control.demo.fleetsim import DemoClient
from edgeloop_control.infra.mqtt import BrokerError, ControlClient, new_client
from tests.shipped_broker import ShippedBroker


@pytest.fixture
def shipped(tmp_path: Path):
    with ShippedBroker(tmp_path / "broker", ["edgeloop-control"]) as broker:
        yield broker


def test_new_client_carries_credentials_tls_and_no_delay(shipped: ShippedBroker) -> None:
    url = f"{shipped.tls_url('edgeloop-control')}?ca_file={shipped.ca.cert}"
    client = new_client(BrokerAddress.parse(url), "edgeloop-control-test", manual_ack=True)
    assert client.on_socket_open is not None  # Nagle off on every control connection
    assert client.connect("localhost", shipped.tls_port, keepalive=30) == mqtt.MQTT_ERR_SUCCESS
    client.disconnect()


def test_demo_app_reaches_a_broker_that_wants_a_password(shipped: ShippedBroker) -> None:
    # The demo's app client used to drop the URL's user, password and CA file.
    url = f"{shipped.tls_url('edgeloop-control')}?ca_file={shipped.ca.cert}"
    app = DemoClient(url)
    try:
        assert app.client.is_connected()
    finally:
        app.close()


def test_a_wrong_password_is_refused_in_one_line(shipped: ShippedBroker) -> None:
    url = f"mqtts://edgeloop-control:wrong@localhost:{shipped.tls_port}?ca_file={shipped.ca.cert}"
    client = ControlClient(url)
    with pytest.raises(BrokerError, match="refused the connection: Not authorized") as err:
        client.connect(timeout=3)
    assert "\n" not in str(err.value)
    assert "wrong" not in str(err.value)  # never the password
