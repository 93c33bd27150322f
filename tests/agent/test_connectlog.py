"""Connection-failure reporting and the TLS settings of the broker address.

The TLS failures themselves are produced by a real Mosquitto and a real agent in
tests/integration/test_shipped_broker.py; here the summary schedule (with a clock
the test advances) and the configuration checks.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.connectlog import ConnectFailureLog
from edgeloop_agent.wire.network import BrokerAddress, BrokerAddressError, describe_connect_error
from tests.pki import CertificateAuthority


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_failure_is_logged_once_then_summarised(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    logger = logging.getLogger("test.connectlog")
    failures = ConnectFailureLog("mqtts://b:8883", logger, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.connectlog"):
        # paho's back-off: 1 s doubling to 15 s; 2 hours of a broken certificate.
        delay = 1.0
        while clock.now < 1000.0 + 7200:
            failures.failed("TLS certificate verify failed: self-signed certificate")
            clock.now += delay
            delay = min(delay * 2, 15.0)
        failures.failed("connection refused")
        failures.connected()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "cannot connect to mqtts://b:8883: TLS certificate verify failed: "
        "self-signed certificate; retrying in 1 s"
    )
    # One line per step of paho's back-off (waits of 2, 4, 8 s, then every 15 s),
    # not one per attempt.
    steps = [ln for ln in lines if ln.startswith("cannot connect to mqtts://b:8883 yet")]
    assert [s.split("); ")[-1] for s in steps] == [
        "next attempt in 2 s",
        "next attempt in 4 s",
        "next attempt in 8 s",
        "retrying every 15 s",
    ]
    assert steps[0] == (
        "cannot connect to mqtts://b:8883 yet: TLS certificate verify failed: "
        "self-signed certificate (2 attempts in 1 s); next attempt in 2 s"
    )
    assert lines[1:5] == steps
    summaries = [ln for ln in lines if ln.startswith("still cannot connect")]
    # gaps of 1, 2, 4, ... minutes up to an hour: at 1, 3, 7, 15, 31 and 63 minutes,
    # 6 lines for ~480 attempts in two hours
    assert len(summaries) == 6, lines
    assert summaries[-1].endswith("(256 attempts in 3780 s)")
    assert "attempts in" in summaries[0]
    assert len(lines) == 1 + 4 + 6 + 2  # ~480 attempts in two hours
    assert lines[-2] == "cannot connect to mqtts://b:8883: connection refused; retrying in 15 s"
    assert lines[-1].startswith("connected to mqtts://b:8883 after ")
    assert failures.attempts == 0


def test_describe_names_the_tls_problem_and_the_fix():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = 20
    exc.verify_message = "unable to get local issuer certificate"
    text = describe_connect_error(exc, "/etc/edgeloop/ca.crt")
    assert text == (
        "TLS certificate verify failed: unable to get local issuer certificate "
        "(the broker's certificate is not signed by a CA in CA file /etc/edgeloop/ca.crt)"
    )
    assert describe_connect_error(ConnectionRefusedError(111, "Connection refused")).startswith(
        "connection refused"
    )


def test_broker_url_tls_options(tmp_path: Path):
    ca = CertificateAuthority(tmp_path)
    addr = BrokerAddress.parse(f"mqtts://d1:secret@broker:8883?ca_file={ca.cert}")
    assert (addr.host, addr.port, addr.tls, addr.ca_file) == ("broker", 8883, True, str(ca.cert))
    assert "secret" not in str(addr)
    with pytest.raises(BrokerAddressError, match="not mqtts://"):
        BrokerAddress.parse(f"mqtt://broker:1883?ca_file={ca.cert}")
    with pytest.raises(BrokerAddressError, match="does not exist"):
        BrokerAddress.parse("mqtts://broker?ca_file=/nonexistent/ca.crt")
    with pytest.raises(BrokerAddressError, match="unknown option cafile") as err:
        BrokerAddress.parse("mqtts://d1:secret@broker?cafile=x")
    assert "secret" not in str(err.value)
    cfg = AgentConfig(device_id="d1", broker="mqtts://broker", ca_file=str(ca.cert))
    assert cfg.validate().broker_address.ca_file == str(ca.cert)
    with pytest.raises(ConfigError, match="does not exist"):
        AgentConfig(device_id="d1", broker="mqtts://broker", ca_file="/nope").validate()


def test_agent_cli_refuses_a_missing_ca_file_with_exit_2(tmp_path: Path):
    run = subprocess.run(
        [
            *(sys.executable, "-m", "edgeloop_agent.cli", "--broker", "mqtts://b:8883"),
            *("--device-id", "d1", "--state-dir", str(tmp_path), "--ca-file", "/nope/ca.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "edgeloop-agent: error: CA file /nope/ca.crt does not exist or is not a file"
    )
