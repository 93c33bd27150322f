"""Who decides what a device runs: the one owner of desired state.

Every writer of desired state (``edgeloop deploy``, the demo, A/B experiments,
staged rollouts, the re-signing refresher) goes through :class:`DesiredState`:
it plans the document, signs, publishes and records it, and enforces ownership:
a device belongs to at most one experiment or rollout at a time
(:meth:`DesiredState.claim`), and nothing else writes its desired state while it
is owned. A one-off ``edgeloop deploy`` owns nothing after it returns; onto an
owned device it is refused naming the owner, unless the caller ends the owner
first (``--force``).

Each device gets a retained ``{prefix}/{device}/desired`` document with a
revision one higher than its last; each artifact is published once, retained,
on ``{prefix}/models/{name}/{version}``. Bucket ranges for A/B routing are
computed here from the device's previous allocation, so changing weights moves
as few routing keys as possible (see docs/router.md).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edgeloop_agent.wire.allocation import Allocation, allocate
from edgeloop_agent.wire.names import InvalidName, check_device_id
from edgeloop_agent.wire.topics import artifact_topic
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.signing import DesiredSigner

_SPEC = re.compile(r"(?P<ref>[^=\s]+?)(?:=(?P<weight>\d+(?:\.\d+)?)%?)?")


class DeployError(EdgeloopError, ValueError):
    """A deployment request that cannot be carried out; the message says why."""


OwnerKind = Literal["experiment", "rollout"]

# How an operator ends each kind of owner (named in refusals).
_END_COMMAND: dict[str, str] = {
    "experiment": "edgeloop ab stop {id}",
    "rollout": "edgeloop rollout abort {id}",
}

OWNERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_owners (
    device TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS device_owners_owner ON device_owners(kind, owner_id);
"""


@dataclass(frozen=True)
class Owner:
    """An experiment or rollout that holds devices' desired state while it runs."""

    kind: OwnerKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"

    @property
    def end_command(self) -> str:
        return _END_COMMAND[self.kind].format(id=self.id)


class DeviceOwned(DeployError):
    """The devices belong to another experiment or rollout; the message names it."""

    def __init__(self, owned: dict[str, Owner]) -> None:
        self.owned = owned
        owners = sorted(set(owned.values()), key=str)
        first = owners[0]
        devices = ", ".join(sorted(owned))
        super().__init__(
            f"{devices} {'belongs' if len(owned) == 1 else 'belong'} to running "
            f"{', '.join(str(o) for o in owners)}; wait for it to finish or end it with "
            f"`{first.end_command}`"
        )


class VersionLike(Protocol):
    name: str
    version: str
    sha256: str
    size: int
    signature: str | None


@dataclass(frozen=True)
class VariantSpec:
    ref: str
    weight: float | None


def parse_variant_specs(specs: list[str]) -> list[VariantSpec]:
    """``["m@v1=90", "m@v2=10"]``; a single ``m@v1`` means 100%."""
    if not specs:
        raise DeployError("name at least one model version, e.g. sensor@v1 or sensor@v1=90")
    out = []
    for spec in specs:
        match = _SPEC.fullmatch(spec.strip())
        if not match or "@" not in match.group("ref"):
            raise DeployError(f"{spec!r} is not MODEL@vN or MODEL@vN=WEIGHT")
        weight = match.group("weight")
        out.append(VariantSpec(match.group("ref"), float(weight) if weight else None))
    if len(out) == 1 and out[0].weight is None:
        return [VariantSpec(out[0].ref, 100.0)]
    missing = [s.ref for s in out if s.weight is None]
    if missing:
        raise DeployError(
            f"with several versions every one needs a weight (missing for {', '.join(missing)})"
        )
    if sum(s.weight or 0 for s in out) <= 0:
        raise DeployError("the weights sum to 0; at least one version must take traffic")
    refs = [s.ref for s in out]
    dupes = sorted({r for r in refs if refs.count(r) > 1})
    if dupes:
        raise DeployError(f"version listed twice: {', '.join(dupes)}")
    return out


def _entry(mv: VersionLike, role: str, weight: float) -> dict[str, Any]:
    return {
        "name": mv.name,
        "version": mv.version,
        "sha256": mv.sha256,
        "size": mv.size,
        "signature": mv.signature,
        "role": role,
        "weight": weight,
        "variant": f"{mv.name}@{mv.version}",
    }


