"""``edgeloop-agent enroll BUNDLE``: install an enrolment bundle as this device's config.

Writes into ``--etc`` (``/etc/edgeloop``): ``agent.toml`` (0600) naming the broker,
the device id and the files below by RELATIVE path, so the same config works where
it is and from the systemd unit's credentials directory; ``ca.crt`` and
``signing.pub`` (0644, public); ``client.crt`` (0644) and ``client.key`` (0600) for a
certificate identity, or ``broker.password`` (0600) for a password one. Run as root
the files are owned by root: the unit hands the agent (a dynamic user) private
copies through ``LoadCredential=``, listed in a drop-in written next to the unit.

The bundle is checked completely (format, digest, every field) before the first
file is written, and the written config is loaded back as the agent would load it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.wire.bundle import MAX_BUNDLE_BYTES, BundleError, EnrolmentBundle

DEFAULT_ETC = Path("/etc/edgeloop")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
UNIT = "edgeloop-agent.service"
UPDATE_PATH_UNIT = "edgeloop-agent-update.path"
PACKAGED_UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
MARKER = "# Written by `edgeloop-agent enroll` from the enrolment bundle of"


class EnrollError(Exception):
    """Enrolment failed; the message is the one line to print."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edgeloop-agent enroll",
        description="Install an enrolment bundle (from `edgeloop fleet add ID --bundle PATH`) "
        "as this device's agent configuration and enable the agent's systemd unit.",
    )
    p.add_argument("bundle", type=Path, help="the enrolment bundle file")
    p.add_argument(
        "--etc", type=Path, default=DEFAULT_ETC, help=f"configuration directory ({DEFAULT_ETC})"
    )
    p.add_argument(
        "--unit-dir",
        type=Path,
        default=DEFAULT_UNIT_DIR,
        help=f"where the unit's drop-in goes ({DEFAULT_UNIT_DIR})",
    )
    p.add_argument(
        "--no-enable",
        action="store_true",
        help="do not run `systemctl enable edgeloop-agent` (nor write the unit drop-in)",
    )
    return p.parse_args(argv)


def read_bundle(path: Path) -> EnrolmentBundle:
    try:
        with path.open("rb") as fh:
            # Bounded: a wrong path (a disk image, /dev/zero) is refused, not read whole.
            raw = fh.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise EnrollError(f"cannot read bundle {path}: {exc.strerror}") from None
    try:
        return EnrolmentBundle.from_bytes(raw)
    except BundleError as exc:
        raise EnrollError(f"bundle {path} refused: {exc}") from None


def _files(bundle: EnrolmentBundle) -> dict[str, tuple[str, int]]:
    """File name -> (content, mode) of everything but agent.toml."""
    files: dict[str, tuple[str, int]] = {}
    if bundle.ca_cert:
        files["ca.crt"] = (bundle.ca_cert, 0o644)
    for i, key in enumerate(bundle.trusted_keys):
        files["signing.pub" if i == 0 else f"signing-{i + 1}.pub"] = (key, 0o644)
    if bundle.identity == "certificate":
        files["client.crt"] = (bundle.client_cert, 0o644)
        files["client.key"] = (bundle.client_key, 0o600)
    else:
        files["broker.password"] = (bundle.password + "\n", 0o600)
    return files


