"""Which devices exist: the inventory, and the one check every device-targeting path uses.

A device is *known* when it has a row in the inventory (the ``devices`` table of
control.sqlite): it has connected (its status or telemetry was ingested) or it was
registered (``edgeloop fleet add``, or a command given ``--new-device``). Commands and
policies that target devices (deploy, A/B start, rollout start, group set) call
:func:`require_known`, so a typo (``pump-99``) is refused in one line naming some known
devices instead of becoming a phantom that joins fleet-wide scopes and is waited for.

A device is *stale* when it is offline and was last heard from longer ago than
``[fleet] offline_after_s`` (:func:`offline_after_s`): policies starting on a set of devices
skip stale ones and say so (:func:`split_stale`) rather than wait for them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop_agent.wire.numeric import is_number
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.errors import ConfigError, EdgeloopError, reject_unknown_settings
from edgeloop_control.fleet.desired import DeployError, DesiredState, DeviceOwned, check_device_ids
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import Publisher
from edgeloop_control.infra.signing import DesiredSigner

if TYPE_CHECKING:
    from edgeloop_control.infra.workspace import Workspace

# How many known devices a refusal names: enough to spot the intended one, one line.
_NAMED = 8

DEFAULT_OFFLINE_AFTER_S = 600.0


class UnknownDevice(EdgeloopError, ValueError):
    """Devices not in the inventory; the message names them and some known ones."""

    def __init__(self, unknown: Sequence[str], known: Sequence[str], *, flag: bool = True) -> None:
        self.unknown = list(unknown)
        self.known = list(known)
        what = "device" if len(unknown) == 1 else "devices"
        if known:
            shown = ", ".join(known[:_NAMED])
            more = f" and {len(known) - _NAMED} more" if len(known) > _NAMED else ""
            listing = f"known devices: {shown}{more} (`edgeloop fleet`)"
        else:
            listing = "no device is known yet (none has connected or been registered)"
        super().__init__(
            f"unknown {what} {', '.join(unknown)}; {listing}; register a new one with "
            f"`edgeloop fleet add {' '.join(unknown)}`" + (" or pass --new-device" if flag else "")
        )


def known_devices(db: ControlDB) -> list[str]:
    """Every device in the inventory, sorted."""
    return [r["device"] for r in db.conn.execute("SELECT device FROM devices ORDER BY device")]


def unknown_among(db: ControlDB, devices: Iterable[str]) -> list[str]:
    """Those of ``devices`` (in their order) that the inventory does not hold."""
    wanted = list(dict.fromkeys(devices))
    present: set[str] = set()
    # By key in chunks under SQLite's variable limit: 10,000 devices must not read the table
    # once per device.
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.conn.execute(f"SELECT device FROM devices WHERE device IN ({marks})", chunk)
        present.update(r["device"] for r in rows)
    return [d for d in wanted if d not in present]


def require_known(
    db: ControlDB,
    devices: Sequence[str],
    *,
    new_device: bool | None = False,
    source: str = "",
) -> list[str]:
    """``devices`` checked as ids (``DeployError``) and as known (:class:`UnknownDevice`).

    With ``new_device`` the unknown ones are registered (``source`` says by what, for the
    event) instead of refused; ``new_device=None`` means the caller offers no such flag (the
    refusal then does not suggest one). Returns the ids, de-duplicated, in the caller's order.
    """
    ids = check_device_ids(list(devices))
    missing = unknown_among(db, ids)
    if missing and not new_device:
        raise UnknownDevice(missing, known_devices(db), flag=new_device is not None)
    if missing:
        register(db, missing, source=source or "--new-device")
    return ids


def register(
    db: ControlDB, devices: Sequence[str], *, source: str = "edgeloop fleet add"
) -> list[str]:
    """Add ``devices`` to the inventory; returns the ones that were not there already.

    Registering is idempotent: a device already known keeps its row (status, groups).
    """
    ids = check_device_ids(list(devices))
    now = time.time()
    added: list[str] = []
    with _write(db):
        for device in unknown_among(db, ids):
            db.conn.execute(
                "INSERT OR IGNORE INTO devices(device, registered_at) VALUES (?, ?)", (device, now)
            )
            added.append(device)
        if added:
            db.add_event(
                "device_added",
                f"registered {', '.join(added)} ({source})",
                subject=added[0] if len(added) == 1 else None,
                data={"devices": added, "source": source},
            )
    return added


class _write:
    """A write transaction, or the caller's when one is open (a policy's start)."""

    def __init__(self, db: ControlDB) -> None:
        self.db = db
        self.own = not db.conn.in_transaction

    def __enter__(self) -> None:
        if self.own:
            self.db.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if self.own:
            self.db.conn.execute("ROLLBACK" if exc is not None else "COMMIT")


# -- removal -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    device: str
    had_desired: bool
    groups: list[str]


def remove(db: ControlDB, publisher: Publisher, prefix: str, device: str) -> Removed:
    """Forget ``device``: clear its retained desired state and status on the broker, delete
    its desired state and inventory row (its groups with it), record a ``device_removed``
    event. Its history (telemetry, drift windows, events) stays: it is what happened.

    Refused with :class:`DeviceOwned` while an experiment or rollout holds it (the caller
    ends the owner first, as ``--force`` does), and with :class:`UnknownDevice` when the
    inventory does not hold it (nor any desired state names it).
    """
    [device] = check_device_ids([device])
    row = db.device(device)
    had_desired = db.desired(device) is not None
    if row is None and not had_desired:
        raise UnknownDevice([device], known_devices(db))
    owned = DesiredState(db, None, prefix, _no_signer).owners([device])
    if owned:
        raise DeviceOwned(owned)
    topics = Topics(device, prefix)
    # The broker first: if it cannot be reached nothing is deleted, so the command can be
    # retried; an empty retained payload deletes the retained message.
    publisher.publish(topics.desired, b"", retain=True)
    publisher.publish(topics.status, b"", retain=True)
    groups = list((row or {}).get("groups") or [])
    with _write(db):
        db.conn.execute("DELETE FROM desired WHERE device = ?", (device,))
        db.conn.execute("DELETE FROM devices WHERE device = ?", (device,))
        db.add_event(
            "device_removed",
            f"removed {device} from the fleet"
            + (" (its desired state cleared)" if had_desired else "")
            + (f"; it left group(s) {', '.join(groups)}" if groups else ""),
            subject=device,
            data={"device": device, "had_desired": had_desired, "groups": groups},
        )
    return Removed(device, had_desired, groups)


def _no_signer() -> DesiredSigner:
    raise DeployError("removing a device signs nothing")  # pragma: no cover - never called


# -- offline devices -------------------------------------------------------------------------


def offline_after_s(ws: Workspace) -> float:
    """``[fleet] offline_after_s`` (seconds, > 0; default 600): a device offline longer
    than this is skipped by policies starting on it. ``ConfigError`` naming the setting."""
    section = ws.section("fleet")
    reject_unknown_settings(section, ("offline_after_s",), "[fleet] in edgeloop.toml")
    value = section.get("offline_after_s", DEFAULT_OFFLINE_AFTER_S)
    return check_offline_after(value, "[fleet] offline_after_s in edgeloop.toml")


def check_offline_after(value: Any, source: str = "offline_after_s") -> float:
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{source} must be a positive number of seconds, got {value!r}")
    return float(value)


def offline_for(row: dict[str, Any], now: float) -> float | None:
    """Seconds ``row`` (an inventory row) has been offline, counted from the last message
    (or its registration, if it never connected); None when online or never dated."""
    status = row.get("status") if isinstance(row.get("status"), dict) else {}
    if row.get("online") and (status or {}).get("online", True):
        return None
    since = row.get("last_seen") or row.get("registered_at")
    return max(0.0, now - float(since)) if is_number(since) else None


@dataclass(frozen=True)
class Stale:
    device: str
    offline_s: float

    def __str__(self) -> str:
        return f"{self.device} ({_ago(self.offline_s)})"


def split_stale(
    db: ControlDB, devices: Sequence[str], after_s: float, now: float | None = None
) -> tuple[list[str], list[Stale]]:
    """``devices`` split into (usable, stale): stale ones are offline longer than ``after_s``."""
    now = time.time() if now is None else now
    rows = {d: db.device(d) or {} for d in devices}
    keep: list[str] = []
    stale: list[Stale] = []
    for device in devices:
        gone = offline_for(rows[device], now)
        if gone is not None and gone > after_s:
            stale.append(Stale(device, gone))
        else:
            keep.append(device)
    return keep, stale


def stale_note(stale: Sequence[Stale], after_s: float) -> str:
    """The one line a policy records when it skips stale devices."""
    return f"skipped, offline longer than {after_s:g} s ([fleet] offline_after_s): " + ", ".join(
        str(s) for s in stale
    )


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"offline {seconds:.0f} s"
    if seconds < 7200:
        return f"offline {seconds / 60:.0f} min"
    if seconds < 172800:
        return f"offline {seconds / 3600:.1f} h"
    return f"offline {seconds / 86400:.1f} d"
