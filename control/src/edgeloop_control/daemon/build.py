"""Assemble the control daemon with its policies from the workspace config."""

from __future__ import annotations

from edgeloop_control.daemon.service import ControlDaemon
from edgeloop_control.infra.workspace import Workspace


def build_daemon(
    ws: Workspace,
    broker_url: str,
    *,
    tick_s: float = 1.0,
    worker: str | None = None,
    lease_s: float = 15.0,
) -> ControlDaemon:
    from edgeloop_control.fleet.desired import DesiredState
    from edgeloop_control.fleet.refresh import DesiredRefresh
    from edgeloop_control.policies.experiments import ExperimentManager
    from edgeloop_control.policies.retention.config import RetentionConfig
    from edgeloop_control.policies.retention.job import RetentionJob
    from edgeloop_control.policies.retrain.policy import RetrainPolicy
    from edgeloop_control.policies.rollout import RolloutManager

    retention = RetentionConfig.from_workspace(ws)  # a bad [retention] stops here
    daemon = ControlDaemon(ws, broker_url, tick_s=tick_s, worker=worker, lease_s=lease_s)
    rollouts = RolloutManager(ws, daemon.db, daemon.publisher)
    experiments = ExperimentManager(ws, daemon.db, daemon.publisher, rollouts=rollouts)
    retrain = RetrainPolicy(ws, daemon.db, daemon.store, experiments=experiments)
    # Order matters within one tick: fresh drift can start an experiment, a
    # decided experiment can start a rollout, and the rollout moves first.
    # Last: it re-signs documents no policy touched for half their lifetime.
    refresh = DesiredRefresh(DesiredState.for_workspace(ws, daemon.db, daemon.publisher))
    daemon.policies = [retrain, experiments, rollouts, refresh]
    if retention.enabled:
        # Last: it reads which devices the policies hold after they moved this tick.
        daemon.policies.append(RetentionJob(daemon.db, retention))
        daemon.forget_seen = False  # the job prunes seen_messages, in batches
    return daemon
