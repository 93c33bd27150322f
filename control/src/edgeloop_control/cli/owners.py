"""``edgeloop deploy --force``: end the experiment or rollout that owns a device.

Ending an owner is a policy's own act (``edgeloop ab stop`` / ``edgeloop rollout
abort``: its devices go back to what they ran before, then it releases them), so
it is done here, at the top layer, through the policies' managers; the desired
state owner (``fleet/desired.py``) only knows who holds which device.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.cli.common import CLIState
from edgeloop_control.fleet.desired import DeployError, DesiredState, Owner
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient

# States in which an owner has ended (as the policies store and print them), and
# "gone" for an owner whose record no longer exists.
_ENDED = {
    "experiment": ("rolled_back", "promoted", "gone"),
    "rollout": ("rolled_back", "completed", "gone"),
}
_STATUS_COMMAND = {
    "experiment": "edgeloop ab status {id}",
    "rollout": "edgeloop rollout status {id}",
}


def end_owners(
    st: CLIState,
    db: ControlDB,
    client: ControlClient,
    desired: DesiredState,
    owned: dict[str, Owner],
) -> dict[str, dict[str, Any]]:
    """End every owner in ``owned`` ({device: owner}); returns {device: what was ended}.

    Raises :class:`DeployError` (nothing deployed) when an owner could not be ended
    or still holds its devices because its rollback is not finished.
    """
    reason = f"ended by `edgeloop deploy --force` onto {', '.join(sorted(owned))}"
    ended: dict[str, dict[str, Any]] = {}
    for owner in sorted(set(owned.values()), key=str):
        held = desired.devices_of(owner)
        state = _end(st, db, client, owner, reason)
        # The policy releases its devices when it ends; a claim left behind by an
        # owner that has ended (or no longer exists) would otherwise lock the
        # devices for good, its end command refusing because it already ended.
        stale = bool(desired.devices_of(owner))
        if stale and state not in _ENDED.get(owner.kind, ()):
            status = _STATUS_COMMAND.get(owner.kind, "edgeloop events").format(id=owner.id)
            raise DeployError(
                f"{owner} is {state} and still holds {', '.join(held)} until its rollback is "
                f"published; nothing was deployed: retry once `{status}` shows it ended"
            )
        if stale:
            desired.release(owner)
        info = {"kind": owner.kind, "id": owner.id, "state": state, "devices": held}
        db.add_event(
            "deploy_forced",
            f"edgeloop deploy --force ended {owner} ({state}), which held {', '.join(held)}"
            + ("; its leftover claim was released" if stale else ""),
            subject=owner.id,
            data={**info, "deploy_devices": sorted(owned), "stale_claim_released": stale},
        )
        for device, o in owned.items():
            if o == owner:
                ended[device] = info
    return ended


def _end(st: CLIState, db: ControlDB, client: ControlClient, owner: Owner, reason: str) -> str:
    """Stop/abort ``owner`` as its own command would; its state afterwards."""
    if owner.kind == "experiment":
        return _stop_experiment(st, db, client, owner.id, reason)
    if owner.kind == "rollout":
        return _abort_rollout(st, db, client, owner.id, reason)
    raise DeployError(
        f"{owner} is not something this control node can end; see `{owner.end_command}`"
    )


def _stop_experiment(
    st: CLIState, db: ControlDB, client: ControlClient, exp_id: str, reason: str
) -> str:
    # Imported here: the experiments package pulls in scipy (seconds on a small box).
    from edgeloop_control.infra.workspace import WorkspaceError
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

    try:
        manager = ExperimentManager(st.workspace, db, client)
    except (ExperimentError, WorkspaceError) as exc:
        raise DeployError(f"cannot stop experiment {exp_id}: {exc}") from None
    try:
        return str(manager.stop(exp_id, reason)["state"])
    except ExperimentError:
        pass  # already ended, or no such experiment: its state says which
    try:
        return str(manager.status(exp_id)[0]["state"])
    except (ExperimentError, IndexError):
        return "gone"


def _abort_rollout(
    st: CLIState, db: ControlDB, client: ControlClient, rollout_id: str, reason: str
) -> str:
    from edgeloop_control.policies.rollout import RolloutError, RolloutManager

    try:
        manager = RolloutManager(st.workspace, db, client)
    except RolloutError as exc:
        raise DeployError(f"cannot abort rollout {rollout_id}: {exc}") from None
    try:
        return str(manager.abort(rollout_id, reason)["state"])
    except RolloutError:
        pass  # already ended, or no such rollout: its state says which
    try:
        return str(manager.status(rollout_id)[0]["state"])
    except (RolloutError, IndexError):
        return "gone"