def plan_desired(
    previous: dict[str, Any] | None,
    serving: list[tuple[VersionLike, float]],
    shadows: list[VersionLike],
    *,
    experiment: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    variants = [f"{mv.name}@{mv.version}" for mv, _ in serving]
    shadow_refs = [f"{mv.name}@{mv.version}" for mv in shadows]
    clash = sorted(set(variants) & set(shadow_refs))
    if clash:
        raise DeployError(f"{', '.join(clash)} cannot both serve and shadow")
    prev_alloc = None
    if previous and previous.get("allocation"):
        prev_alloc = Allocation.from_dict(previous["allocation"])
    if experiment is None:
        # Same set of variants -> same experiment, so a weight change keeps
        # every key whose bucket stays in its variant's range.
        if prev_alloc is not None and set(prev_alloc.variants) == set(variants):
            experiment = prev_alloc.experiment_id
        else:
            experiment = (
                "exp-" + hashlib.sha256("\0".join(sorted(variants)).encode()).hexdigest()[:10]
            )
    if prev_alloc is not None and prev_alloc.experiment_id != experiment:
        prev_alloc = None
    allocation = allocate(
        prev_alloc,
        {v: w for v, (_, w) in zip(variants, serving, strict=True)},
        experiment_id=experiment,
    )
    return {
        "revision": (int(previous["revision"]) + 1) if previous else 1,
        "experiment": experiment,
        "models": [_entry(mv, "serve", w) for mv, w in serving]
        + [_entry(mv, "shadow", 0.0) for mv in shadows],
        "allocation": allocation.to_dict(),
        "settings": dict(settings or (previous or {}).get("settings") or {}),
    }


def publish_artifact(publisher: Publisher, prefix: str, mv: VersionLike, data: bytes) -> None:
    """Publish a model artifact (retained) after checking it is the registered one."""
    if hashlib.sha256(data).hexdigest() != mv.sha256:
        raise DeployError(f"{mv.name}@{mv.version}: registry artifact does not match its sha256")
    publisher.publish(artifact_topic(prefix, mv.name, mv.version), data, retain=True)


class DesiredState:
    """The one writer of desired state, and the keeper of who owns each device.

    ``signer`` may be a callable so the signing key is only loaded when
    something is actually published (a policy that never deploys needs no key).
    """

    def __init__(
        self,
        db: ControlDB,
        publisher: Publisher,
        prefix: str,
        signer: DesiredSigner | Callable[[], DesiredSigner],
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.prefix = prefix
        self._signer = signer
        db.conn.executescript(OWNERS_SCHEMA)

    @property
    def signer(self) -> DesiredSigner:
        return self._signer if isinstance(self._signer, DesiredSigner) else self._signer()

    # -- ownership -----------------------------------------------------------

    def owners(self, devices: Iterable[str] | None = None) -> dict[str, Owner]:
        """Owned devices (all of them, or among ``devices``) and their owner."""
        rows = self.db.conn.execute("SELECT device, kind, owner_id FROM device_owners").fetchall()
        wanted = None if devices is None else set(devices)
        return {
            r["device"]: Owner(r["kind"], r["owner_id"])
            for r in rows
            if wanted is None or r["device"] in wanted
        }

    def claim(
        self, owner: Owner, devices: Iterable[str], *, conn: sqlite3.Connection | None = None
    ) -> None:
        """Make ``owner`` the owner of ``devices``, or raise :class:`DeviceOwned`.

        Idempotent for devices ``owner`` already holds. Pass the caller's open
        transaction as ``conn`` to claim atomically with the caller's own insert
        (two policies starting at once: the second one's claim sees the first's).
        """
        devices = list(dict.fromkeys(devices))
        if conn is None:
            with self.db.transaction() as tx:
                self._claim(tx, owner, devices)
        else:
            self._claim(conn, owner, devices)

    def _claim(self, conn: sqlite3.Connection, owner: Owner, devices: list[str]) -> None:
        taken: dict[str, Owner] = {}
        for device in devices:
            row = conn.execute(
                "SELECT kind, owner_id FROM device_owners WHERE device = ?", (device,)
            ).fetchone()
            if row is not None and (row["kind"], row["owner_id"]) != (owner.kind, owner.id):
                taken[device] = Owner(row["kind"], row["owner_id"])
        if taken:
            raise DeviceOwned(taken)
        now = time.time()
        conn.executemany(
            "INSERT OR IGNORE INTO device_owners(device, kind, owner_id, since) VALUES (?,?,?,?)",
            [(d, owner.kind, owner.id, now) for d in devices],
        )

    def release(
        self,
        owner: Owner,
        devices: Iterable[str] | None = None,
        *,
        conn: sqlite3.Connection | None = None,
    ) -> None:
        """``owner`` lets go of ``devices`` (all of its devices by default)."""
        c = conn if conn is not None else self.db.conn
        if devices is None:
            c.execute(
                "DELETE FROM device_owners WHERE kind = ? AND owner_id = ?", (owner.kind, owner.id)
            )
            return
        c.executemany(
            "DELETE FROM device_owners WHERE device = ? AND kind = ? AND owner_id = ?",
            [(d, owner.kind, owner.id) for d in devices],
        )

    def check_free(self, devices: Iterable[str], *, owner: Owner | None = None) -> None:
        """Raise :class:`DeviceOwned` if any device is held by someone other than ``owner``."""
        taken = {d: o for d, o in self.owners(devices).items() if o != owner}
        if taken:
            raise DeviceOwned(taken)

    # -- writing -------------------------------------------------------------

    def current(self, device: str) -> dict[str, Any] | None:
        """The device's desired document as last published, or None."""
        previous = self.db.desired(device)
        return previous[1] if previous else None

    def plan(
        self,
        device: str,
        serving: list[tuple[VersionLike, float]],
        shadows: list[VersionLike],
        *,
        experiment: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The next document for ``device`` (revision and allocation follow its last one)."""
        return plan_desired(
            self.current(device), serving, shadows, experiment=experiment, settings=settings
        )

    def publish_artifact(self, mv: VersionLike, data: bytes) -> None:
        publish_artifact(self.publisher, self.prefix, mv, data)

    def publish(
        self, device: str, doc: dict[str, Any], *, owner: Owner | None = None
    ) -> dict[str, Any]:
        """Sign, publish (retained) and record ``doc`` for ``device``.

        Refused with :class:`DeviceOwned` when the device is owned by someone
        other than ``owner``. Returns the document as signed (with ``device``,
        ``expires`` and each artifact's statement signature), which is also what
        the desired table keeps.
        """
        self.check_free([device], owner=owner)
        return self._seal_and_send(device, doc)

    def republish(self, device: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Re-sign the same content under the next revision, whoever owns the device.

        Only for the refresher: it changes no decision, it keeps one alive.
        """
        return self._seal_and_send(device, doc)

    def _seal_and_send(self, device: str, doc: dict[str, Any]) -> dict[str, Any]:
        # Every path that writes desired state ends here: a device id that is not
        # one (newline, '$SYS', 'models', 5,000 characters ...) never reaches a topic.
        try:
            check_device_id(device)
        except InvalidName as exc:
            raise DeployError(str(exc)) from None
        sealed, envelope = self.signer.seal(device, doc, time.time())
        self.publisher.publish(desired_topic(self.prefix, device), envelope, retain=True)
        self.db.set_desired(device, sealed)
        return sealed


def desired_topic(prefix: str, device: str) -> str:
    return f"{prefix}/{device}/desired"


def publish_desired(
    publisher: Publisher,
    db: ControlDB,
    prefix: str,
    device: str,
    doc: dict[str, Any],
    *,
    signer: DesiredSigner,
) -> dict[str, Any]:
    """Deprecated path kept for the writers not yet moved onto :class:`DesiredState`."""
    return DesiredState(db, publisher, prefix, signer).publish(device, doc)


def check_device_ids(devices: list[str]) -> list[str]:
    if not devices:
        raise DeployError("name at least one --device")
    for device in devices:
        try:
            check_device_id(device)  # the agent's own rule: MQTT, reserved levels, length
        except InvalidName as exc:
            raise DeployError(str(exc)) from None
    return list(dict.fromkeys(devices))
