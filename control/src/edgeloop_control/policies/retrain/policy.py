"""Drift -> retraining: the policy that notices the world changed and reacts.

Per model with a champion, every tick:

1. **Signal.** A device is drifting when its last ``consecutive_windows``
   drift windows of the champion variant (with enough data) all flag the
   configured signals: ``features`` (dataset-level decision after the
   multiple-testing correction), ``output`` (prediction drift), ``concept``
   (the error-rate detector on labelled outcomes). See ``trigger.py``.
2. **Episode.** The first such device opens a drift episode (event
   ``drift_detected``); the scope (device / group / fleet) decides which devices
   the new model will be tested on.
3. **Data.** Wait until ``min_samples`` labelled captured samples since the
   episode began exist in the feature store (event ``waiting_for_labels`` once).
4. **Retrain** with the champion's configuration (algorithm, parameters,
   features, target) on the recent labelled data plus ``reference_share`` of
   rows from the champion's training view (``dataset.py``); evaluate on the
   most recent holdout; register with lineage naming the drift event; the
   champion gate decides whether it becomes ``challenger`` (``run.py``).
5. **Experiment.** Start an A/B test of champion vs challenger on the scope's
   devices. A cooldown then keeps the policy quiet.

A failing step backs off exponentially with one ``retrain_failed`` event per
distinct reason. State lives in SQLite (``store.py``), so a daemon restart resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.jsoncolumn import CorruptColumn
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.retrain.config import RetrainConfig
from edgeloop_control.policies.retrain.dataset import labelled_since
from edgeloop_control.policies.retrain.run import RetrainFailed, retrain
from edgeloop_control.policies.retrain.store import (
    COLLECTING,
    EXPERIMENTING,
    IDLE,
    RetrainState,
    RetrainStore,
)
from edgeloop_control.policies.retrain.trigger import DriftTrigger

if TYPE_CHECKING:
    from edgeloop_control.jobs.train_and_register import TrainOutcome
    from edgeloop_control.registry import Registry

log = logging.getLogger("edgeloop.control.retrain")

__all__ = ["Experiments", "RetrainConfig", "RetrainFailed", "RetrainPolicy"]


class Experiments(Protocol):
    """What the policy needs of the A/B experiment policy (``ExperimentManager``)."""

    def running_for(self, model: str) -> Sequence[object]: ...

    def start(
        self,
        model: str,
        champion: str,
        challenger: str,
        devices: Sequence[str],
        *,
        weight: float | None = None,
        cause: str | None = None,
    ) -> dict[str, Any]: ...


class RetrainPolicy:
    name = "retrain"

    def __init__(
        self,
        ws: Workspace,
        db: ControlDB,
        store: FeatureStore,
        *,
        experiments: Experiments | None = None,
        config: RetrainConfig | None = None,
    ) -> None:
        self.ws = ws
        self.db = db
        self.store = store
        self.experiments = experiments
        self.config = config or RetrainConfig.from_workspace(ws)
        self.states = RetrainStore(db)
        self.trigger = DriftTrigger(db, self.config)
        self._registry: Registry | None = None

    def state(self, model: str) -> RetrainState:
        """Where the policy stands for ``model`` (idle if it never acted on it)."""
        return self.states.load(model)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from edgeloop_control.registry import Registry

            self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
        return self._registry

    def tick(self, now: float) -> None:
        if not self.config.enabled or not self.ws.registry_dir.joinpath(".dvc").is_dir():
            return
        for model in self.registry.names():
            champion = self.registry.stages(model).get("champion")
            if not champion:
                continue
            try:
                self._tick_model(model, f"{model}@{champion}", now)
            except Exception as exc:  # a bad episode must not stop the other models
                self._failed(model, exc, now)

    def _tick_model(self, model: str, variant: str, now: float) -> None:
        st = self.states.load(model)
        if st.backing_off(now):
            return
        if st.phase == EXPERIMENTING:
            if self.experiments is not None and self.experiments.running_for(model):
                return
            st.close_episode()
            self.states.save(st)
        if st.cooling_down(now, self.config.cooldown_s):
            return
        if st.phase == IDLE:
            episode = self.trigger.detect(variant)
            if episode is None:
                return
            event = self.db.add_event(
                "drift_detected", episode.message, subject=model, data=episode.event_data()
            )
            log.warning(episode.message)
            st.open_episode(episode.since, event, episode.scope)
            self.states.save(st)
        if st.phase != COLLECTING:
            return
        recent = labelled_since(self.store, model, st.episode_start, st.devices)
        if len(recent) < self.config.min_samples:
            note = (
                f"waiting for labels: {len(recent)} of {self.config.min_samples} labelled samples"
            )
            if st.note is None:
                self.db.add_event("waiting_for_labels", f"{model}: {note}", subject=model)
            st.note = note
            self.states.save(st)
            return
        outcome = retrain(
            self.ws,
            self.db,
            self.store,
            self.registry,
            self.config,
            st=st,
            variant=variant,
            recent=recent,
        )
        st.succeeded()
        self._registry = None  # new tags: re-read
        self._after_registration(st, variant, outcome, now)
        self.states.save(st)

    def _after_registration(
        self, st: RetrainState, variant: str, outcome: TrainOutcome, now: float
    ) -> None:
        """A challenger goes into an A/B test on the episode's devices; the episode ends."""
        st.last_retrain = now
        if outcome.stage != "challenger" or self.experiments is None:
            st.phase = IDLE
            st.note = "challenger not better than the champion on recent data"
            return
        model, challenger = st.model, outcome.version.ref
        try:
            exp = self.experiments.start(
                model,
                variant,
                challenger,
                st.devices,
                weight=None,
                cause=f"drift_event:{st.drift_event}",
            )
        except (EdgeloopError, ValueError) as exc:  # devices owned by a rollout, ...
            self.db.add_event(
                "ab_not_started", f"{challenger} not A/B tested: {exc}", subject=model
            )
            st.phase = IDLE
            st.note = str(exc)
            return
        st.phase = EXPERIMENTING
        st.note = f"experiment {exp.get('id')}"

    def _failed(self, model: str, exc: BaseException, now: float) -> None:
        """Back off exponentially; record one event per distinct failure."""
        try:
            st = self.states.load(model)
        except CorruptColumn:
            # The row itself is what failed: start the model over from idle
            # rather than failing on it forever (the event names the column).
            st = RetrainState(model)
        delay = self.config.retry_delay(st.failures + 1)
        expected = isinstance(exc, EdgeloopError)  # the data or the database, not a bug
        reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if reason != st.last_error:
            message = (
                f"{model}: retraining failed ({reason}); "
                f"retrying with back-off, next try in {delay:.0f} s"
            )
            self.db.add_event(
                "retrain_failed",
                message,
                subject=model,
                data={"reason": reason, "failures": st.failures + 1, "retry_in_s": delay},
            )
            log.error(message, exc_info=not expected)
        else:
            log.debug("%s: retraining failed again (%d times): %s", model, st.failures + 1, reason)
        st.failed(reason, now + delay)
        self.states.save(st)
