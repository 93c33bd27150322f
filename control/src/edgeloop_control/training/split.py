"""The held-out rows: the most recent ones, or a seeded random sample."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from edgeloop_control.training.errors import TrainingError

MIN_TRAIN_ROWS = 10
MIN_HOLDOUT_ROWS = 5


@dataclass(frozen=True)
class HoldoutSplit:
    """Row positions (ascending) of the training and held-out parts."""

    train: np.ndarray
    holdout: np.ndarray
    time_based: bool
    stratified: bool


def holdout_split(
    n_rows: int,
    fraction: float,
    *,
    seed: int,
    timestamps: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> HoldoutSplit:
    """Split ``n_rows`` rows into training and held-out positions.

    With ``timestamps`` the held-out part is the most recent ``fraction`` of rows;
    rows sharing the cut-off timestamp all go to the held-out side, so every
    training row is strictly older than every held-out row. Without, it is a
    seeded random sample, stratified on ``labels`` when every class has at least
    two rows (otherwise a stratified split is impossible and a plain one is used).
    """
    n_holdout = math.ceil(n_rows * fraction)
    if n_rows - n_holdout < MIN_TRAIN_ROWS or n_holdout < MIN_HOLDOUT_ROWS:
        raise TrainingError(
            f"too few rows: {n_rows} usable rows with holdout={fraction} leave "
            f"{n_rows - n_holdout} for training and {n_holdout} held out; need at least "
            f"{MIN_TRAIN_ROWS} and {MIN_HOLDOUT_ROWS}"
        )
    positions = np.arange(n_rows)
    if timestamps is not None:
        order = np.argsort(timestamps, kind="stable")
        cutoff = timestamps[order[n_rows - n_holdout]]
        is_holdout = timestamps >= cutoff
        train = positions[~is_holdout]
        if train.size < MIN_TRAIN_ROWS:
            raise TrainingError(
                f"too few rows before the holdout cut-off: {train.size} rows are older than "
                f"the {int(is_holdout.sum())} most recent ones (timestamp ties at the "
                f"cut-off go to the holdout); need at least {MIN_TRAIN_ROWS}"
            )
        return HoldoutSplit(train, positions[is_holdout], time_based=True, stratified=False)

    stratify = None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        n_classes = counts.size
        if counts.min() >= 2 and n_holdout >= n_classes and n_rows - n_holdout >= n_classes:
            stratify = labels
    train, holdout = train_test_split(
        positions, test_size=n_holdout, random_state=seed, stratify=stratify
    )
    return HoldoutSplit(
        np.sort(train), np.sort(holdout), time_based=False, stratified=stratify is not None
    )
