"""What `make deb` puts in the agent packages, checked on the built .debs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


def deb_files(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", deb], check=True, capture_output=True, text=True)
    return [line.split()[-1].lstrip(".") for line in out.stdout.splitlines()]


def deb_field(deb: Path, field: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", deb, field], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_agent_package_is_lintian_clean_and_for_its_architecture(
    arch: str, agent_deb_amd64: Path, agent_deb_arm64: Path
):
    deb = {"amd64": agent_deb_amd64, "arm64": agent_deb_arm64}[arch]
    assert deb_field(deb, "Architecture") == arch
    # What remains after the package's own overrides (each explained in it)
    # fails the test. (As root lintian only warns on stderr that it is root.)
    lint = subprocess.run(
        ["lintian", "--fail-on", "error,warning", deb],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [ln for ln in lint.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert lint.returncode == 0 and not tags, lint.stdout + lint.stderr
    files = deb_files(deb)
    wheels = [Path(f).name for f in files if f.endswith(".whl")]
    assert any(w.startswith("onnxruntime-") for w in wheels)
    assert any(w.startswith("edgeloop_agent-") for w in wheels)
    # Binary wheels only for this architecture; none of the control node's libraries.
    for wheel in wheels:
        tag = wheel.removesuffix(".whl").split("-")[-1]
        assert tag == "any" or tag.endswith(MACHINE[arch]), wheel
        assert not wheel.startswith(("scikit_learn", "pandas", "scipy", "pyarrow")), wheel
    for path in (
        "/lib/systemd/system/edgeloop-agent.service",
        "/etc/edgeloop/agent.toml",
        "/opt/edgeloop-agent/requirements.txt",
        "/usr/share/doc/edgeloop-agent/copyright",
    ):
        assert path in files, path
    conffiles = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", deb], check=True, capture_output=True
    ).stdout
    assert b"conffiles" in conffiles
    unit = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True
    ).stdout
    assert b"ExecStart=/opt/edgeloop-agent/venv/bin/edgeloop-agent " in unit
    print(f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB (gzip)")
