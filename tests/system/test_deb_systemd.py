"""The edgeloop-agent package on Debian 12 under a real systemd (PID 1 in a container).

One booted container lives through a device's life, in order: install, enrol,
serve a signed model, restarts, a hung agent, an upgrade while serving, purge.
The tests of this module therefore run in the order they are written and share
the container; each asserts one stage.

Not testable here (docs/packaging.md): MemoryMax= enforcement (the host's
cgroups are hybrid/v1 and the container cannot enforce memory limits) and
anything that needs the host's own systemd.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.signing import generate_keypair
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import Probe
from tests.system.debian import BootedContainer, unpack_rootfs, wait_until
from tests.system.fleet import deploy_signed, enrolment_files

DEVICE = "deb-pump-1"
UNIT = "edgeloop-agent.service"
STATE = "/var/lib/private/edgeloop-agent"
# Files a purge may leave: the package database, logs, caches systemd keeps for
# itself (the journal, the random seed, timestamps) and scratch space.
# /var/lib/private itself (not what is in it) is systemd's, shared by every
# DynamicUser= service.
NOT_OURS = re.compile(
    r"^/(var/lib/dpkg|var/log|var/cache|var/lib/systemd|tmp|var/tmp|run|proc|sys|dev|root)(/|$)"
    r"|^/var/lib/private$"
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path_factory.mktemp("broker")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "signing.key", d / "signing.pub")
    return d / "signing.key", d / "signing.pub"


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory, agent_deb_amd64: Path
) -> Iterator[BootedContainer]:
    work = tmp_path_factory.mktemp("container")
    root = unpack_rootfs("amd64", work / "root")
    # /root, not /tmp: the booted container mounts a fresh tmpfs on /tmp.
    (root / "root" / agent_deb_amd64.name).write_bytes(agent_deb_amd64.read_bytes())
    ct = BootedContainer(root, work / "console.log").boot()
    try:
        yield ct
    finally:
        ct.poweroff()
        # ~450 MB of tree per run; the console log stays for a post-mortem.
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def probe(broker: PrivateBroker) -> Iterator[Probe]:
    p = Probe(broker.url)
    p.subscribe(f"edgeloop/{DEVICE}/status")
    p.subscribe("replies/#")
    try:
        yield p
    finally:
        p.close()


def tree_files(ct: BootedContainer) -> set[str]:
    out = ct.run("find", "/", "-xdev").stdout.split("\n")
    return {p for p in out if p and not NOT_OURS.match(p)}


def predict(probe: Probe, rid: str) -> dict:
    probe.publish(
        f"edgeloop/{DEVICE}/predict",
        {"id": rid, "features": sample_features(1)[0]},
        response_topic=f"replies/{rid}",
    )
    return probe.next_json(60, topic=f"replies/{rid}")


def main_pid(ct: BootedContainer) -> int:
    return int(ct.show(UNIT, "MainPID")["MainPID"])


def status_text(ct: BootedContainer) -> str:
    return ct.show(UNIT, "StatusText")["StatusText"]


def outbox_ids(ct: BootedContainer) -> list[str]:
    code = (
        "import sqlite3,sys;"
        f"c=sqlite3.connect('file:{STATE}/outbox.sqlite?mode=ro',uri=True);"
        "print('\\n'.join(r[0] for r in c.execute('select id from messages order by seq')))"
    )
    return ct.run("python3", "-c", code).stdout.split()


BEFORE: set[str] = set()


def test_install_builds_the_venv_and_enables_nothing(device: BootedContainer, agent_deb_amd64):
    BEFORE.update(tree_files(device))
    t0 = time.monotonic()
    device.run("dpkg", "-i", f"/root/{agent_deb_amd64.name}", timeout=300)
    print(f"dpkg -i took {time.monotonic() - t0:.1f} s")
    assert device.run("test", "-f", f"/lib/systemd/system/{UNIT}", check=False).returncode == 0
    assert device.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert device.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    conffiles = device.run("dpkg-query", "-W", "-f=${Conffiles}", "edgeloop-agent").stdout
    assert "/etc/edgeloop/agent.toml" in conffiles
    assert device.run("stat", "-c", "%a %U", "/etc/edgeloop/agent.toml").stdout.split() == [
        "600",
        "root",
    ]
    # The venv holds exactly the locked set, built with Debian's python3.
    py = device.run("/opt/edgeloop-agent/venv/bin/python", "--version").stdout
    assert py.startswith("Python 3.11.")
    freeze = device.run(
        "/opt/edgeloop-agent/venv/bin/python",
        "-c",
        "import importlib.metadata as m;"
        "print('\\n'.join(sorted(f\"{d.metadata['Name'].lower().replace('_','-')}=={d.version}\""
        " for d in m.distributions())))",
    ).stdout.split()
    locked = device.run("cat", "/opt/edgeloop-agent/requirements.txt").stdout.splitlines()
    assert sorted(freeze) == sorted(line.split()[0].lower() for line in locked)
    agent = device.run("/usr/bin/edgeloop-agent", "--version").stdout
    assert agent.startswith("edgeloop-agent ")
    # The agent never pulls in the control node's libraries.
    assert not [p for p in freeze if p.split("==")[0] in ("scikit-learn", "pandas", "scipy")]


def test_enrol_start_ready_and_serve_a_signed_model(device, broker, keys, probe):
    signing_key, public_key = keys
    files = enrolment_files(broker.url, DEVICE, public_key, telemetry_interval_s=2.0)
    for path, (data, mode) in files.items():
        device.write(path, data, mode)
    # enable --now returns once the agent said READY=1 (Type=notify).
    device.run("systemctl", "enable", "--now", UNIT, timeout=120)
    props = device.show(UNIT, "ActiveState", "SubState", "StatusText", "Type", "User")
    assert props["ActiveState"] == "active", props
    assert props["StatusText"] == "waiting for a model, connected", props
    artifact = sensor_model("v1")
    deploy_signed(probe, DEVICE, 1, artifact, signing_key)
    probe.wait_for(f"edgeloop/{DEVICE}/status", lambda s: s.get("revision") == 1, 60)
    wait_until(
        lambda: status_text(device).startswith("serving revision 1: "), 10, "STATUS= after deploy"
    )
    assert predict(probe, "r1")["version"] == "v1"
    # The journal has the agent's lines with their priority and the unit's fields.
    entries = [
        json.loads(line)
        for line in device.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout.split(
            "\n"
        )
        if line.strip()
    ]
    mine = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "edgeloop-agent"]
    assert mine, "no journal entries from the agent"
    assert all(e.get("_SYSTEMD_UNIT") == UNIT for e in mine)
    assert {"PRIORITY", "_PID", "_UID", "_SYSTEMD_INVOCATION_ID"} <= set(mine[-1])
    # The agent's "<N>" priority prefixes were parsed by journald, not logged.
    assert not [e for e in mine if re.match(r"<\d>", str(e.get("MESSAGE", "")))]
    text = device.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    assert any(str(e.get("MESSAGE", "")).startswith("edgeloop.agent: agent ") for e in mine), text


def test_ready_only_once_the_last_good_model_is_loaded(device, broker):
    # Broker away: READY comes only from the last good model, after the grace period.
    broker.stop()
    try:
        t0 = time.monotonic()
        device.run("systemctl", "restart", UNIT, timeout=120)
        waited = time.monotonic() - t0
        props = device.show(UNIT, "ActiveState", "StatusText")
        assert props["ActiveState"] == "active", props
        assert props["StatusText"].startswith("serving, broker unreachable: "), props
        assert waited >= 4.5, f"READY after {waited:.1f} s, before the 5 s grace period"
        journal = device.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
        assert "sensor@v1" in journal
    finally:
        broker.start()
    # Back on the broker: the request waits in the broker until the agent reconnects.
    # (STATUS= is not updated on reconnect: it keeps saying "broker unreachable".)
    p = Probe(broker.url)
    try:
        p.subscribe("replies/#")
        assert predict(p, "after-outage")["version"] == "v1"
    finally:
        p.close()


def test_watchdog_restarts_a_hung_agent(device, probe):
    device.write(
        f"/etc/systemd/system/{UNIT}.d/watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n"
    )
    device.run("systemctl", "daemon-reload")
    device.run("systemctl", "restart", UNIT, timeout=120)
    before = main_pid(device)
    restarts = int(device.show(UNIT, "NRestarts")["NRestarts"])
    # A hung agent: frozen, not dead (the minimal tree has no procps: the shell's kill).
    device.sh(f"kill -{signal.SIGSTOP.value} {before}")
    t0 = time.monotonic()
    wait_until(
        lambda: (
            main_pid(device) not in (0, before)
            and device.show(UNIT, "ActiveState")["ActiveState"] == "active"
        ),
        60,
        "systemd to restart the stopped agent",
    )
    print(f"watchdog kill and restart took {time.monotonic() - t0:.1f} s (WatchdogSec=3s)")
    assert int(device.show(UNIT, "NRestarts")["NRestarts"]) == restarts + 1
    journal = device.run("journalctl", "-u", UNIT, "--no-pager").stdout
    assert "Watchdog timeout" in journal
    assert predict(probe, "after-watchdog")["version"] == "v1"
    device.run("rm", "-r", f"/etc/systemd/system/{UNIT}.d")
    device.run("systemctl", "daemon-reload")


def state_owners(ct: BootedContainer) -> set[str]:
    return set(ct.run("find", STATE, "-printf", "%U:%G\\n").stdout.split())


def agent_user(ct: BootedContainer) -> list[str]:
    # /proc/PID belongs to the process' user and group.
    return ct.run("stat", "-c", "%u %g", f"/proc/{main_pid(ct)}").stdout.split()


def test_dynamic_user_owns_the_state_directory_across_restarts(device):
    owners = set()
    for _ in range(2):
        user, group = agent_user(device)
        # systemd's range for dynamic users (the minimal tree has no nss-systemd
        # to name them).
        assert 61184 <= int(user) <= 65519, user
        assert state_owners(device) == {f"{user}:{group}"}
        owners.add(user)
        device.run("systemctl", "restart", UNIT, timeout=120)
    assert device.run("stat", "-c", "%a", STATE).stdout.strip() == "700"
    assert device.run("readlink", "/var/lib/edgeloop-agent").stdout.strip() == (
        "private/edgeloop-agent"
    )


def test_upgrade_while_serving_keeps_model_outbox_and_ownership(
    device, broker, agent_deb_amd64_upgrade
):
    device.write(f"/root/{agent_deb_amd64_upgrade.name}", agent_deb_amd64_upgrade.read_bytes())
    # The broker goes away so the outbox fills up with telemetry nobody can take.
    broker.stop()
    try:
        wait_until(lambda: len(outbox_ids(device)) >= 3, 60, "telemetry queued in the outbox")
        queued = outbox_ids(device)
        old_pid = main_pid(device)
        t0 = time.monotonic()
        device.run("dpkg", "-i", f"/root/{agent_deb_amd64_upgrade.name}", timeout=300)
        print(f"upgrade (dpkg -i, venv rebuild, restart) took {time.monotonic() - t0:.1f} s")
        new_version = agent_deb_amd64_upgrade.name.split("_")[1]
        assert device.run("readlink", "/opt/edgeloop-agent/venv").stdout.strip() == (
            f"venv-{new_version}"
        )
        assert device.run("ls", "/opt/edgeloop-agent").stdout.split() == [
            "requirements.txt",
            "venv",
            f"venv-{new_version}",
            "wheels",
        ]
        # postinst restarted it (it was running), and it serves the last good model.
        wait_until(
            lambda: device.show(UNIT, "ActiveState")["ActiveState"] == "active", 60, "restart"
        )
        assert main_pid(device) != old_pid
        assert status_text(device).startswith("serving, broker unreachable: ")
        assert set(queued) <= set(outbox_ids(device)), "the upgrade lost queued outbox messages"
        user, group = agent_user(device)
        assert state_owners(device) == {f"{user}:{group}"}
        # The enrolment's config (a changed conffile) is untouched.
        assert DEVICE in device.run("cat", "/etc/edgeloop/agent.toml").stdout
    finally:
        broker.start()
    p = Probe(broker.url)
    try:
        p.subscribe("replies/#")
        assert predict(p, "after-upgrade")["version"] == "v1"
    finally:
        p.close()


def test_security_exposure(device):
    out = device.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"systemd-analyze security {UNIT} (systemd 252, running unit): {exposure}")
    assert exposure <= 2.0, out


def test_purge_leaves_nothing(device):
    device.run("dpkg", "--purge", "edgeloop-agent", timeout=120)
    assert device.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    left = tree_files(device) - BEFORE
    assert not left, f"purge left: {sorted(left)}"
    for path in ("/opt/edgeloop-agent", "/etc/edgeloop", STATE, "/var/lib/edgeloop-agent"):
        assert device.run("test", "-e", path, check=False).returncode != 0, path
