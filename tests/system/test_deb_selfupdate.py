"""The agent updates itself, on a packaged device under a real systemd.

Inside a booted Debian 12 container: the current edgeloop-agent .deb is installed
and enrolled (as test_deb_enrol does) and serves a signed model from the host's
broker. The control side rolls the "+upgrade1" package out (``edgeloop rollout
start edgeloop-agent=VERSION``: ``RolloutManager`` driven as ``--wait`` drives it),
which publishes it and names it in the device's signed desired state; the
agent fetches and verifies it and writes its request; the path unit starts the
root one-shot, which installs it and restarts the agent, which comes back READY
on the new version and still serves. Then a broken package (its entry point
exits 1) is rolled back: the one-shot reinstalls the version it replaced, which
serves again, the agent reports ``rolled_back`` with the reason, and the rollout's
gate fails on that report and rolls the rollout back; so is a package whose agent
never reports READY, once the one-shot's timeout runs out. A package that runs
but fails the rollout's health gate is rolled back by the rollout: its rollback
document names the package the device ran, which the device installs again. Purge
leaves nothing of the self-update behind.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.fleet.agentpackages import AgentPackages
from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.fleet.enrolment import enrol
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.policies.rollout import (
    COMPLETED,
    FINAL,
    ROLLED_BACK,
    RolloutConfig,
    RolloutManager,
)
from edgeloop_control.policies.rollout.feed import BrokerFeed
from tests.integration.enrolled import CONTROL_PASSWORD, EnrolledSite
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import Probe
from tests.system.debian import BootedContainer, build_deb, wait_until

DEVICE = "deb-update-1"
UNIT = "edgeloop-agent.service"
STATUS = f"edgeloop/{DEVICE}/status"
# The soak needs a telemetry report after loading (the test sets the interval to 2 s).
CONFIG = RolloutConfig(soak_s=1.0, batch_timeout_s=180.0, max_p99_ms=1000.0)


def _sabotaged(deb_dir: Path, base: Path, work: Path, suffix: str, entry_point: str) -> Path:
    """A real package of the agent whose postinst then replaces the agent's entry
    point with ``entry_point`` (a shell script body)."""
    version = base.name.split("_")[1] + suffix
    built = build_deb("edgeloop-agent", "amd64", work / f"build{suffix}", version=version)
    tree = work / f"tree{suffix}"
    subprocess.run(["dpkg-deb", "-R", built, tree], check=True)
    postinst = tree / "DEBIAN" / "postinst"
    text = postinst.read_text()
    assert "        build_venv\n" in text
    script = "#!/bin/sh\\n" + entry_point + "\\n"
    postinst.write_text(
        text.replace(
            "        build_venv\n",
            f"        build_venv\n        printf '{script}' >\"$VENV/bin/edgeloop-agent\"\n",
            1,
        )
    )
    out = deb_dir / f"edgeloop-agent_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", tree, out],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def broken_deb(deb_dir: Path, agent_deb_amd64: Path, tmp_path: Path) -> Path:
    """The new agent exits 1 at once."""
    return _sabotaged(deb_dir, agent_deb_amd64, tmp_path, "+broken1", "exit 1")


@pytest.fixture
def upgrade2_deb(deb_dir: Path, agent_deb_amd64: Path, tmp_path: Path) -> Path:
    version = agent_deb_amd64.name.split("_")[1] + "+upgrade2"
    return build_deb("edgeloop-agent", "amd64", deb_dir, version=version)


@pytest.fixture
def hanging_deb(deb_dir: Path, agent_deb_amd64: Path, tmp_path: Path) -> Path:
    """The new agent runs and never sends READY=1."""
    return _sabotaged(deb_dir, agent_deb_amd64, tmp_path, "+hang1", "exec sleep 3600")


def _update_state(status: dict[str, Any]) -> tuple[str | None, str | None]:
    update = status.get("agent_update") or {}
    return status.get("agent_package_version"), update.get("state")


def _journal(ct: BootedContainer) -> str:
    out = ct.run(
        "journalctl", "-u", UNIT, "-u", "edgeloop-agent-update.service", "--no-pager", check=False
    )
    return out.stdout[-6000:]


def test_agent_upgrades_itself_and_a_broken_package_is_rolled_back(
    site: EnrolledSite,
    device: BootedContainer,
    agent_deb_amd64: Path,
    agent_deb_amd64_upgrade: Path,
    broken_deb: Path,
    hanging_deb: Path,
    upgrade2_deb: Path,
    tmp_path: Path,
):
    db = ControlDB(site.ws.control_db)
    probe = Probe(
        f"mqtt://127.0.0.1:{site.port}", username="edgeloop-control", password=CONTROL_PASSWORD
    )
    client = ControlClient(
        f"mqtt://edgeloop-control:{CONTROL_PASSWORD}@127.0.0.1:{site.port}"
    ).connect()
    try:
        bundle = enrol(site.ws, db, DEVICE, method="certificate", bundle=tmp_path / "b.bundle")
        device.write("/root/device.bundle", bundle.bundle.read_bytes(), 0o600)
        device.write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)
        device.run("/usr/bin/edgeloop-agent", "enroll", "/root/device.bundle", timeout=120)
        # Telemetry every 2 s, not 10: the rollouts' soak waits for a report.
        device.sh("echo 'telemetry_interval_s = 2.0' >>/etc/edgeloop/agent.toml")
        # Enrolment armed the trigger; the one-shot is only ever started by it.
        path_unit = device.show("edgeloop-agent-update.path", "ActiveState", "UnitFileState")
        assert path_unit == {"ActiveState": "active", "UnitFileState": "enabled"}, path_unit
        device.write(
            "/etc/systemd/system/edgeloop-agent-update.service.d/timeout.conf",
            "[Service]\nEnvironment=EDGELOOP_UPDATE_READY_TIMEOUT=15\n",
        )
        device.run("systemctl", "daemon-reload")
        probe.subscribe(STATUS)
        device.run("systemctl", "start", UNIT, timeout=120)

        desired = DesiredState.for_workspace(site.ws, db, client)
        model = sensor_model("v1")
        desired.publish_artifact(model, model.data)
        desired.publish(DEVICE, desired.plan(DEVICE, [(model, 100.0)], []))
        first = probe.wait_for(STATUS, lambda s: s.get("revision") == 1, 90)
        old_version = agent_deb_amd64.name.split("_")[1]
        assert _update_state(first) == (old_version, "idle"), first

        # 1. A good upgrade: a staged rollout of the "+upgrade1" package, gated on the
        # device reporting the new version (and its telemetry after the soak).
        store = AgentPackages.for_workspace(site.ws)
        upgrade = store.add(agent_deb_amd64_upgrade)
        new_version = upgrade.package.version
        feed = BrokerFeed(client, db, site.ws.topic_prefix)
        manager = RolloutManager(site.ws, db, client, config=CONFIG)
        # The control DB knows the device is online (as `--wait` does, which takes the
        # retained statuses in first): an offline device would not be waited for.
        wait_until(
            lambda: (
                feed.pump() >= 0
                and ((db.device(DEVICE) or {}).get("status") or {}).get("revision") == 1
            ),
            30,
            "the device's status in the control DB",
        )
        started = manager.start(f"edgeloop-agent={new_version}", devices=[DEVICE])
        info = _drive(feed, manager, started)
        assert info["state"] == COMPLETED, (info, _journal(device))
        # Judged on the new version, not passed as "offline": installing stops the agent.
        assert info["devices_loaded"] == 1, info
        probe.wait_for(STATUS, lambda s: _update_state(s) == (new_version, "done"), 60)
        installed = device.run("dpkg-query", "-W", "-f=${Version}", "edgeloop-agent").stdout
        assert installed == new_version
        assert device.show(UNIT, "ActiveState")["ActiveState"] == "active"
        _assert_serves(probe, "r1")
        # Only the new version's virtualenv is left.
        venvs = device.sh("ls -d /opt/edgeloop-agent/venv-*").stdout.split()
        assert venvs == [f"/opt/edgeloop-agent/venv-{new_version}"], venvs

        # 2. A broken package: the one-shot reinstalls the version it replaced, and the
        # rollout's gate sees the device's report and rolls the rollout back.
        broken = store.add(broken_deb)
        started = manager.start(f"edgeloop-agent={broken.package.version}", devices=[DEVICE])
        info = _drive(feed, manager, started)
        assert info["state"] == ROLLED_BACK, (info, _journal(device))
        assert "agent_update rolled_back" in info["failure"], info
        back = probe.wait_for(
            STATUS, lambda s: _update_state(s) == (new_version, "rolled_back"), 60
        )
        assert back["agent_update"]["version"] == broken.package.version
        assert "exited (status 1) before it reported READY" in back["agent_update"]["reason"]
        installed = device.run("dpkg-query", "-W", "-f=${Version}", "edgeloop-agent").stdout
        assert installed == new_version
        _assert_serves(probe, "r2")
        # 3. A package whose agent never reports READY: the one-shot's timeout
        # (EDGELOOP_UPDATE_READY_TIMEOUT, 15 s here) runs out and it goes back too.
        hanging = store.add(hanging_deb)
        started = manager.start(f"edgeloop-agent={hanging.package.version}", devices=[DEVICE])
        info = _drive(feed, manager, started)
        assert info["state"] == ROLLED_BACK, (info, _journal(device))
        assert "did not report READY within 15 s" in info["failure"], info
        installed = device.run("dpkg-query", "-W", "-f=${Version}", "edgeloop-agent").stdout
        assert installed == new_version
        _assert_serves(probe, "r3")

        # 4. A package that installs and runs but fails the rollout's health gate
        # (a p99 no agent meets): the rollback document names the package the device
        # ran before, and the device goes back to it through the same one-shot.
        upgrade2 = store.add(upgrade2_deb)
        started = manager.start(
            f"edgeloop-agent={upgrade2.package.version}",
            devices=[DEVICE],
            gates={"p99_ms": 0.0001, "min_requests": 1},
        )
        info = _drive(feed, manager, started, traffic=probe)
        assert info["state"] == ROLLED_BACK, (info, _journal(device))
        assert "p99 latency" in info["failure"], info
        probe.wait_for(STATUS, lambda s: _update_state(s) == (new_version, "done"), 180)
        installed = device.run("dpkg-query", "-W", "-f=${Version}", "edgeloop-agent").stdout
        assert installed == new_version
        _assert_serves(probe, "r4")

        # The request is consumed (the path unit does not loop) and not made again.
        spool = device.sh("ls -A /var/lib/private/edgeloop-agent/update").stdout.split()
        assert spool == ["result.json"], spool

        # 4. Purge leaves nothing of the self-update behind.
        device.run("dpkg", "--purge", "edgeloop-agent", timeout=120)
        left = device.sh(
            "ls -d /var/cache/edgeloop-agent /opt/edgeloop-agent /var/lib/private/edgeloop-agent "
            "/etc/systemd/system/*.wants/edgeloop-agent* /usr/libexec/edgeloop-agent "
            "/lib/systemd/system/edgeloop-agent* 2>/dev/null",
            check=False,
        ).stdout.split()
        assert left == [], left
        wait_until(
            lambda: (
                re.search(
                    r"inactive|not-found",
                    device.show("edgeloop-agent-update.path", "ActiveState", "LoadState")[
                        "LoadState"
                    ]
                    + device.show("edgeloop-agent-update.path", "ActiveState")["ActiveState"],
                )
                is not None
            ),
            10,
            "the path unit gone",
        )
    finally:
        client.close()
        probe.close()
        db.close()


def _drive(
    feed: BrokerFeed, manager: RolloutManager, info: dict[str, Any], traffic: Probe | None = None
) -> dict[str, Any]:
    """What `edgeloop rollout start --wait` does: ingest the fleet's reports, tick
    (with ``traffic``: a prediction request each round, for the health gates)."""
    deadline = time.monotonic() + 240
    while info["state"] not in FINAL and time.monotonic() < deadline:
        if traffic is not None:
            features = sample_features(1)[0]
            traffic.publish(f"edgeloop/{DEVICE}/predict", {"id": "load", "features": features})
        feed.pump()
        manager.tick()
        info = manager.status(info["id"])[0]
        time.sleep(0.5)
    return info


def _assert_serves(probe: Probe, rid: str) -> None:
    probe.subscribe(f"edgeloop/{DEVICE}/predictions")
    probe.publish(f"edgeloop/{DEVICE}/predict", {"id": rid, "features": sample_features(1)[0]})
    reply = probe.wait_for(f"edgeloop/{DEVICE}/predictions", lambda r: r.get("id") == rid, 60)
    assert "prediction" in reply, reply
