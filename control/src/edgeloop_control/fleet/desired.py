"""Who decides what a device runs: the one owner of desired state.

Every writer of desired state (``edgeloop deploy``, the demo, A/B experiments,
staged rollouts, the re-signing refresher) goes through :class:`DesiredState`:
it plans the document, signs, publishes and records it, and enforces ownership:
a device belongs to at most one experiment or rollout at a time
(:meth:`DesiredState.claim`), and nothing else writes its desired state while it
is owned (the refresher re-signs it, :meth:`DesiredState.republish`, changing
nothing). A one-off ``edgeloop deploy`` owns nothing after it returns; onto an
owned device it is refused naming the owner, unless the caller ends the owner
first (``--force``, cli/owners.py).

Each device gets a retained ``{prefix}/{device}/desired`` document with a
revision one higher than its last; each artifact is published once, retained,
on ``{prefix}/models/{name}/{version}``. Bucket ranges for A/B routing are
computed here from the device's previous allocation, so changing weights moves
as few routing keys as possible (see docs/router.md).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edgeloop_agent.wire.allocation import Allocation, allocate
from edgeloop_agent.wire.names import InvalidName, check_device_id
from edgeloop_agent.wire.topics import Topics, artifact_topic
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.signing import DesiredSigner

if TYPE_CHECKING:
    from edgeloop_control.infra.workspace import Workspace

_SPEC = re.compile(r"(?P<ref>[^=\s]+?)(?:=(?P<weight>\d+(?:\.\d+)?)%?)?")


class DeployError(EdgeloopError, ValueError):
    """A deployment request that cannot be carried out; the message says why."""


OwnerKind = Literal["experiment", "rollout"]

# How an operator ends each kind of owner (named in refusals).
_END_COMMAND: dict[str, str] = {
    "experiment": "edgeloop ab stop {id}",
    "rollout": "edgeloop rollout abort {id}",
}

# Separate statements run with execute(), not one executescript(): executescript
# COMMITs first, which would end a transaction the caller holds on the same
# connection (a policy building its DesiredState inside one).
OWNERS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_owners (
    device TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    since REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS device_owners_owner ON device_owners(kind, owner_id)",
)

# Fields the signer adds to a planned document (the statement signatures are
# recomputed from each model entry, so they need no stripping).
_SEALED_FIELDS = ("expires", "device")


@dataclass(frozen=True)
class Owner:
    """An experiment or rollout that holds devices' desired state while it runs."""

    kind: OwnerKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"

    @property
    def end_command(self) -> str:
        # A row written by a newer control node may name a kind this one does not
        # know: still say something an operator can act on rather than a KeyError.
        template = _END_COMMAND.get(self.kind, "edgeloop {kind} stop {id}")
        return template.format(kind=self.kind, id=self.id)


class DeviceOwned(DeployError):
    """The devices belong to another experiment or rollout; the message names each
    owner and the command that ends it, on one line."""

    def __init__(self, owned: dict[str, Owner]) -> None:
        self.owned = owned
        self.owners = sorted(set(owned.values()), key=str)
        devices = ", ".join(sorted(owned))
        them = "it" if len(self.owners) == 1 else "them"
        super().__init__(
            f"{devices} {'belongs' if len(owned) == 1 else 'belong'} to running "
            f"{', '.join(str(o) for o in self.owners)}; wait for {them} to finish or end "
            f"{them} with " + " and ".join(f"`{o.end_command}`" for o in self.owners)
        )


