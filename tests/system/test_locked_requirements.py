"""packaging/locked_requirements.py picks the lock's pins for the Debian target."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.system.debian import PACKAGING, REPO

UV = REPO / ".tools" / "bin" / "uv"


def locked(package: str, arch: str) -> dict[str, str]:
    if not UV.exists():
        pytest.skip("uv is not bootstrapped (make setup)")
    export = subprocess.run(
        [
            UV,
            "export",
            "--quiet",
            "--frozen",
            "--package",
            package,
            "--no-dev",
            "--no-emit-workspace",
            "--project",
            REPO,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out = subprocess.run(
        [sys.executable, PACKAGING / "locked_requirements.py", arch],
        input=export,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        spec, *hashes = line.split()
        name, version = spec.split("==")
        assert hashes and all(h.startswith("--hash=sha256:") for h in hashes), line
        assert name not in pins, f"{name} pinned twice"
        pins[name] = version
    return pins


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_agent_requirements_are_the_python_311_branch_of_the_lock(arch: str):
    pins = locked("edgeloop-agent", arch)
    lock = (REPO / "uv.lock").read_text()
    # The lock pins numpy and onnxruntime differently per Python version; the
    # device's Python is Debian 12's 3.11, whatever Python runs the build.
    for name in ("numpy", "onnxruntime"):
        assert f'name = "{name}"\nversion = "{pins[name]}"' in lock
    assert "tomli" not in pins  # only for Python < 3.11
    assert "systemd-python" not in pins  # the optional extra is not packaged
    assert not {"scikit-learn", "pandas", "scipy", "pyarrow"} & set(pins)


def test_unknown_architecture_is_refused():
    result = subprocess.run(
        [sys.executable, PACKAGING / "locked_requirements.py", "riscv64"],
        input="",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "usage" in result.stderr
