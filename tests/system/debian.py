"""Real Debian parts for the package tests: built .debs, a booted container, an
arm64 chroot under qemu-user.

Nothing here imitates a part: the packages are what `make deb` builds, the
container runs Debian 12's systemd as PID 1 (systemd-nspawn -b) and the arm64
tree runs aarch64 binaries through qemu-user-static. The slow parts (debootstrap,
wheel downloads) are cached in /var/cache/edgeloop-tests by packaging/*.sh, so a
fresh clone on the same machine reuses them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
# What a root shell on a Debian box has: the host's variables (PIP_*, a pyenv
# PATH) must not leak into the device.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def skip_reason_system() -> str | None:
    """Why the system tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn, chroot)"
    missing = missing_tools("dpkg-deb", "debootstrap", "systemd-nspawn", "nsenter", "lintian")
    if missing:
        return f"missing {', '.join(missing)} (make setup installs them)"
    return None


def skip_reason_arm64() -> str | None:
    reason = skip_reason_system()
    if reason:
        return reason
    if not Path("/usr/bin/qemu-aarch64-static").exists():
        return "qemu-user-static is not installed"
    try:
        subprocess.run([PACKAGING / "binfmt.sh"], check=True, capture_output=True, timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"cannot register qemu-aarch64 with binfmt_misc: {exc}"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "binfmt_misc has no qemu-aarch64 entry"
    return None


def build_deb(package: str, arch: str, outdir: Path, version: str | None = None) -> Path:
    """The .deb `make deb` builds (gzip instead of xz: the wheels are compressed already)."""
    env = {**os.environ, "DEB_COMPRESS": "gzip"}
    if version:
        env["DEB_VERSION"] = version
    out = subprocess.run(
        [PACKAGING / "build-deb.sh", package, arch, outdir],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@functools.cache
def rootfs_tarball(arch: str) -> Path:
    out = subprocess.run(
        [PACKAGING / "rootfs.sh", arch], check=True, capture_output=True, text=True, timeout=1200
    )
    return Path(out.stdout.strip().splitlines()[-1])


def unpack_rootfs(arch: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with tarfile.open(rootfs_tarball(arch)) as tar:
        tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return dest


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout} s")


class BootedContainer:
    """A Debian 12 tree booted with systemd as PID 1 (systemd-nspawn -b).

    `--register=no`: the host has no system bus for machined. Commands run inside
    through nsenter into the container's systemd (all namespaces), with a clean
    environment. The container shares the host's network, so it reaches the
    test's Mosquitto on 127.0.0.1.
    """

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 60.0) -> BootedContainer:
        try:
            return self._boot(timeout)
        except BaseException:
            # A container that did not come up must not outlive the test (the
            # tree it runs from is deleted with the test's temporary directory).
            self.kill()
            raise

    def _boot(self, timeout: float) -> BootedContainer:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the container
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", self.root, "-b"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def found() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log_path.read_text()[-2000:]}")
            # The container's systemd descends from our systemd-nspawn (other tests
            # on this machine may run containers of their own); before it execs,
            # that process is a short-lived nspawn helper.
            self.pid1 = _descendant_named(self.proc.pid, "systemd")
            return self.pid1 != 0

        wait_until(found, timeout, "the container's systemd to appear")
        last: list[str] = []

        def booted() -> bool:
            # Until systemd has its private bus up, systemctl cannot connect at all.
            state = self.run("systemctl", "is-system-running", "--wait", check=False)
            last[:] = [state.stdout, state.stderr]
            return state.stdout.strip() in ("running", "degraded")

        try:
            wait_until(booted, timeout, "the container to finish booting", step=0.5)
        except TimeoutError as exc:
            raise RuntimeError(f"container did not boot: {last}") from exc
        return self

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", *_env_args(), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kw)

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Writes a file into the tree, as root (root inside is root outside)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def kill(self) -> None:
        """Ends the container at once: SIGKILL to its PID 1 ends its namespace."""
        if self.proc is None:
            return
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
        self.proc = None

    def poweroff(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", check=False, timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()
        self.proc = None


def _descendant_named(ancestor: int, comm: str) -> int:
    todo = [ancestor]
    while todo:
        parent = todo.pop()
        kids = subprocess.run(
            ["pgrep", "-P", str(parent)], capture_output=True, text=True
        ).stdout.split()
        for kid in map(int, kids):
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == comm:
                    return kid
            except OSError:
                continue
            todo.append(kid)
    return 0


def _env_args() -> list[str]:
    return [f"{k}={v}" for k, v in CLEAN_ENV.items()]


class Arm64Chroot:
    """An arm64 Debian 12 tree whose binaries run through qemu-user-static.

    Each command runs in a private mount namespace with /proc and /dev mounted
    (they vanish with it). The host's /sys is deliberately NOT mounted: with it,
    onnxruntime's cpuinfo reads the x86 host's CPU description and crashes under
    qemu. The binfmt entry has no F flag, so the interpreter is copied in.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        interp = self.root / "usr/libexec/qemu-binfmt/aarch64-binfmt-P"
        interp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2("/usr/bin/qemu-aarch64-static", interp)

    def argv(self, *cmd: str) -> list[str]:
        script = (
            'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
            'exec chroot "$0" /usr/bin/env -i "$@"'
        )
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(self.root),
            *_env_args(),
            *cmd,
        ]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result
