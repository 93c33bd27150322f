"""The arm64 edgeloop-agent package, installed and run under qemu-user emulation.

A Debian 12 arm64 tree (cached debootstrap) runs aarch64 binaries through
qemu-user-static: dpkg installs the package there (its postinst builds the venv
from the aarch64 wheels with the tree's own python3), the agent is enrolled and
started, serves a signed gradient-boosting model from the host's Mosquitto, and
answers the same rows as an amd64 agent with the same predictions.

Emulation is slow and there is no systemd in a chroot: this tests function,
not speed or the unit (tests/system/test_deb_systemd.py does that on amd64).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.signing import generate_keypair
from tests.integration.models import sample_features, sensor_model
from tests.mqtt_helpers import AgentProcess
from tests.system.debian import Arm64Chroot, skip_reason_arm64, unpack_rootfs
from tests.system.fleet import TRUSTED_KEY, deploy_signed, enrolment_files

ARM = "arm64-pump-1"
AMD = "amd64-pump-1"


@pytest.fixture(scope="module")
def arm64_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Chroot]:
    reason = skip_reason_arm64()
    if reason:
        pytest.skip(reason)
    root = unpack_rootfs("arm64", tmp_path_factory.mktemp("arm64") / "root")
    try:
        yield Arm64Chroot(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def arm64_agent_log(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_arm64_package_serves_the_same_predictions_as_amd64(
    arm64_tree: Arm64Chroot, agent_deb_arm64: Path, broker, probe, agents, arm64_agent_log, tmp_path
):
    tree = arm64_tree
    assert tree.run("uname", "-m").stdout.strip() == "aarch64"
    (tree.root / "root" / agent_deb_arm64.name).write_bytes(agent_deb_arm64.read_bytes())
    t0 = time.monotonic()
    tree.run("dpkg", "-i", f"/root/{agent_deb_arm64.name}", timeout=900)
    print(f"arm64 dpkg -i under qemu took {time.monotonic() - t0:.1f} s")
    arch = tree.run(
        "/opt/edgeloop-agent/venv/bin/python", "-c", "import platform; print(platform.machine())"
    )
    assert arch.stdout.strip() == "aarch64"

    generate_keypair(tmp_path / "signing.key", tmp_path / "signing.pub")
    for path, (data, mode) in enrolment_files(broker.url, ARM, tmp_path / "signing.pub").items():
        target = tree.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    log = open(tmp_path / "arm64-agent.log", "wb")  # noqa: SIM115 - closed below
    arm64_agent_log.append(
        subprocess.Popen(
            tree.argv(
                "/usr/bin/edgeloop-agent",
                "--config",
                "/etc/edgeloop/agent.toml",
                "--state-dir",
                "/var/lib/edgeloop-agent",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    agents.append(
        AgentProcess(
            broker_url=broker.url,
            device_id=AMD,
            state_dir=tmp_path / "amd64-state",
            extra=["--trusted-key", str(tmp_path / "signing.pub")],
        ).start()
    )
    model = sensor_model("v1", algo="hgb")
    probe.subscribe("edgeloop/+/status")
    probe.subscribe("replies/#")
    for revision, device in enumerate((ARM, AMD), start=1):
        deploy_signed(probe, device, revision, model, tmp_path / "signing.key")
    # Both statuses in one pass over the probe's queue (waiting for one device
    # at a time would drop the other's messages). Emulated start-up is slow.
    serving: set[str] = set()
    deadline = time.monotonic() + 240
    while serving != {ARM, AMD}:
        msg = probe.next(max(0.1, deadline - time.monotonic()))
        device = msg.topic.split("/")[1]
        if msg.topic.endswith("/status") and msg.payload:
            status = json.loads(msg.payload)
            if [m.get("version") for m in status.get("models") or []] == ["v1"]:
                serving.add(device)
    rows = sample_features(40, seed=7)
    replies = {}
    for device in (ARM, AMD):
        probe.publish(
            f"edgeloop/{device}/predict",
            {"id": f"rows-{device}", "rows": rows},
            response_topic=f"replies/{device}",
        )
        replies[device] = probe.next_json(120, topic=f"replies/{device}")
    log.close()
    arm, amd = replies[ARM]["predictions"], replies[AMD]["predictions"]
    assert len(arm) == len(amd) == len(rows), (tmp_path / "arm64-agent.log").read_text()
    worst = 0.0
    for a, b in zip(arm, amd, strict=True):
        assert a["prediction"] == b["prediction"]
        for cls, p in b["probabilities"].items():
            worst = max(worst, abs(a["probabilities"][cls] - p))
    print(f"max |p_arm64 - p_amd64| over {len(rows)} rows: {worst:.2e}")
    assert worst <= 1e-5
    assert TRUSTED_KEY in (tree.root / "etc/edgeloop/agent.toml").read_text()
