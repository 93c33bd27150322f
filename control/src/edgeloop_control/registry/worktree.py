"""The registry's git working tree: one writer at a time, clean before a
registration, put back after a failed one, and the dvc.yaml annotation."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.gitrepo import GitRepo
from edgeloop_control.registry.model import ARTIFACT_NAME
from edgeloop_control.registry.refs import parse_semver, short_version
from edgeloop_control.registry.tagstate import ModelTags, Semver


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    # One writer at a time (daemon retraining vs. a CLI promote): tag counters
    # and version numbers are read-then-written.
    path = root / ".git" / "edgeloop-registry.lock"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def next_major(git: GitRepo, name: str, model: ModelTags) -> int:
    # Also look at committed directories: a crash between commit and tag must
    # not make the next registration reuse that directory.
    committed = git.run("ls-tree", "-d", "--name-only", "HEAD", f"models/{name}/")
    majors = [v[0] for v in model.versions]
    for line in committed.stdout.decode().splitlines():
        try:
            majors.append(parse_semver(line.rsplit("/", 1)[-1])[0])
        except RegistryError:
            continue
    return max(majors, default=0) + 1


def ensure_clean(root: Path, git: GitRepo, vdir: str) -> None:
    leftover = root / vdir
    if leftover.exists() and not git.tracked(vdir):
        # Debris of a registration that failed before its commit.
        shutil.rmtree(leftover)
    git.reset_index()
    dirty = git.status()
    if dirty:
        shown = "; ".join(line.strip() for line in dirty[:5])
        raise RegistryError(
            f"registry working tree at {root} has local changes ({shown}); "
            "commit or discard them (git status) before registering"
        )


def rollback(root: Path, git: GitRepo, before: str | None, vdir: str) -> None:
    """Undo a registration that failed part-way: a commit it made is dropped
    (the branch goes back to ``before``; ensure_clean guaranteed there were
    no local changes to lose), then its files are removed. The artifact may
    stay in the DVC cache and remote: content-addressed, unreferenced, and
    collected by ``dvc gc``; it registers nothing."""
    try:
        if before is not None and git.head() != before:
            git.run("reset", "-q", "--hard", before)
    finally:
        discard(root, git, vdir)


def discard(root: Path, git: GitRepo, vdir: str) -> None:
    git.reset_index()
    shutil.rmtree(root / vdir, ignore_errors=True)
    model_dir = (root / vdir).parent
    if model_dir.is_dir() and not any(model_dir.iterdir()):
        model_dir.rmdir()  # a first version's failure leaves no empty models/NAME
    if git.tracked("dvc.yaml"):
        git.run("checkout", "-q", "--", "dvc.yaml", check=False)
    else:
        (root / "dvc.yaml").unlink(missing_ok=True)


def write_dvc_yaml(root: Path, latest: dict[str, Semver]) -> None:
    # DVC's model-registry annotation: `dvc artifacts get REPO NAME --rev TAG`
    # and GTO find each model's file at any tagged commit.
    lines = ["# Managed by edgeloop: the latest version of each model.", "artifacts:"]
    for name in sorted(latest):
        path = f"models/{name}/{short_version(latest[name])}/{ARTIFACT_NAME}"
        lines += [f"  {name}:", f"    path: {path}", "    type: model"]
    (root / "dvc.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
