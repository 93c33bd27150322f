"""Versions and stages of each model, as the registry's GTO tags say.

The tags are the registry's source of truth: :func:`read_models` replays them
(registrations, stage assignments and unassignments, in GTO's order) into one
:class:`ModelTags` per model, and :func:`resolve` finds the version a
reference names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.gitrepo import GitRepo
from edgeloop_control.registry.refs import NAME_RE, Ref, parse_semver, short_version
from edgeloop_control.registry.tags import TagEvent, parse_tag

Semver = tuple[int, int, int]


@dataclass
class Registered:
    """A version's registration tag."""

    semver: Semver
    commit: str
    tag: str
    timestamp: int


@dataclass
class ModelTags:
    """Everything the tags say about one model."""

    versions: dict[Semver, Registered] = field(default_factory=dict)
    # stage -> semver of the version holding it
    stages: dict[str, Semver] = field(default_factory=dict)
    max_counter: int = 0
    last_timestamp: int = 0

    def stages_of(self, semver: Semver) -> list[str]:
        return sorted(s for s, v in self.stages.items() if v == semver)

    def latest(self) -> Semver | None:
        return max(self.versions) if self.versions else None


def read_models(git: GitRepo) -> dict[str, ModelTags]:
    """Every model's versions and stages, replayed from the repository's annotated tags."""
    events: list[TagEvent] = []
    for ref in git.annotated_tags():
        event = parse_tag(ref.name, ref.commit, ref.timestamp)
        if event is not None and NAME_RE.fullmatch(event.name):
            events.append(event)
    # GTO orders by tagger time; the per-artifact counter breaks ties the way
    # the tags were created.
    events.sort(key=lambda e: (e.timestamp, e.counter))
    models: dict[str, ModelTags] = {}
    holders: dict[str, dict[str, dict[Semver, int]]] = {}
    for order, event in enumerate(events):
        model = models.setdefault(event.name, ModelTags())
        model.max_counter = max(model.max_counter, event.counter)
        model.last_timestamp = max(model.last_timestamp, event.timestamp)
        if event.kind in ("register", "deregister"):
            assert event.semver is not None
            semver = parse_semver(event.semver)
            if event.kind == "register":
                model.versions[semver] = Registered(
                    semver, event.commit, event.tag, event.timestamp
                )
            else:
                model.versions.pop(semver, None)
            continue
        assert event.stage is not None
        # A stage tag names a commit; the version is the one registered there.
        by_commit = {r.commit: s for s, r in model.versions.items()}
        staged = by_commit.get(event.commit)
        if staged is None:
            continue
        active = holders.setdefault(event.name, {}).setdefault(event.stage, {})
        if event.kind == "assign":
            active[staged] = order
        else:
            active.pop(staged, None)
    for name, stages in holders.items():
        model = models[name]
        for stage, active in stages.items():
            live = {v: o for v, o in active.items() if v in model.versions}
            if live:
                # Our promotions unassign the previous holder, so there is one;
                # with hand-made tags the latest assignment wins.
                model.stages[stage] = max(live, key=live.__getitem__)
    return {n: m for n, m in models.items() if m.versions}


def resolve(name: str, model: ModelTags, ref: Ref) -> Semver:
    """The version ``ref`` (a stage, latest or a version) names among ``model``'s."""
    if ref.stage is not None:
        if ref.stage not in model.stages:
            have = ", ".join(f"{s}={short_version(v)}" for s, v in model.stages.items())
            raise RegistryError(
                f"model {name!r} has no version in stage {ref.stage!r} "
                f"(stages: {have or 'none assigned'})"
            )
        return model.stages[ref.stage]
    if ref.latest:
        latest = model.latest()
        assert latest is not None
        return latest
    assert ref.version is not None
    if ref.version not in model.versions:
        have = ", ".join(short_version(v) for v in sorted(model.versions))
        raise RegistryError(
            f"model {name!r} has no version {short_version(ref.version)} (versions: {have})"
        )
    return ref.version


def tag_time(model: ModelTags) -> int:
    # Strictly after the model's previous tag: GTO sorts a model's events by
    # tagger time at 1 s resolution, and equal times would make the order of
    # a quick unassign/assign pair ambiguous to it.
    return max(int(time.time()), model.last_timestamp + 1)
