"""Bad data and bad configs are refused at the boundary, naming the column or value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.training import (
    InputError,
    OnnxPredictor,
    TrainConfig,
    TrainingError,
    train,
)


def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame(
        {
            "x": x,
            "z": rng.normal(size=n),
            "kind": rng.choice(["a", "b"], n).astype(object),
            "y": (x + rng.normal(0, 0.5, n) > 0).astype(int),
        }
    )


def fit(df: pd.DataFrame, **kwargs) -> object:
    kwargs.setdefault("algo", "logreg")
    return train(df, TrainConfig(target=kwargs.pop("target", "y"), **kwargs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algo": "svm"}, "unknown algo 'svm'"),
        ({"task": "ranking"}, "unknown task 'ranking'"),
        ({"holdout": 0.0}, "holdout must be a fraction"),
        ({"holdout": 1.0}, "holdout must be a fraction"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"features": []}, "features is an empty list"),
        ({"features": ["x", "x"]}, "features repeats column"),
        ({"max_categories": 0}, "max_categories must be a positive integer"),
        ({"n_threads": 0}, "n_threads must be a positive integer or None"),
        ({"params": ["max_depth"]}, "params must be a mapping"),
    ],
)
def test_bad_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        TrainConfig(target="y", **kwargs)


def test_unknown_columns_are_named() -> None:
    df = frame()
    with pytest.raises(TrainingError, match=r"unknown target column\(s\) \['label'\]"):
        fit(df, target="label")
    with pytest.raises(TrainingError, match=r"unknown feature column\(s\) \['w'\]"):
        fit(df, features=["x", "w"])
    with pytest.raises(TrainingError, match=r"unknown timestamp column\(s\) \['when'\]"):
        fit(df, timestamp="when")
    with pytest.raises(TrainingError, match=r"unknown exclude column\(s\) \['q'\]"):
        fit(df, exclude=["q"])
    with pytest.raises(TrainingError, match=r"\['y'\] are also the target"):
        fit(df, features=["x", "y"])
    with pytest.raises(TrainingError, match="no feature columns left"):
        fit(df, exclude=["x", "z", "kind"])


def test_target_problems() -> None:
    df = frame()
    with pytest.raises(TrainingError, match="single class 1"):
        fit(df.assign(y=1))
    with pytest.raises(TrainingError, match="non-integer values"):
        fit(df.assign(y=df["x"]), task="classification")
    with pytest.raises(TrainingError, match="holds strings"):
        fit(df.assign(y=np.where(df["y"] == 1, "up", "down")), task="regression")
    with pytest.raises(TrainingError, match="non-finite"):
        fit(df.assign(y=df["x"].where(df.index != 3, np.inf)))
    with pytest.raises(TrainingError, match="no non-missing values"):
        fit(df.assign(y=np.nan))


def test_rows_without_a_target_are_dropped_and_counted() -> None:
    df = frame(80)
    df.loc[:9, "y"] = np.nan  # now a float column 0.0/1.0/NaN: still class labels
    result = fit(df)
    assert result.n_dropped == 10 and result.n_rows == 70
    assert result.task == "classification" and result.classes == [0, 1]


def test_too_few_rows() -> None:
    with pytest.raises(TrainingError, match="too few rows: 12 usable rows"):
        fit(frame(12))


def test_all_missing_columns() -> None:
    df = frame()
    with pytest.raises(TrainingError, match="feature 'z' has no values"):
        fit(df.assign(z=np.nan))
    with pytest.raises(TrainingError, match="feature 'kind' has no values"):
        fit(df.assign(kind=None))


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ([{"a": 1}] * 60, "feature 'bad' holds dict values"),
        (["a", 1] * 30, "feature 'bad' mixes strings and numbers"),
        (pd.date_range("2025-01-01", periods=60, freq="D"), "derive numeric features"),
        ([b"raw"] * 60, "feature 'bad' holds bytes values"),
        ([complex(1, 2)] * 60, "complex"),
    ],
)
def test_garbage_feature_columns(column: object, message: str) -> None:
    df = frame().assign(bad=pd.Series(list(column) if not isinstance(column, pd.Index) else column))
    with pytest.raises(TrainingError, match=message):
        fit(df)


def test_infinite_values_and_identifier_columns() -> None:
    df = frame()
    with pytest.raises(TrainingError, match="feature 'z' has 1 infinite values"):
        fit(df.assign(z=df["z"].where(df.index != 5, np.inf)))
    ids = [f"user-{i}" for i in range(len(df))]
    with pytest.raises(TrainingError, match="categorical feature 'user' has 48 distinct values"):
        fit(df.assign(user=ids), max_categories=20)


def test_bad_estimator_params() -> None:
    with pytest.raises(
        TrainingError, match=r"unknown parameter.*'n_trees'.*RandomForestClassifier"
    ):
        fit(frame(), algo="rf", params={"n_trees": 5})


def test_predictor_input_errors() -> None:
    df = frame()
    model = OnnxPredictor(fit(df).onnx_bytes)
    with pytest.raises(InputError, match=r"lacks feature column\(s\) \['kind'\]"):
        model.predict(df.drop(columns=["kind"]))
    with pytest.raises(InputError, match="column 'x' must be numeric"):
        model.predict(df.assign(x="high"))
    with pytest.raises(InputError, match="column 'kind' must hold strings"):
        model.predict(df.assign(kind=1.5))
    with pytest.raises(InputError, match="cannot load"):
        OnnxPredictor(b"not an onnx file")


def test_captured_booleans_are_brought_back_to_a_boolean_column() -> None:

    from edgeloop_control.training.columns import coerce_to_kinds, is_boolean_column

    view = coerce_to_kinds(pd.DataFrame({"b": [True, False, None]}), {"b": "float"}, frozenset("b"))
    sent = coerce_to_kinds(pd.DataFrame({"b": [1.0, 0.0, np.nan]}), {"b": "float"}, frozenset("b"))
    joined = pd.concat([view, sent], ignore_index=True)
    assert is_boolean_column(joined["b"])
    assert joined["b"].isna().tolist() == [False, False, True] * 2
    assert joined["b"].dropna().tolist() == [True, False, True, False]
    with pytest.raises(InputError, match="'b' is a boolean feature, got 2; expected true"):
        coerce_to_kinds(pd.DataFrame({"b": [2.0]}), {"b": "float"}, frozenset("b"))
