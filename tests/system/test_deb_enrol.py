"""Enrolment on a packaged device under a real systemd (PID 1 in a container).

The control node issues a certificate identity and a bundle (``enrol()``); inside a
booted Debian 12 container with the edgeloop-agent package installed,
``edgeloop-agent enroll`` installs it, writes the unit's credential drop-in and
enables the unit; the agent (a dynamic user, reading its root-only key through
``LoadCredential=``) connects to the host's Mosquitto with its certificate and
serves a signed model. Then ``revoke()``: the restarted agent cannot connect.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeloop_control.fleet.enrolment import enrol, revoke
from edgeloop_control.infra.db import ControlDB
from tests.integration.enrolled import CONTROL_PASSWORD, EnrolledSite
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import Probe
from tests.system.debian import BootedContainer, wait_until
from tests.system.fleet import deploy_signed

DEVICE = "deb-enrol-1"
UNIT = "edgeloop-agent.service"


def test_enroll_enables_the_unit_and_the_agent_serves_with_its_certificate(
    site: EnrolledSite, device: BootedContainer, tmp_path: Path
):
    db = ControlDB(site.ws.control_db)
    probe = Probe(
        f"mqtt://127.0.0.1:{site.port}", username="edgeloop-control", password=CONTROL_PASSWORD
    )
    try:
        bundle = enrol(site.ws, db, DEVICE, method="certificate", bundle=tmp_path / "b.bundle")
        device.write("/root/device.bundle", bundle.bundle.read_bytes(), 0o600)
        # A debootstrap minbase tree has no /etc/hosts (an installed Debian does): the
        # broker's certificate names "localhost", which must resolve.
        device.write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)
        done = device.run("/usr/bin/edgeloop-agent", "enroll", "/root/device.bundle", timeout=120)
        assert f"enabled {UNIT}" in done.stdout, done.stdout + done.stderr
        assert device.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
        modes = device.run(
            "stat",
            "-c",
            "%n %a %U",
            *[f"/etc/edgeloop/{n}" for n in ("agent.toml", "client.key", "client.crt", "ca.crt")],
        ).stdout.split("\n")
        assert "/etc/edgeloop/agent.toml 600 root" in modes
        assert "/etc/edgeloop/client.key 600 root" in modes
        assert "/etc/edgeloop/client.crt 644 root" in modes

        probe.subscribe(f"edgeloop/{DEVICE}/status")
        device.run("systemctl", "start", UNIT, timeout=120)
        try:
            wait_until(
                lambda: ", connected" in device.show(UNIT, "StatusText")["StatusText"],
                60,
                "the agent connected with its certificate",
            )
        except TimeoutError:
            journal = device.run("journalctl", "-u", UNIT, "--no-pager", check=False).stdout
            raise AssertionError(journal[-4000:]) from None
        deploy_signed(probe, DEVICE, 1, sensor_model("v1"), site.ws.signing_key_path)
        probe.wait_for(f"edgeloop/{DEVICE}/status", lambda s: s.get("revision") == 1, 60)
        probe.subscribe(f"edgeloop/{DEVICE}/predictions")
        probe.publish(f"edgeloop/{DEVICE}/predict", {"id": "r1", "features": sample_features(1)[0]})
        reply = probe.wait_for(f"edgeloop/{DEVICE}/predictions", lambda r: r.get("id") == "r1")
        assert "prediction" in reply, reply
        assert f"u'{DEVICE}'" in site.log()  # known to the broker by its certificate

        revoke(site.ws, db, DEVICE)
        device.run("systemctl", "restart", "--no-block", UNIT, timeout=60)
        deadline = time.monotonic() + 60
        while "certificate verify failed" not in site.log().split("Reloading config")[-1]:
            assert time.monotonic() < deadline, site.log()[-3000:]
            time.sleep(0.5)
    finally:
        probe.close()
        db.close()
