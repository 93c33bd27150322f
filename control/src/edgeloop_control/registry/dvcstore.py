"""Artifact storage through DVC's Python API (``dvc.repo.Repo``).

In-process calls instead of the ``dvc`` CLI: each CLI call costs about a second
of interpreter and plugin start-up, which would triple the time of a
registration. Only the long-standing ``Repo.init/add/push/pull`` entry points and
``Repo.config.edit`` are used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop_control.registry.errors import RegistryError

if TYPE_CHECKING:
    from dvc.repo import Repo

REMOTE_NAME = "storage"


@contextmanager
def _quiet() -> Iterator[None]:
    # DVC's import installs handlers that print INFO records on stdout ("Initialized
    # DVC repository.", "1 file pushed"); that would corrupt `--json` output.
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _repo(root: Path) -> Iterator[Repo]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with _quiet():
        try:
            with Repo(str(root)) as repo:
                yield repo
        except DvcException as exc:
            raise RegistryError(f"DVC failed in {root}: {_dvc_message(exc)}") from None


def _dvc_message(exc: BaseException) -> str:
    parts = [str(exc).strip()]
    cause = exc.__cause__
    while cause is not None and len(parts) < 3:
        if str(cause).strip():
            parts.append(str(cause).strip())
        cause = cause.__cause__
    return ": ".join(p for p in parts if p) or type(exc).__name__


def init(root: Path, remote_url: str) -> None:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with _quiet():
        try:
            Repo.init(str(root)).close()
        except DvcException as exc:
            raise RegistryError(f"cannot initialise DVC in {root}: {_dvc_message(exc)}") from None
    with _repo(root) as repo, repo.config.edit("repo") as conf:
        conf["core"]["analytics"] = False
        # dvc add stages the .dvc and .gitignore files it writes; we also add
        # them explicitly, so this only helps people using the CLI in the repo.
        conf["core"]["autostage"] = True
        conf["remote"][REMOTE_NAME] = {"url": remote_url}
        conf["core"]["remote"] = REMOTE_NAME


def remote_url(root: Path) -> str | None:
    with _repo(root) as repo:
        remote = repo.config.get("core", {}).get("remote")
        if not remote:
            return None
        return repo.config.get("remote", {}).get(remote, {}).get("url")


def set_remote(root: Path, url: str) -> None:
    with _repo(root) as repo, repo.config.edit("repo") as conf:
        conf["remote"][REMOTE_NAME] = {**conf["remote"].get(REMOTE_NAME, {}), "url": url}
        conf["core"]["remote"] = REMOTE_NAME


def add_and_push(root: Path, target: str) -> None:
    """``dvc add target`` then ``dvc push target.dvc`` to the default remote."""
    with _repo(root) as repo:
        # Absolute paths: DVC resolves relative targets against the process cwd.
        path = root / target
        repo.add(str(path))
        try:
            repo.push(targets=[f"{path}.dvc"])
        except Exception as exc:
            url = repo.config.get("remote", {}).get(REMOTE_NAME, {}).get("url", "?")
            raise RegistryError(
                f"cannot push {target} to the DVC remote {url}: {_dvc_message(exc)}"
            ) from None


def pull(root: Path, target: str) -> None:
    """Restore ``target`` into the working tree from the cache or the remote."""
    with _repo(root) as repo:
        repo.pull(targets=[f"{root / target}.dvc"], force=True)
