"""The git CLI, run against one repository without relying on global git config."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeloop_control.registry.errors import RegistryError

COMMITTER_NAME = "edgeloop registry"
COMMITTER_EMAIL = "registry@edgeloop.invalid"

# Neutralise user/global settings that would make an unattended commit or tag
# block or fail (signing prompts, editors, pagers).
_SAFE_CONFIG = (
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "core.pager=cat",
    "-c",
    "advice.detachedHead=false",
)


@dataclass(frozen=True)
class TagRef:
    name: str
    commit: str
    timestamp: int


class GitRepo:
    def __init__(self, root: Path) -> None:
        self.root = root
        if shutil.which("git") is None:
            raise RegistryError("the git command is not installed; the model registry needs it")

    # -- plumbing ------------------------------------------------------------

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
        try:
            proc = subprocess.run(
                ["git", *_SAFE_CONFIG, *args],
                cwd=self.root,
                env=full_env,
                input=input,
                capture_output=True,
                check=False,
            )
        except OSError as exc:
            raise RegistryError(f"cannot run git in {self.root}: {exc}") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            last = detail.splitlines()[-1] if detail else f"exit status {proc.returncode}"
            raise RegistryError(f"git {args[0]} failed in {self.root}: {last}")
        return proc

    def out(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return self.run(*args, env=env).stdout.decode().strip()

    # -- repository ------------------------------------------------------------

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run("init", "-q")
        # `git init -b` needs git >= 2.28; this works everywhere.
        self.run("symbolic-ref", "HEAD", "refs/heads/main")
        self.ensure_identity()

    def ensure_identity(self) -> None:
        """Give the repository a committer identity unless it already has one."""
        for key, value in (("user.name", COMMITTER_NAME), ("user.email", COMMITTER_EMAIL)):
            have = self.run("config", "--local", "--get", key, check=False)
            if have.returncode != 0 or not have.stdout.strip():
                self.run("config", "--local", key, value)

    def head(self) -> str | None:
        proc = self.run("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
        return proc.stdout.decode().strip() or None

    def add(self, paths: Sequence[str]) -> None:
        self.run("add", "--", *paths)

    def commit(self, message: str, paths: Sequence[str] | None = None) -> str:
        args = ["commit", "-q", "--no-verify", "-m", message]
        if paths is not None:
            args += ["--", *paths]
        self.run(*args)
        head = self.head()
        assert head is not None
        return head

    def status(self) -> list[str]:
        """Porcelain status lines, ignoring files git ignores."""
        text = self.run("status", "--porcelain", "--untracked-files=all").stdout.decode()
        return [line for line in text.splitlines() if line.strip()]

    def reset_index(self) -> None:
        if self.head() is not None:
            self.run("reset", "-q", "HEAD")

    def tracked(self, path: str) -> bool:
        return bool(self.run("ls-files", "--", path).stdout.strip())

    # -- tags ----------------------------------------------------------------

    def annotated_tags(self) -> list[TagRef]:
        """Annotated tags with the commit they point to and their tagger time.

        GTO ignores lightweight tags, so do we.
        """
        fmt = "%(refname)%00%(objecttype)%00%(*objectname)%00%(taggerdate:unix)"
        refs = []
        out = self.run("for-each-ref", f"--format={fmt}", "refs/tags").stdout.decode()
        for line in out.splitlines():
            refname, objtype, commit, stamp = line.split("\0")
            if objtype != "tag" or not commit:
                continue
            refs.append(TagRef(refname.removeprefix("refs/tags/"), commit, int(stamp or 0)))
        return refs

    def tag(self, name: str, commit: str, message: str, *, timestamp: int) -> None:
        env = {"GIT_COMMITTER_DATE": f"{timestamp} +0000"}
        self.run("tag", "-a", name, commit, "-m", message, env=env)

    # -- objects -------------------------------------------------------------

    def read_blobs(self, specs: Sequence[str]) -> list[bytes | None]:
        """Contents of ``<rev>:<path>`` blobs in one ``git cat-file --batch``; None if missing."""
        if not specs:
            return []
        data = self.run("cat-file", "--batch", input="".join(f"{s}\n" for s in specs).encode())
        buf = data.stdout
        out: list[bytes | None] = []
        pos = 0
        for _ in specs:
            end = buf.index(b"\n", pos)
            header = buf[pos:end].split()
            pos = end + 1
            if len(header) != 3 or header[1] != b"blob":
                out.append(None)
                continue
            size = int(header[2])
            out.append(buf[pos : pos + size])
            pos += size + 1
        return out
