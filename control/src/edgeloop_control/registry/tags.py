"""GTO's git-tag conventions, so GTO (and DVC Studio) read our registry as their own.

- register a version: annotated tag ``NAME@vX.Y.Z``, message
  ``Registering artifact NAME version vX.Y.Z``;
- assign a stage: annotated tag ``NAME#STAGE#N``, message
  ``Assigning stage STAGE to artifact NAME version vX.Y.Z``;
- unassign a stage: annotated tag ``NAME#STAGE!#N``, message
  ``Unassigning stage 'STAGE' to artifact 'NAME' version 'vX.Y.Z'``.

``N`` is one counter per artifact, shared by all stages: one more than the
highest counter among the artifact's tags (``gto.tag.name_tag``). GTO orders
events by tagger time (1 s resolution), so the registry also keeps each
artifact's tag times strictly increasing (see ``Registry._tag_time``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeloop_control.registry.refs import semver_str

_SEMVER = r"(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)"
# A subset of gto.constants.tag_re: no pre-release/build suffixes (the registry
# never creates them) and no deprecation tags (we ignore those).
TAG_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9_/=-]*[A-Za-z0-9])?)"
    rf"(?:@v(?P<version>{_SEMVER})|#(?P<stage>[A-Za-z0-9](?:[A-Za-z0-9_/-]*[A-Za-z0-9])?))"
    r"(?P<cancel>!?)(?:#(?P<counter>[0-9]+))?$"
)


@dataclass(frozen=True)
class TagEvent:
    """One registry tag, parsed. ``kind`` is register, deregister, assign or unassign."""

    tag: str
    name: str
    kind: str
    commit: str
    timestamp: int
    semver: str | None = None
    stage: str | None = None
    counter: int = 0


def parse_tag(tag: str, commit: str, timestamp: int) -> TagEvent | None:
    m = TAG_RE.match(tag)
    if not m:
        return None
    cancel = m["cancel"] == "!"
    if m["version"]:
        kind = "deregister" if cancel else "register"
    else:
        kind = "unassign" if cancel else "assign"
    return TagEvent(
        tag=tag,
        name=m["name"],
        kind=kind,
        commit=commit,
        timestamp=timestamp,
        semver=m["version"],
        stage=m["stage"],
        counter=int(m["counter"] or 0),
    )


def register_tag(name: str, semver: tuple[int, int, int]) -> tuple[str, str]:
    v = f"v{semver_str(semver)}"
    return f"{name}@{v}", f"Registering artifact {name} version {v}"


def assign_tag(
    name: str, stage: str, semver: tuple[int, int, int], counter: int
) -> tuple[str, str]:
    v = f"v{semver_str(semver)}"
    return (
        f"{name}#{stage}#{counter}",
        f"Assigning stage {stage} to artifact {name} version {v}",
    )


def unassign_tag(
    name: str, stage: str, semver: tuple[int, int, int], counter: int
) -> tuple[str, str]:
    v = f"v{semver_str(semver)}"
    return (
        f"{name}#{stage}!#{counter}",
        f"Unassigning stage '{stage}' to artifact '{name}' version '{v}'",
    )
