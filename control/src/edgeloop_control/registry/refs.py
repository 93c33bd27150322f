"""Model names, versions and the references users type (``sensor@v3``, ``sensor#champion``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeloop_control.registry.errors import RegistryError

# GTO's artifact-name rule minus '/' and ':' (GTO uses those for monorepo folders;
# here a name is also a directory name and ':' introduces a stage in a ref).
# Always used with fullmatch: `$` with re.match accepts a trailing newline, and
# a name ending in one became an invalid MQTT topic on the agent.
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?")
# GTO's stage-name rule (tag ``NAME#STAGE#N``), without '/'.
STAGE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?")
# Accepts 3, v3, v3.1, 3.1.2; the registry itself only assigns whole majors.
VERSION_RE = re.compile(r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?")
LATEST = frozenset({"latest", "greatest"})


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RegistryError(
            f"invalid model name {name!r}: use letters, digits, '-' and '_', "
            "starting and ending with a letter or digit (at most 64 characters)"
        )
    return name


def check_stage(stage: object) -> str:
    """The stage name in its one spelling: lower case.

    Stages are names people type (``Champion``, ``champion``); were they case-sensitive,
    ``models promote m@v4 Champion`` would create a second stage beside ``champion`` that
    no policy reads. Every way in (promote, demote, ``name#stage`` refs) comes through here.
    """
    if not isinstance(stage, str) or not STAGE_RE.fullmatch(stage):
        raise RegistryError(
            f"invalid stage {stage!r}: use letters, digits, '-' and '_', "
            "starting and ending with a letter or digit (e.g. champion, challenger)"
        )
    return stage.lower()


def parse_semver(text: str) -> tuple[int, int, int]:
    """``v3`` / ``3`` / ``v3.0.0`` -> (3, 0, 0)."""
    m = VERSION_RE.fullmatch(text.strip())  # the parsed numbers are what is kept
    if not m:
        raise RegistryError(f"invalid version {text!r}: expected e.g. v3 or v3.0.0")
    return int(m[1]), int(m[2] or 0), int(m[3] or 0)


def semver_str(parts: tuple[int, int, int]) -> str:
    return "{}.{}.{}".format(*parts)


def short_version(parts: tuple[int, int, int]) -> str:
    """The form users see: ``v3`` for 3.0.0, the full ``v3.1.0`` otherwise."""
    major, minor, patch = parts
    return f"v{major}" if minor == patch == 0 else f"v{major}.{minor}.{patch}"


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version``, ``stage`` or ``latest`` is set."""

    name: str
    version: tuple[int, int, int] | None = None
    stage: str | None = None
    latest: bool = False

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{short_version(self.version)}"
        if self.stage is not None:
            return f"{self.name}#{self.stage}"
        return f"{self.name}@latest"


def parse_ref(text: str) -> Ref:
    """Parse ``name@v3``, ``name@v3.0.0``, ``name@latest``, ``name#stage`` or ``name:stage``.

    A bare ``name`` means its latest version.
    """
    if not isinstance(text, str) or not text.strip():
        raise RegistryError(f"empty model reference {text!r}: expected e.g. sensor@v3")
    text = text.strip()
    for sep in ("@", "#", ":"):
        if sep in text:
            name, _, rest = text.partition(sep)
            break
    else:
        return Ref(check_name(text), latest=True)
    try:
        check_name(name)
    except RegistryError:
        raise RegistryError(
            f"invalid model reference {text!r}: {name!r} is not a model name"
        ) from None
    if not rest:
        raise RegistryError(f"invalid model reference {text!r}: nothing after {sep!r}")
    if sep == "@":
        if rest in LATEST:
            return Ref(name, latest=True)
        try:
            return Ref(name, version=parse_semver(rest))
        except RegistryError:
            raise RegistryError(
                f"invalid model reference {text!r}: {rest!r} is not a version "
                "(expected e.g. v3, v3.0.0 or latest)"
            ) from None
    try:
        return Ref(name, stage=check_stage(rest))
    except RegistryError:
        raise RegistryError(f"invalid model reference {text!r}: {rest!r} is not a stage") from None
