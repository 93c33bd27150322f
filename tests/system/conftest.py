"""Fixtures of the package tests: the .debs, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.debian import build_deb, skip_reason_system

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
