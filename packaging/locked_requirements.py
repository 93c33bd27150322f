"""Locked requirements for one Debian target, from `uv export` on stdin.

`uv export` writes the universal lock: every package with environment markers
(`numpy==2.2.6 ; python_full_version < '3.11'` beside `numpy==2.4.6 ; ...`).
pip evaluates such markers against the Python that runs it, not the target, so
this evaluates them for the target (Debian 12: CPython 3.11.2 on Linux, amd64 or
arm64) and prints `name==version --hash=...` lines for exactly what that device
must install: the input of `pip download --no-deps --require-hashes`.

    uv export --frozen --package edgeloop-agent ... | python locked_requirements.py arm64

With --sdist-only UV_LOCK it prints instead the names of the locked packages
that PyPI publishes as source only (no wheel in the lock): build-deb.sh builds
those itself and refuses any that is not pure Python.
"""

from __future__ import annotations

import sys
import tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement

MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


def target_environment(arch: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "implementation_version": "3.11.2",
        "os_name": "posix",
        "platform_machine": MACHINES[arch],
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": "3.11.2",
        "python_version": "3.11",
        "sys_platform": "linux",
        "extra": "",
    }


def logical_lines(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]


def sdist_only(lock_path: str) -> list[str]:
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    return sorted(p["name"] for p in lock["package"] if "sdist" in p and not p.get("wheels"))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--sdist-only":
        print("\n".join(sdist_only(argv[2])))
        return 0
    if len(argv) != 2 or argv[1] not in MACHINES:
        print("usage: locked_requirements.py amd64|arm64 < uv-export.txt", file=sys.stderr)
        return 2
    env = target_environment(argv[1])
    out = []
    for line in logical_lines(sys.stdin.read()):
        spec, *hashes = line.split(" --hash=")
        req = Requirement(spec.strip())
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            continue
        if not hashes:
            print(f"error: {req.name} has no hash in the lock", file=sys.stderr)
            return 1
        pins = [s for s in req.specifier if s.operator == "=="]
        if len(pins) != 1:
            print(f"error: {req.name} is not pinned: {req.specifier}", file=sys.stderr)
            return 1
        hash_args = " ".join(f"--hash={h.strip()}" for h in hashes)
        out.append(f"{req.name}=={pins[0].version} {hash_args}")
    print("\n".join(sorted(out, key=str.lower)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