def agent_toml(bundle: EnrolmentBundle, files: dict[str, tuple[str, int]]) -> str:
    def q(value: str) -> str:
        # TOML basic strings: the bundle's fields were checked, but quote defensively.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    keys = ", ".join(q(name) for name in files if name.endswith(".pub"))
    lines = [
        f"{MARKER} {bundle.device_id}.",
        "# Relative paths are relative to this file. Every other setting is the agent's",
        "# default: add any from packaging/edgeloop-agent.toml below.",
        f"device_id = {q(bundle.device_id)}",
        f"broker = {q(bundle.broker)}",
        f"topic_prefix = {q(bundle.topic_prefix)}",
        f"trusted_keys = [{keys}]",
        "require_signature = true",
    ]
    if "ca.crt" in files:
        lines.append('ca_file = "ca.crt"')
    if bundle.identity == "certificate":
        lines += ['cert_file = "client.crt"', 'key_file = "client.key"']
    else:
        lines.append('password_file = "broker.password"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int, chown: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if chown:
            os.fchown(fd, 0, 0)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def install(bundle: EnrolmentBundle, etc: Path) -> AgentConfig:
    """Write ``etc``'s files from ``bundle``; returns the config as the agent loads it."""
    as_root = os.geteuid() == 0
    files = _files(bundle)
    try:
        etc.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Another identity's secret must not linger beside the new one.
        for stale in ("client.crt", "client.key", "broker.password"):
            if stale not in files:
                (etc / stale).unlink(missing_ok=True)
        for name, (text, mode) in files.items():
            _write(etc / name, text, mode, as_root)
        config = etc / "agent.toml"
        if config.exists():
            # Settings the operator added (or the packaged file) are kept, not lost.
            _write(etc / "agent.toml.bak", config.read_text(encoding="utf-8"), 0o600, as_root)
        _write(config, agent_toml(bundle, files), 0o600, as_root)
    except OSError as exc:
        raise EnrollError(f"cannot write {etc}: {exc.strerror or exc}") from None
    try:
        return AgentConfig.from_file(etc / "agent.toml").validate()
    except ConfigError as exc:
        raise EnrollError(f"the written {etc / 'agent.toml'} does not load: {exc}") from None


def systemd_dropin(etc: Path, names: list[str]) -> str:
    """The unit drop-in loading every file agent.toml names as a credential, so the
    relative paths resolve in the unit's credentials directory."""
    lines = [
        f"# Written by `edgeloop-agent enroll` for the files in {etc}.",
        "[Service]",
    ]
    if etc != DEFAULT_ETC:
        lines.append(f"LoadCredential=agent.toml:{etc / 'agent.toml'}")
    lines += [f"LoadCredential={name}:{etc / name}" for name in names]
    return "\n".join(lines) + "\n"


def enable_unit(etc: Path, unit_dir: Path, names: list[str], say: Callable[[str], None]) -> None:
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        say(
            "systemd is not running here: start the agent with "
            f"`edgeloop-agent --config {etc / 'agent.toml'}` (the unit was not enabled)"
        )
        return
    dropin = unit_dir / f"{UNIT}.d" / "enrolment.conf"
    try:
        dropin.parent.mkdir(parents=True, exist_ok=True)
        _write(dropin, systemd_dropin(etc, names), 0o644, os.geteuid() == 0)
    except OSError as exc:
        raise EnrollError(f"cannot write {dropin}: {exc.strerror or exc}") from None
    cmds = [["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT]]
    if any((d / UPDATE_PATH_UNIT).is_file() for d in PACKAGED_UNIT_DIRS):
        # The self-update's trigger (packaged installs only): armed with the agent.
        cmds.append(["systemctl", "enable", "--now", UPDATE_PATH_UNIT])
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise EnrollError(f"`{' '.join(cmd)}` failed: {why[-1] if why else done.returncode}")
    say(f"enabled {UNIT}; start it with `systemctl start {UNIT}`")


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    def say(line: str) -> None:
        print(f"edgeloop-agent enroll: {line}")

    try:
        bundle = read_bundle(args.bundle)
        mode = args.bundle.stat().st_mode & 0o777
        if mode & 0o077:
            say(f"warning: bundle {args.bundle} is readable by others (mode {mode:o})")
        config = install(bundle, args.etc)
        say(
            f"device {config.device_id} enrolled ({bundle.identity}) for "
            f"{config.broker_address}: wrote {args.etc / 'agent.toml'}"
        )
        if not args.no_enable:
            names = sorted(_files(bundle))
            enable_unit(args.etc, args.unit_dir, names, say)
        say(f"the bundle holds this device's secret: delete it (rm {args.bundle})")
    except EnrollError as exc:
        print(f"edgeloop-agent enroll: error: {exc}", file=sys.stderr)
        return 2
    return 0
