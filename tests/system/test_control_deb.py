"""The edgeloop-control package under a real systemd, in a booted Debian 12 container.

Opt-in (EDGELOOP_TEST_CONTROL_DEB=1): building the 200 MB package and installing
its ~160 wheels takes about 4 minutes, beyond the suite's budget for these
tests. Run it when the packaging or the control unit changes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.debian import BootedContainer, build_deb, unpack_rootfs

UNIT = "edgeloop-control.service"
WORKSPACE = "/var/lib/edgeloop-control"

pytestmark = pytest.mark.skipif(
    os.environ.get("EDGELOOP_TEST_CONTROL_DEB") != "1",
    reason="opt-in: EDGELOOP_TEST_CONTROL_DEB=1 (about 4 minutes: a 200 MB package)",
)


@pytest.fixture(scope="module")
def control_node(
    tmp_path_factory: pytest.TempPathFactory, deb_dir: Path
) -> Iterator[tuple[BootedContainer, Path]]:
    deb = build_deb("edgeloop-control", "amd64", deb_dir)
    work = tmp_path_factory.mktemp("control-container")
    root = unpack_rootfs("amd64", work / "root")
    (root / "root" / deb.name).write_bytes(deb.read_bytes())
    ct = BootedContainer(root, work / "console.log").boot()
    try:
        yield ct, deb
    finally:
        ct.poweroff()
        shutil.rmtree(root, ignore_errors=True)


def test_control_package_installs_runs_sandboxed_and_purges(control_node, broker):
    ct, deb = control_node
    # apt resolves git (and the recommended mosquitto) from the Debian mirror.
    ct.run("apt-get", "update", "-q", timeout=300)
    ct.run("apt-get", "install", "-y", "-q", f"/root/{deb.name}", timeout=900)
    assert ct.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert "edgeloop" in ct.run("id", "-un", "edgeloop").stdout
    ct.run("install", "-d", "-o", "edgeloop", "-g", "edgeloop", "-m", "0750", WORKSPACE)
    ct.run(
        "runuser",
        "-u",
        "edgeloop",
        "--",
        "edgeloop",
        "--broker",
        broker.url,
        "init",
        WORKSPACE,
        timeout=300,
    )
    ct.run("systemctl", "start", UNIT, timeout=120)
    journal = ""
    for _ in range(60):
        journal = ct.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
        if "control daemon for" in journal:
            break
        ct.run("sleep", "0.5")
    assert "control daemon for /var/lib/edgeloop-control" in journal, journal
    assert ct.show(UNIT, "ActiveState")["ActiveState"] == "active"
    out = ct.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    assert "Overall exposure level for edgeloop-control.service: 1.1" in out, out
    ct.run("dpkg", "--purge", "edgeloop-control", timeout=300)
    for path in ("/opt/edgeloop-control", WORKSPACE):
        assert ct.run("test", "-e", path, check=False).returncode != 0, path
    assert ct.run("id", "edgeloop", check=False).returncode != 0
