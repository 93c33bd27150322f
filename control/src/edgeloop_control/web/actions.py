"""The three operator actions (abort a rollout, stop an experiment, promote a version):
the same managers as the CLI, each recording an event that names the signed-in user.
Called by :class:`~edgeloop_control.web.dashboard.Dashboard` only after it checked the
session and its CSRF token; each returns where to send the browser next.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.web.auth import Session, clean_user
from edgeloop_control.web.pages import path_part


class ActionError(EdgeloopError, RuntimeError):
    pass


class Actions:
    def __init__(self, ws: Workspace, broker: str | None) -> None:
        self.ws = ws
        self.broker = broker

    def _writable(self) -> ControlDB:
        return ControlDB(self.ws.control_db)

    def abort(self, request: Request, session: Session, form: dict[str, str]) -> str:
        from edgeloop_control.policies.rollout import RolloutError, RolloutManager

        rid = request.path_params["rid"]
        reason = _reason(form, session, "aborted from the dashboard")
        db = self._writable()
        try:
            # No publisher: the abort is durable here and `edgeloop serve` (this process)
            # publishes the rollback on its next tick, as after `edgeloop rollout abort`.
            RolloutManager(self.ws, db, None).abort(rid, reason)
            db.add_event(
                "dashboard",
                f"{session.user} aborted rollout {rid}: {reason}",
                subject=rid,
                data={"user": session.user, "action": "abort"},
            )
        except (RolloutError, ValueError) as exc:
            raise ActionError(str(exc)) from None
        finally:
            db.close()
        return f"/rollouts/{path_part(rid)}?" + urlencode({"done": f"rollout {rid} aborted"})

    def stop(self, request: Request, session: Session, form: dict[str, str]) -> str:
        from edgeloop_control.infra.mqtt import connected
        from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

        exp_id = request.path_params["exp_id"]
        reason = _reason(form, session, "stopped from the dashboard")
        db = self._writable()
        try:
            if self.broker:
                with connected(self.broker) as client:
                    ExperimentManager(self.ws, db, client).stop(exp_id, reason)
            else:
                ExperimentManager(self.ws, db, None).stop(exp_id, reason)
            db.add_event(
                "dashboard",
                f"{session.user} stopped experiment {exp_id}: {reason}",
                subject=exp_id,
                data={"user": session.user, "action": "stop"},
            )
        except (ExperimentError, ValueError, OSError) as exc:
            raise ActionError(str(exc)) from None
        finally:
            db.close()
        return f"/experiments/{path_part(exp_id)}?" + urlencode(
            {"done": f"experiment {exp_id} stopped"}
        )

    def promote(self, request: Request, session: Session, form: dict[str, str]) -> str:
        from edgeloop_control.registry import Registry, RegistryError

        name, version = request.path_params["name"], request.path_params["version"]
        stage = form.get("stage") or "champion"
        reason = _reason(form, session, "promoted from the dashboard")
        try:
            registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
            mv = registry.promote(name, version, stage)
        except (RegistryError, ValueError, OSError) as exc:
            raise ActionError(str(exc)) from None
        db = self._writable()
        try:
            db.add_event(
                "dashboard",
                f"{session.user} promoted {mv.ref} to {stage}: {reason}",
                subject=mv.ref,
                data={"user": session.user, "action": "promote"},
            )
        finally:
            db.close()
        return f"/models/{path_part(name)}/{path_part(mv.version)}?" + urlencode(
            {"done": f"{mv.ref} is now {stage}"}
        )


def _reason(form: dict[str, str], session: Session, default: str) -> str:
    text = clean_user(form.get("reason")) if form.get("reason") else default
    return f"{text} (by {session.user} on the dashboard)"
