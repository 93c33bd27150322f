"""The agent updates itself: the check the privileged one-shot runs first.

``python -m edgeloop_agent.selfinstall verify REQUEST DEB [--config agent.toml]``

Run as root by packaging/edgeloop-agent-update before it installs anything. The
request and the package were written by the unprivileged agent, so nothing in
them is trusted: the signed desired document inside the request is verified
against the keys the device's configuration trusts (root-owned /etc/edgeloop),
must name this device, be unexpired and not older than one accepted before
(``--accepted``), and its ``agent`` entry must pin this file's sha256 and size.
Prints ``VERSION ARCHITECTURE`` and exits 0, or prints one line saying why not
and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
import time
from pathlib import Path

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.wire.desired import DesiredState, DesiredStateError, open_envelope
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.signature import SignatureError, load_public_keys


class Refused(Exception):
    pass


def verify(
    request_path: Path, deb: Path, config_path: Path, now: float, accepted: Path | None = None
) -> tuple[str, str]:
    """``(version, architecture)`` of a request that checks out, or :class:`Refused`.

    ``accepted`` (root's, beside the previous package) keeps the highest document
    revision accepted before: an older one is a replay, even if still unexpired.
    """
    version, arch, revision = _check(request_path, deb, config_path, now)
    if accepted is not None:
        floor = _accepted_revision(accepted)
        if floor is not None and revision < floor:
            raise Refused(
                f"the signed document's revision {revision} is older than revision {floor} "
                "accepted before: a replay"
            )
        tmp = accepted.with_name(f".{accepted.name}.tmp")
        tmp.write_text(json.dumps({"revision": revision}), encoding="utf-8")
        tmp.replace(accepted)
    return version, arch


def _accepted_revision(path: Path) -> int | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check(request_path: Path, deb: Path, config_path: Path, now: float) -> tuple[str, str, int]:
    try:
        config = AgentConfig.from_file(config_path)
        keys = load_public_keys(config.trusted_keys)
    except (ConfigError, SignatureError, OSError) as exc:
        raise Refused(f"no trusted key to verify with: {exc}") from None
    try:
        request = json.loads(request_path.read_text(encoding="utf-8"))
        envelope = base64.b64decode(request["envelope"], validate=True)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Refused(f"unreadable request {request_path}: {exc}") from None
    try:
        opened = open_envelope(envelope, keys=keys, allow_unsigned=False)
        desired = DesiredState.from_payload(opened.payload)
    except DesiredStateError as exc:
        raise Refused(f"{exc.code}: {exc}") from None
    if desired.device != config.device_id:
        raise Refused(
            f"the signed document is for {json_text(desired.device)}, "
            f"not {json_text(config.device_id)}"
        )
    if desired.expires is None or desired.expires <= now:
        raise Refused("the signed document has expired")
    pkg = desired.agent
    if pkg is None:
        raise Refused("the signed document names no agent package")
    digest, size = hashlib.sha256(), 0
    with deb.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
            size += len(block)
    if size != pkg.size or digest.hexdigest() != pkg.sha256:
        raise Refused(
            f"{deb.name} ({size} bytes, sha256 {digest.hexdigest()}) is not the package the "
            f"signed document pins ({pkg.size} bytes, sha256 {pkg.sha256})"
        )
    return pkg.version, pkg.architecture, desired.revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeloop_agent.selfinstall")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="verify an update request against its signed document")
    check.add_argument("request", type=Path)
    check.add_argument("deb", type=Path)
    check.add_argument("--config", type=Path, default=Path("/etc/edgeloop/agent.toml"))
    check.add_argument(
        "--accepted", type=Path, help="file keeping the highest revision accepted (replays)"
    )
    args = parser.parse_args(argv)
    try:
        version, arch = verify(args.request, args.deb, args.config, time.time(), args.accepted)
    except (Refused, OSError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(version, arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
