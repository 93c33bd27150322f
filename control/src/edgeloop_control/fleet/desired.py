"""Turn "these model versions, these weights, these devices" into desired state.

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
from dataclasses import dataclass
from typing import Any, Protocol

from edgeloop_agent.names import InvalidName, check_device_id
from edgeloop_agent.protocol import artifact_topic
from edgeloop_agent.router import Allocation, allocate
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import DesiredSigner

_SPEC = re.compile(r"(?P<ref>[^=\s]+?)(?:=(?P<weight>\d+(?:\.\d+)?)%?)?")


class DeployError(ValueError):
    """A deployment request that cannot be carried out; the message says why."""


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


def publish_artifact(client: ControlClient, prefix: str, mv: VersionLike, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != mv.sha256:
        raise DeployError(f"{mv.name}@{mv.version}: registry artifact does not match its sha256")
    client.publish(artifact_topic(prefix, mv.name, mv.version), data, retain=True)


def publish_desired(
    client: ControlClient,
    db: ControlDB,
    prefix: str,
    device: str,
    doc: dict[str, Any],
    *,
    signer: DesiredSigner,
) -> dict[str, Any]:
    """The one way desired state leaves the control node: signed for this device.

    Returns the document as signed (with ``device``, ``expires`` and each
    artifact's statement signature), which is also what the desired table keeps.
    """
    # Every path that writes desired state ends here: a device id that is not
    # one (newline, '$SYS', 'models', 5,000 characters ...) never reaches a topic.
    try:
        check_device_id(device)
    except InvalidName as exc:
        raise DeployError(str(exc)) from None
    sealed, envelope = signer.seal(device, doc, time.time())
    client.publish(f"{prefix}/{device}/desired", envelope, retain=True)
    db.set_desired(device, sealed)
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
