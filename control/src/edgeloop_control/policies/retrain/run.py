"""One retraining: the champion's recipe on the episode's data, registered with lineage.

The new version is trained like the champion (algorithm, features, target),
registered with lineage naming the drift event and its parent, and the champion
gate (``jobs/train_and_register.py``) decides whether it becomes
``challenger``. Whether an A/B test follows is the policy's call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.retrain.config import RetrainConfig
from edgeloop_control.policies.retrain.dataset import assemble
from edgeloop_control.policies.retrain.store import RetrainState

if TYPE_CHECKING:
    from edgeloop_control.jobs.train_and_register import TrainOutcome
    from edgeloop_control.registry import Registry


class RetrainFailed(EdgeloopError, ValueError):
    """Training refused the episode's data (reported once, retried with back-off)."""


def retrain(
    ws: Workspace,
    db: ControlDB,
    store: FeatureStore,
    registry: Registry,
    config: RetrainConfig,
    *,
    st: RetrainState,
    variant: str,
    recent: pd.DataFrame,
) -> TrainOutcome:
    """Train and register a successor of ``variant`` on ``recent`` (plus reference rows).

    Events: ``retrain`` when the attempt starts (not for retries after a
    failure: a retry is not news) and ``registered`` with the gate's verdict.
    Raises :class:`RetrainFailed` when training refuses the data.
    """
    # Imported here: training pulls in scikit-learn, seconds the daemon only
    # spends once a retraining is actually due.
    from edgeloop_control.jobs.train_and_register import train_and_register
    from edgeloop_control.training import TrainConfig, TrainingError

    model = st.model
    meta = registry.get(variant).metadata
    data = assemble(store, meta, recent, config.reference_share)
    if not st.failures:
        db.add_event(
            "retrain",
            f"retraining {model} like {variant} ({meta.get('algorithm')}) on "
            f"{data.recent_rows} recent labelled samples + {data.reference_rows} reference rows",
            subject=model,
            data={
                "cause_event": st.drift_event,
                "recent": data.recent_rows,
                "reference": data.reference_rows,
            },
        )
    train_config = TrainConfig(
        target=data.target,
        features=data.features,
        algo=meta.get("algorithm") or "rf",
        timestamp="ts",
        holdout=config.holdout,
        seed=0,
    )
    try:
        outcome = train_and_register(
            ws,
            name=model,
            config=train_config,
            frame=data.frame,
            lineage={
                "parent": variant,
                "cause": f"drift_event:{st.drift_event}",
                "devices": st.devices,
            },
            stage="auto",
            gate_metric=config.gate_metric,
            gate_margin=config.gate_margin,
            extra_metadata={
                "trigger": "drift",
                "drift_event": st.drift_event,
                "feature_view": meta.get("feature_view"),
            },
        )
    except (TrainingError, ValueError) as exc:
        # Not enough or unusable data: the episode stays open and is retried
        # with back-off (more labels may arrive).
        raise RetrainFailed(str(exc)) from exc
    metrics = outcome.result.metrics
    db.add_event(
        "registered",
        f"{outcome.version.ref} registered ({config.gate_metric} "
        f"{metrics.get(config.gate_metric, float('nan')):.3f} on the recent holdout) "
        f"stage {outcome.stage or 'none'}; champion gate: "
        f"{(outcome.gate or {}).get('reason', 'n/a')}",
        subject=model,
        data=outcome.to_dict(),
    )
    return outcome
