"""Holdout selection, metrics, the champion gate and reproducibility of train()."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from edgeloop_control.training import (
    ChampionError,
    TrainConfig,
    compare_to_champion,
    evaluate,
    frame_hash,
    train,
)

SMALL_RF = {"n_estimators": 15}


def make_frame(
    n: int, *, seed: int = 0, classes: int = 2, start: str = "2025-03-01"
) -> pd.DataFrame:
    """Rows one hour apart, shuffled so nothing relies on the input order."""
    rng = np.random.default_rng(seed)
    strong = rng.normal(size=n)
    weak = rng.normal(size=n)
    city = rng.choice(["oslo", "lima", "pune", "kobe"], n).astype(object)
    noisy = 1.5 * strong + 0.3 * weak + 0.8 * (city == "oslo") + rng.normal(0, 0.8, n)
    if classes == 2:
        label = np.where(noisy > 0.3, 1, 0)
    else:
        label = np.digitize(noisy, np.quantile(noisy, np.linspace(0, 1, classes + 1)[1:-1]))
    df = pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="h"),
            "strong": strong,
            "weak": weak,
            "city": city,
            "label": label,
            "amount": 3.0 * noisy + 10.0,
        }
    )
    df.loc[rng.random(n) < 0.05, "weak"] = np.nan
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def model_input(result, frame: pd.DataFrame) -> pd.DataFrame:
    cols = {
        c: frame[c].to_numpy(np.float64).astype(np.float32).astype(np.float64)
        for c in result.numeric_features
    }
    cols |= {
        c: frame[c].fillna("").astype(str).to_numpy(object) for c in result.categorical_features
    }
    return pd.DataFrame(cols)


# -- holdout ---------------------------------------------------------------------------


def test_time_based_holdout_takes_the_latest_rows() -> None:
    df = make_frame(300)
    config = TrainConfig(target="label", algo="logreg", timestamp="ts", exclude=["amount"])
    result = train(df, config)

    expected = set(df["ts"].sort_values().iloc[-60:])  # ceil(300 * 0.2) most recent
    assert set(result.holdout_frame["ts"]) == expected
    assert result.n_holdout == 60 and result.n_train == 240 and result.time_based_holdout
    assert result.train_range == (
        df["ts"].min().isoformat(),
        df["ts"].sort_values().iloc[239].isoformat(),
    )
    assert result.holdout_range == (min(expected).isoformat(), max(expected).isoformat())
    assert result.meta.extra["holdout"] == "time"
    # The holdout frame keeps every original column (the champion may need others).
    assert list(result.holdout_frame.columns) == list(df.columns)


def test_time_based_holdout_keeps_timestamp_ties_together() -> None:
    df = make_frame(100)
    # 20 rows share the last timestamp but one; the cut-off falls inside that group.
    ordered = df.sort_values("ts").index
    df.loc[ordered[70:90], "ts"] = df.loc[ordered[70], "ts"]
    result = train(df, TrainConfig(target="label", algo="logreg", timestamp="ts", holdout=0.15))
    cutoff = df.loc[ordered[70], "ts"]
    assert (result.holdout_frame["ts"] >= cutoff).all()
    assert result.n_holdout == 30  # ceil(15) would cut the tie group; all 20 tied rows move
    assert pd.Timestamp(result.train_range[1]) < pd.Timestamp(result.holdout_range[0])


def test_numeric_timestamps_and_random_split() -> None:
    df = make_frame(200)
    df["epoch"] = df["ts"].astype("int64") // 10**9
    by_number = train(
        df.drop(columns=["ts"]),
        TrainConfig(target="label", algo="logreg", timestamp="epoch", exclude=["amount"]),
    )
    assert set(by_number.holdout_frame["epoch"]) == set(df["epoch"].nlargest(40))

    as_text = df.drop(columns=["epoch"]).assign(ts=df["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
    by_text = train(
        as_text, TrainConfig(target="label", algo="logreg", timestamp="ts", exclude=["amount"])
    )
    assert set(by_text.holdout_frame["ts"]) == set(as_text["ts"].sort_values().iloc[-40:])
    assert by_text.holdout_range[1] == df["ts"].max().isoformat() + "+00:00"
    json.dumps(by_text.summary())

    config = TrainConfig(target="label", algo="logreg", exclude=["ts", "amount"], seed=5)
    random_a = train(df.drop(columns=["epoch"]), config)
    random_b = train(
        df.drop(columns=["epoch"]),
        TrainConfig(target="label", algo="logreg", exclude=["ts", "amount"], seed=6),
    )
    assert not random_a.time_based_holdout and random_a.train_range is None
    assert random_a.n_holdout == 40
    # Another seed draws other rows; stratification keeps the class balance.
    assert set(random_a.holdout_frame["ts"]) != set(random_b.holdout_frame["ts"])
    share = df["label"].mean()
    assert abs(random_a.holdout_frame["label"].mean() - share) <= 1 / 40


# -- metrics ----------------------------------------------------------------------------


def test_binary_metrics_match_sklearn_metrics() -> None:
    df = make_frame(400)
    result = train(
        df,
        TrainConfig(
            target="label", algo="hgb", timestamp="ts", exclude=["amount"], params={"max_iter": 30}
        ),
    )
    hold = result.holdout_frame
    x = model_input(result, hold)
    y = hold["label"].to_numpy()
    pred = result.pipeline.predict(x)
    proba = result.pipeline.predict_proba(x)
    m = result.metrics
    assert m["n"] == len(hold) == 80
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1"] == skm.f1_score(y, pred, pos_label=1)
    # float32 outputs can order near-tied rows differently: AUC agrees to ~1e-4.
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=5e-4)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-4)
    assert m["holdout_hash"] == frame_hash(hold) == result.holdout_hash


def test_multiclass_metrics_match_sklearn_metrics() -> None:
    df = make_frame(450, classes=3)
    result = train(
        df, TrainConfig(target="label", algo="rf", exclude=["amount", "ts"], params=SMALL_RF)
    )
    hold = result.holdout_frame
    x = model_input(result, hold)
    y = hold["label"].to_numpy()
    pred = result.pipeline.predict(x)
    proba = result.pipeline.predict_proba(x)
    m = result.metrics
    assert result.classes == [0, 1, 2]
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["f1"] == skm.f1_score(y, pred, average="macro")
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=5e-4
    )
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-4)


def test_regression_metrics_match_sklearn_metrics() -> None:
    df = make_frame(300)
    result = train(
        df, TrainConfig(target="amount", algo="logreg", timestamp="ts", exclude=["label"])
    )
    assert result.task == "regression"
    hold = result.holdout_frame
    y = hold["amount"].to_numpy()
    pred = result.pipeline.predict(model_input(result, hold))
    m = result.metrics
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-5)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)), rel=1e-5)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)
    assert m["r2"] > 0.5  # a linear target: the model must have learnt something


def test_metrics_undefined_on_a_single_class_holdout() -> None:
    df = make_frame(200)
    hold = df[df["label"] == 1].head(30)
    result = train(df, TrainConfig(target="label", algo="logreg", exclude=["ts", "amount"]))
    m = evaluate(result.onnx_bytes, hold, "label")
    assert m["roc_auc"] is None  # one class present: AUC is not defined
    assert m["log_loss"] is not None and m["n"] == 30


# -- champion gate -------------------------------------------------------------------------


def test_champion_gate_scores_both_models_on_the_same_holdout() -> None:
    df = make_frame(400)
    challenger = train(
        df, TrainConfig(target="label", algo="logreg", timestamp="ts", exclude=["amount"])
    )
    # An older champion that only knew the weak feature: trained on other rows entirely.
    champion = train(
        make_frame(300, seed=9, start="2024-01-01"),
        TrainConfig(target="label", algo="rf", features=["weak"], params=SMALL_RF),
    )
    hold = challenger.holdout_frame

    verdict = compare_to_champion(challenger, champion.onnx_bytes, hold, metric="f1")
    assert verdict.passed
    assert verdict.n_rows == len(hold) and verdict.holdout_hash == challenger.holdout_hash
    assert verdict.champion_metrics == evaluate(champion.onnx_bytes, hold, "label")
    assert verdict.candidate_value == challenger.metrics["f1"]
    assert verdict.candidate_value > verdict.champion_value
    assert "meets" in verdict.reason

    # Roles swapped, the weak model is refused, with the figures in the reason.
    swapped = compare_to_champion(
        champion.onnx_bytes, challenger.onnx_bytes, hold, metric="f1", target="label"
    )
    assert not swapped.passed and "misses" in swapped.reason

    # Lower-is-better metric and a margin the challenger cannot clear.
    by_loss = compare_to_champion(challenger, champion.onnx_bytes, hold, metric="log_loss")
    assert by_loss.passed and not by_loss.higher_is_better
    gap = verdict.candidate_value - verdict.champion_value
    too_far = compare_to_champion(challenger, champion.onnx_bytes, hold, margin=gap + 0.01)
    assert not too_far.passed
    assert compare_to_champion(challenger, champion.onnx_bytes, hold, margin=gap - 0.01).passed


def test_champion_gate_with_metrics_requires_the_same_holdout() -> None:
    df = make_frame(300)
    challenger = train(
        df, TrainConfig(target="label", algo="logreg", timestamp="ts", exclude=["amount"])
    )
    champion = train(df, TrainConfig(target="label", algo="logreg", features=["weak"]))
    hold = challenger.holdout_frame
    from_metrics = compare_to_champion(
        challenger.metrics, champion.onnx_bytes, hold, metric="accuracy", target="label"
    )
    from_model = compare_to_champion(challenger, champion.onnx_bytes, hold, metric="accuracy")
    assert from_metrics.candidate_value == from_model.candidate_value
    assert from_metrics.passed == from_model.passed

    other_rows = champion.holdout_frame
    with pytest.raises(ChampionError, match="holdout_hash"):
        compare_to_champion(challenger.metrics, champion.onnx_bytes, other_rows, target="label")


def test_champion_gate_refuses_incomparable_models() -> None:
    df = make_frame(300)
    clf = train(df, TrainConfig(target="label", algo="logreg", exclude=["amount", "ts"]))
    reg = train(df, TrainConfig(target="amount", algo="logreg", exclude=["label", "ts"]))
    with pytest.raises(ChampionError, match="regression"):
        compare_to_champion(clf, reg.onnx_bytes, clf.holdout_frame)
    with pytest.raises(ChampionError, match="does not apply"):
        compare_to_champion(reg, reg.onnx_bytes, reg.holdout_frame, metric="f1")
    with pytest.raises(ChampionError, match="unknown metric"):
        compare_to_champion(clf, clf.onnx_bytes, clf.holdout_frame, metric="precision")
    three = train(
        make_frame(300, classes=3),
        TrainConfig(target="label", algo="logreg", exclude=["amount", "ts"]),
    )
    with pytest.raises(ChampionError, match="classes"):
        compare_to_champion(three, clf.onnx_bytes, three.holdout_frame)


# -- reproducibility -----------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["logreg", "rf", "hgb"])
def test_same_data_and_config_give_the_same_bytes(algo: str) -> None:
    df = make_frame(300)
    params = {"rf": SMALL_RF, "hgb": {"max_iter": 20}}.get(algo, {})
    config = TrainConfig(target="label", algo=algo, exclude=["amount", "ts"], params=params)
    first = train(df, config)
    again = train(df.copy(), config)
    assert first.onnx_bytes == again.onnx_bytes
    assert first.metrics == again.metrics and first.data_hash == again.data_hash

    # Row order and index are not part of the data: same hash, split, model and bytes.
    shuffled = df.sample(frac=1.0, random_state=42)
    shuffled.index = np.arange(1000, 1000 + len(df))
    reordered = train(shuffled, config)
    assert reordered.data_hash == first.data_hash
    assert reordered.onnx_bytes == first.onnx_bytes


def test_data_hash_follows_content_and_seed_changes_the_model() -> None:
    df = make_frame(200)
    config = TrainConfig(target="label", algo="rf", exclude=["amount", "ts"], params=SMALL_RF)
    base = train(df, config)
    changed = df.copy()
    changed.loc[0, "strong"] += 1e-3
    assert train(changed, config).data_hash != base.data_hash
    # Columns the model does not use are not part of its training data.
    assert train(df.assign(amount=0.0), config).data_hash == base.data_hash
    reseeded = train(
        df,
        TrainConfig(target="label", algo="rf", exclude=["amount", "ts"], params=SMALL_RF, seed=1),
    )
    assert reseeded.data_hash == base.data_hash and reseeded.onnx_bytes != base.onnx_bytes
