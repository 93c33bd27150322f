"""Fixtures of the package tests: the .debs, built once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.enrolled import EnrolledSite
from tests.system.debian import BootedContainer, build_deb, skip_reason_system, unpack_rootfs

# The version an upgrade test installs over the current one ("+" sorts after).
UPGRADE_SUFFIX = "+upgrade1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A cold cache (debootstrap, wheel downloads) takes minutes in the first
    # test's fixtures; warm, each test takes seconds to about a minute.
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def deb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = skip_reason_system()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp("debs")


@pytest.fixture(scope="session")
def agent_deb_amd64(deb_dir: Path) -> Path:
    return build_deb("edgeloop-agent", "amd64", deb_dir)


@pytest.fixture(scope="session")
def agent_deb_amd64_upgrade(deb_dir: Path, agent_deb_amd64: Path) -> Path:
    version = agent_deb_amd64.name.split("_")[1] + UPGRADE_SUFFIX
    return build_deb("edgeloop-agent", "amd64", deb_dir, version=version)


@pytest.fixture(scope="session")
def agent_deb_arm64(deb_dir: Path) -> Path:
    return build_deb("edgeloop-agent", "arm64", deb_dir)


# The enrolment and self-update tests: a site (broker with certificates, workspace) on
# the host and a booted Debian container with today's agent package installed.
@pytest.fixture
def site(tmp_path: Path) -> Iterator[EnrolledSite]:
    s = EnrolledSite(tmp_path / "site").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def device(tmp_path: Path, agent_deb_amd64: Path) -> Iterator[BootedContainer]:
    root = unpack_rootfs("amd64", tmp_path / "root")
    (root / "root" / agent_deb_amd64.name).write_bytes(agent_deb_amd64.read_bytes())
    ct = BootedContainer(root, tmp_path / "console.log").boot()
    try:
        ct.run("dpkg", "-i", f"/root/{agent_deb_amd64.name}", timeout=300)
        yield ct
    finally:
        ct.poweroff()
        shutil.rmtree(root, ignore_errors=True)
