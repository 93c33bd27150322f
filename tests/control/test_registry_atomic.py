"""Registry writes are all or nothing.

A name that cannot be a tag is refused before git is touched; a real failure
after the first write (a tag that cannot be created, a DVC remote that cannot
take the push) leaves the repository exactly as it was: same branch head, clean
working tree and index, no new tag, no version listed, and the next
registration gets v1 as if nothing had happened.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry, RegistryError
from tests.control.test_registry import tiny_onnx


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry.for_workspace(Workspace.init(tmp_path / "ws"))


def _snapshot(reg: Registry) -> tuple[str, str, str, list[str]]:
    return (
        _git(reg.root, "rev-parse", "HEAD"),
        _git(reg.root, "status", "--porcelain", "--untracked-files=all"),
        _git(reg.root, "tag", "--list"),
        sorted(p.name for p in (reg.root / "models").glob("*"))
        if (reg.root / "models").exists()
        else [],
    )


@pytest.mark.parametrize("name", ["m\n", "m\x01", "m/../x", "a" * 200, "", "m@v1"], ids=ascii)
def test_names_that_cannot_be_tags_are_refused_before_git(registry, name):
    before = _snapshot(registry)
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.register(name, tiny_onnx(1.0), {"algorithm": "x"})
    assert _snapshot(registry) == before


def test_a_failing_tag_rolls_the_commit_back(registry):
    before = _snapshot(registry)
    # A real git failure at the last step: another process "holds" the tag's lock.
    lock = registry.root / ".git" / "refs" / "tags" / "m@v1.0.0.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    with pytest.raises(Exception, match="git tag failed"):
        registry.register("m", tiny_onnx(1.0), {"algorithm": "x"})
    assert _snapshot(registry) == before
    assert registry.list() == []
    lock.unlink()
    mv = registry.register("m", tiny_onnx(1.0), {"algorithm": "x"})
    assert mv.version == "v1"
    assert _git(registry.root, "status", "--porcelain") == ""


def test_a_failing_dvc_push_leaves_nothing_behind(registry, tmp_path):
    registry.register("m", tiny_onnx(1.0), {"algorithm": "x"})
    before = _snapshot(registry)
    # The remote becomes a plain file: DVC adds to its cache, then cannot push.
    remote = Path(registry.remote or "")
    moved = tmp_path / "remote-away"
    remote.rename(moved)
    remote.write_text("not a directory")
    try:
        with pytest.raises(RegistryError, match="push"):
            registry.register("m", tiny_onnx(2.0), {"algorithm": "x"})
        assert _snapshot(registry) == before
        assert [v.version for v in registry.list("m")] == ["v1"]
    finally:
        remote.unlink()
        moved.rename(remote)
    assert registry.register("m", tiny_onnx(2.0), {"algorithm": "x"}).version == "v2"


def test_a_failing_promote_creates_no_tags(registry):
    registry.register("m", tiny_onnx(1.0), {"algorithm": "x"})
    registry.register("m", tiny_onnx(2.0), {"algorithm": "x"})
    registry.promote("m", "v1", "champion")
    tags = _git(registry.root, "tag", "--list")
    # Moving champion to v2 takes two tags: unassign from v1, assign to v2. Make
    # the second one fail for real.
    names = sorted(set(_git(registry.root, "tag", "--list").split()))
    counter = max(int(t.rsplit("#", 1)[1]) for t in names if "#" in t)
    lock = registry.root / ".git" / "refs" / "tags" / f"m#champion#{counter + 2}.lock"
    lock.write_text("")
    with pytest.raises(Exception, match="git tag failed"):
        registry.promote("m", "v2", "champion")
    assert _git(registry.root, "tag", "--list") == tags
    assert registry.stages("m") == {"champion": "v1"}