class VersionLike(Protocol):
    """A model version as desired state names it (the registry's ModelVersion, or an
    entry of a previous document). Read-only members, so frozen dataclasses fit."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def signature(self) -> str | None: ...


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
    serving: Sequence[tuple[VersionLike, float]],
    shadows: Sequence[VersionLike],
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
    doc = {
        "revision": (int(previous["revision"]) + 1) if previous else 1,
        "experiment": experiment,
        "models": [_entry(mv, "serve", w) for mv, w in serving]
        + [_entry(mv, "shadow", 0.0) for mv in shadows],
        "allocation": allocation.to_dict(),
        "settings": dict(settings or (previous or {}).get("settings") or {}),
    }
    if previous and previous.get("agent"):
        # The agent package a device was told to run (fleet/agentpackages.py) stays
        # named when its models change.
        doc["agent"] = previous["agent"]
    return doc


def publish_artifact(publisher: Publisher, prefix: str, mv: VersionLike, data: bytes) -> None:
    """Publish a model artifact (retained) after checking it is the registered one."""
    if hashlib.sha256(data).hexdigest() != mv.sha256:
        raise DeployError(f"{mv.name}@{mv.version}: registry artifact does not match its sha256")
    publisher.publish(artifact_topic(prefix, mv.name, mv.version), data, retain=True)


class DesiredState:
    """The one writer of desired state, and the keeper of who owns each device.

    ``signer`` may be a callable so the signing key is only loaded when
    something is actually published (a policy that never deploys needs no key);
    it is called once, on the first publish. ``publisher`` may be None for
    read-only use (ownership, planning): publishing then says there is no broker.
    """

    def __init__(
        self,
        db: ControlDB,
        publisher: Publisher | None,
        prefix: str,
        signer: DesiredSigner | Callable[[], DesiredSigner],
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.prefix = prefix
        self._signer = signer
        for statement in OWNERS_SCHEMA:
            db.conn.execute(statement)

    @classmethod
    def for_workspace(
        cls, ws: Workspace, db: ControlDB, publisher: Publisher | None
    ) -> DesiredState:
        """The workspace's topic prefix and signing key (loaded on first publish)."""
        return cls(db, publisher, ws.topic_prefix, lambda: DesiredSigner.for_workspace(ws))

    @property
    def signer(self) -> DesiredSigner:
        if not isinstance(self._signer, DesiredSigner):
            # Kept once loaded: the daemon's refresher asks for it every minute. A
            # load that fails is not kept, so a key put in place later is picked up.
            self._signer = self._signer()
        return self._signer

    @contextmanager
    def _write(self, conn: sql.Connection | None = None) -> Iterator[sql.Connection]:
        """A write transaction (BEGIN IMMEDIATE), or the one the caller already holds."""
        if conn is not None:
            yield conn
        elif self.db.conn.in_transaction:
            yield self.db.conn
        else:
            with self.db.transaction() as tx:
                yield tx

    # -- ownership -----------------------------------------------------------

    def owners(self, devices: Iterable[str] | None = None) -> dict[str, Owner]:
        """Owned devices (all of them, or among ``devices``) and their owner."""
        query = "SELECT device, kind, owner_id FROM device_owners"
        if devices is None:
            rows = self.db.conn.execute(query).fetchall()
        else:
            # By key, in chunks under SQLite's variable limit: every publish asks about
            # its one device, and a 10,000-device deploy must not read the table each time.
            wanted = list(dict.fromkeys(devices))
            rows = []
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows += self.db.conn.execute(f"{query} WHERE device IN ({marks})", chunk).fetchall()
        return {r["device"]: Owner(r["kind"], r["owner_id"]) for r in rows}

    def devices_of(self, owner: Owner) -> list[str]:
        """The devices ``owner`` holds, sorted."""
        rows = self.db.conn.execute(
            "SELECT device FROM device_owners WHERE kind = ? AND owner_id = ? ORDER BY device",
            (owner.kind, owner.id),
        ).fetchall()
        return [r["device"] for r in rows]

    def claim(
        self, owner: Owner, devices: Iterable[str], *, conn: sql.Connection | None = None
    ) -> None:
        """Make ``owner`` the owner of ``devices``, or raise :class:`DeviceOwned`.

        Idempotent for devices ``owner`` already holds; all or nothing otherwise.
        Pass the caller's open transaction as ``conn`` to claim atomically with the
        caller's own insert (two policies starting at once: the second one's claim
        sees the first's, because both run under SQLite's write lock).
        """
        wanted = list(dict.fromkeys(devices))
        with self._write(conn) as tx:
            self._claim(tx, owner, wanted)

    def _claim(self, conn: sql.Connection, owner: Owner, devices: list[str]) -> None:
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
        conn: sql.Connection | None = None,
    ) -> None:
        """``owner`` lets go of ``devices`` (all of its devices by default).

        Idempotent, and never releases a device someone else holds.
        """
        with self._write(conn) as tx:
            if devices is None:
                tx.execute(
                    "DELETE FROM device_owners WHERE kind = ? AND owner_id = ?",
                    (owner.kind, owner.id),
                )
                return
            tx.executemany(
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
        serving: Sequence[tuple[VersionLike, float]],
        shadows: Sequence[VersionLike],
        *,
        experiment: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The next document for ``device`` (revision and allocation follow its last one)."""
        return plan_desired(
            self.current(device), serving, shadows, experiment=experiment, settings=settings
        )

    def publish_artifact(self, mv: VersionLike, data: bytes) -> None:
        publish_artifact(self._publisher(), self.prefix, mv, data)

    def publish(
        self, device: str, doc: dict[str, Any], *, owner: Owner | None = None
    ) -> dict[str, Any]:
        """Sign, publish (retained) and record ``doc`` for ``device``.

        Refused with :class:`DeviceOwned` when the device is owned by someone
        other than ``owner``. Returns the document as signed (with ``device``,
        ``expires`` and each artifact's statement signature), which is also what
        the desired table keeps.
        """
        # Not under SQLite's write lock: holding it across a network round trip
        # would stall every other writer (the daemon's ingestion, a CLI command) for
        # as long as the broker takes, up to the publish timeout. What is left is a
        # window of one publish in which a policy may claim a device a deploy just
        # checked; policies claim before they publish, so the policy's own document
        # still goes out after the deploy's.
        self.check_free([device], owner=owner)
        return self._seal_and_send(device, doc)

    def republish(self, device: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Re-sign ``doc``, the device's document as last published, under the next
        revision and with a fresh expiry, whoever owns the device.

        Only for the refresher: it changes no decision, it keeps one alive (a
        re-signed document under the old revision would be refused as a replay).
        Returns None, publishing nothing, when the device's document changed since
        ``doc`` was read: the newer one is fresh and not this one's to overwrite.
        """
        now = self.db.desired(device)
        if now is None or now[0] != doc.get("revision"):
            return None
        fresh = {k: v for k, v in doc.items() if k not in _SEALED_FIELDS}
        fresh["revision"] = now[0] + 1
        return self._seal_and_send(device, fresh)

    def _publisher(self) -> Publisher:
        if self.publisher is None:
            raise DeployError(
                "publishing desired state needs a broker connection, and this process has none"
            )
        return self.publisher

    def _seal_and_send(self, device: str, doc: dict[str, Any]) -> dict[str, Any]:
        # Every path that writes desired state ends here: a device id that is not
        # one (newline, '$SYS', 'models', 5,000 characters ...) never reaches a topic.
        try:
            topic = Topics(device, self.prefix).desired
        except InvalidName as exc:
            raise DeployError(str(exc)) from None
        publisher = self._publisher()
        sealed, envelope = self.signer.seal(device, doc, time.time())
        publisher.publish(topic, envelope, retain=True)
        self.db.set_desired(device, sealed)
        return sealed


def check_device_ids(devices: list[str]) -> list[str]:
    if not devices:
        raise DeployError("name at least one --device")
    for device in devices:
        try:
            check_device_id(device)  # the agent's own rule: MQTT, reserved levels, length
        except InvalidName as exc:
            raise DeployError(str(exc)) from None
    return list(dict.fromkeys(devices))
