"""What a retraining trains on: recent labelled samples plus some reference rows.

Recent data comes from the samples devices captured since the episode began
(``FeatureStore.captured_training_frame``), limited to the episode's scope;
reference rows are the most recent rows of the champion's training view, so
the new model does not forget the world it was trained on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from edgeloop_control.featurestore import FeatureStore, FeatureStoreError

if TYPE_CHECKING:
    from edgeloop_control.training.columns import FeatureKind

log = logging.getLogger("edgeloop.control.retrain")


@dataclass(frozen=True)
class TrainingSet:
    """The frame handed to training, and where its rows came from."""

    frame: pd.DataFrame  # features, target and "ts", in the champion's schema
    target: str
    features: list[str]
    recent_rows: int
    reference_rows: int


def labelled_since(
    store: FeatureStore, model: str, since: float | None, devices: list[str]
) -> pd.DataFrame:
    """Captured samples of ``model`` with labels since ``since``, from ``devices`` (all if empty).

    An empty frame when the store has nothing yet: the policy keeps waiting.
    """
    try:
        frame = store.captured_training_frame(
            model, since=pd.Timestamp(since, unit="s", tz="UTC") if since else None
        )
    except FeatureStoreError:
        return pd.DataFrame()
    if devices and not frame.empty:
        frame = frame[frame["device"].isin(devices)]
    return frame


def assemble(
    store: FeatureStore, meta: dict[str, Any], recent: pd.DataFrame, reference_share: float
) -> TrainingSet:
    """Recent samples plus ``reference_share`` of view rows, in the champion's schema.

    ``meta`` is the champion's registry metadata (features, target, feature view).
    """
    from edgeloop_control.training.columns import coerce_to_kinds

    target = meta.get("target") or "label"
    features = list(meta.get("features") or [])
    categorical = set(meta.get("categorical_features") or [])
    # Captured samples arrive as JSON (a bool feature as 0.0/1.0, a category
    # code as a number): each source is brought to the champion's schema
    # before the join, so the columns keep one kind.
    kinds: dict[str, FeatureKind] = {f: "string" if f in categorical else "float" for f in features}
    boolean = _boolean_features(meta)
    frame = coerce_to_kinds(
        recent[[*features, "label", "ts"]].rename(columns={"label": target}), kinds, boolean
    )
    reference_rows = 0
    view = meta.get("feature_view")
    if view and reference_share > 0:
        want = math.ceil(len(frame) * reference_share / (1 - reference_share))
        try:
            vv = store.view(view)
            ref = store.read(vv.ref, columns=[c for c in [*features, target] if c != vv.timestamp])
            ref = ref.tail(want).rename(columns={vv.timestamp: "ts"})[[*features, target, "ts"]]
            ref = coerce_to_kinds(ref, kinds, boolean)
            reference_rows = len(ref)
            frame = pd.concat([ref, frame], ignore_index=True)
        except (FeatureStoreError, KeyError) as exc:
            log.warning("no reference rows from %s: %s", view, exc)
    frame[target] = coerce_labels(frame[target])
    return TrainingSet(frame, target, features, len(recent), reference_rows)


def _boolean_features(meta: dict[str, Any]) -> frozenset[str]:
    """The champion's ``bool`` features: they stay booleans in the retrained model."""
    schema = meta.get("input_schema") or {}
    specs = schema.get("features") if isinstance(schema, dict) else None
    return frozenset(
        str(s["name"])
        for s in specs or []
        if isinstance(s, dict) and s.get("dtype") == "bool" and "name" in s
    )


def coerce_labels(series: pd.Series) -> pd.Series:
    """Labels arrive as JSON values; integral floats (1.0) are classes (1)."""
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().all() and (numeric == numeric.round()).all():
        return numeric.astype("int64")
    return series
