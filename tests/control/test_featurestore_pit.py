"""Point-in-time training sets: no leakage, TTL, ties, several views and keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.featurestore import (
    FeatureStore,
    InvalidInputError,
    MissingColumnError,
    TimestampError,
)

T0 = pd.Timestamp("2025-06-01 12:00", tz="UTC")
US = pd.Timedelta(microseconds=1)


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def at(*offsets: str) -> list[pd.Timestamp]:
    return [T0 + pd.Timedelta(o) for o in offsets]


def ingest_temps(store: FeatureStore, rows: list[tuple[str, pd.Timestamp, float]], **kw) -> None:
    frame = pd.DataFrame(rows, columns=["device", "ts", "temp"])
    store.ingest(frame, "temps", entity=["device"], timestamp="ts", **kw)


def test_feature_at_exactly_the_label_time_is_visible(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0), ("a", T0 + US, 2.0)])
    labels = pd.DataFrame({"device": ["a", "a"], "t": [T0, T0 + US]})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert out["temp"].tolist() == [1.0, 2.0]


def test_features_only_after_the_label_time_never_leak(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0 + US, 5.0), ("b", T0 - pd.Timedelta("1h"), 7.0)])
    labels = pd.DataFrame({"device": ["a", "b"], "t": [T0, T0]})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert np.isnan(out["temp"].iloc[0])
    assert out["temp"].iloc[1] == 7.0


def test_ttl_is_inclusive_and_expires_just_after(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0)], ttl="1h")
    hour = pd.Timedelta("1h")
    labels = pd.DataFrame({"device": ["a"] * 3, "t": [T0 + hour / 2, T0 + hour, T0 + hour + US]})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert out["temp"].iloc[:2].tolist() == [1.0, 1.0]
    assert np.isnan(out["temp"].iloc[2])


def test_expired_latest_value_does_not_fall_back_to_an_older_one(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0), ("a", T0 + pd.Timedelta("1h"), 2.0)], ttl="2h")
    labels = pd.DataFrame({"device": ["a", "a"], "t": at("2h", "3h30min")})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert out["temp"].iloc[0] == 2.0
    assert np.isnan(out["temp"].iloc[1])


def test_missing_entities_and_null_keys_get_missing_features(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0)])
    labels = pd.DataFrame({"device": ["zz", None, "a"], "t": at("1h", "1h", "1h")})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert np.isnan(out["temp"].iloc[0]) and np.isnan(out["temp"].iloc[1])
    assert out["temp"].iloc[2] == 1.0


def test_ties_go_to_the_row_ingested_last(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0), ("a", T0, 2.0)])
    ingest_temps(store, [("a", T0, 3.0), ("b", T0, 4.0)])
    ingest_temps(store, [("b", T0, 5.0)])
    labels = pd.DataFrame({"device": ["a", "b"], "t": [T0, T0]})
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert out["temp"].tolist() == [3.0, 5.0]


def test_label_order_index_and_columns_are_kept(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0), ("b", T0, 2.0), ("a", T0 + pd.Timedelta("2h"), 3.0)])
    labels = pd.DataFrame(
        {"t": at("3h", "1h", "1h"), "device": ["a", "b", "a"], "y": [1, 0, 1]},
        index=[30, 10, 20],
    )
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])
    assert list(out.index) == [30, 10, 20]
    assert list(out.columns) == ["t", "device", "y", "temp"]
    assert out["temp"].tolist() == [3.0, 2.0, 1.0]
    pd.testing.assert_frame_equal(out[labels.columns], labels)


def test_several_views_with_different_and_composite_entities(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0), ("b", T0, 2.0)])
    sites = pd.DataFrame({"site": [1, 2], "ts": at("-1h", "-1h"), "price": [10.0, 20.0]})
    store.ingest(sites, "sites", entity=["site"], timestamp="ts")
    probes = pd.DataFrame(
        {
            "device": ["a", "a", "b"],
            "probe": [1, 2, 1],
            "ts": at("-2h", "-2h", "-2h"),
            "level": [0.1, 0.2, 0.3],
            "flag": ["x", "y", "z"],
        }
    )
    store.ingest(probes, "probes", entity=["device", "probe"], timestamp="ts")
    labels = pd.DataFrame(
        {
            "device": ["a", "b", "a", "b"],
            "probe": [2, 1, 3, 2],
            "site": [2, 1, 1, 3],
            "t": at("1h", "1h", "1h", "1h"),
        }
    )
    out = store.training_set(
        labels, timestamp="t", features=["temps:temp", "sites:price"], views=["probes"]
    )
    assert out["temp"].tolist() == [1.0, 2.0, 1.0, 2.0]
    assert out["price"].iloc[:3].tolist() == [20.0, 10.0, 10.0] and np.isnan(out["price"].iloc[3])
    assert out["level"].iloc[:2].tolist() == [0.2, 0.3] and out["level"].iloc[2:].isna().all()
    assert out["flag"].iloc[:2].tolist() == ["y", "z"] and out["flag"].iloc[2:].isna().all()


def test_pinned_versions_join_side_by_side(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0)])
    v2 = pd.DataFrame({"device": ["a"], "ts": [T0], "temp": [100.0], "hum": [0.5]})
    store.ingest(v2, "temps", evolve=True)
    labels = pd.DataFrame({"device": ["a"], "t": at("1h")})
    with pytest.raises(InvalidInputError, match=r"would all be named 'temp'"):
        store.training_set(labels, timestamp="t", features=["temps@v1:temp", "temps@v2:temp"])
    out = store.training_set(
        labels, timestamp="t", features=["temps@v1:temp", "temps:temp"], full_names=True
    )
    assert out["temps_v1__temp"].tolist() == [1.0]
    assert out["temps_v2__temp"].tolist() == [100.0]


def test_matches_a_brute_force_reference_on_random_data(store: FeatureStore) -> None:
    rng = np.random.default_rng(42)
    n = 300
    minutes = rng.integers(0, 600, n)  # coarse times, so equal timestamps occur
    feats = pd.DataFrame(
        {
            "device": rng.choice(["a", "b", "c", "d"], n),
            "ts": T0 + pd.to_timedelta(minutes, unit="min"),
            "temp": rng.normal(size=n),
        }
    )
    ttl = dt.timedelta(minutes=90)
    store.ingest(feats.iloc[:150], "temps", entity=["device"], timestamp="ts", ttl=ttl)
    store.ingest(feats.iloc[150:], "temps")
    labels = pd.DataFrame(
        {
            "device": rng.choice(["a", "b", "c", "d", "e"], 200),
            "t": T0 + pd.to_timedelta(rng.integers(-30, 660, 200), unit="min"),
        }
    )
    out = store.training_set(labels, timestamp="t", features=["temps:temp"])

    expected = []
    for device, t in zip(labels["device"], labels["t"], strict=True):
        mask = (feats["device"] == device) & (feats["ts"] <= t)
        candidates = feats[mask]
        if candidates.empty:
            expected.append(np.nan)
            continue
        latest = candidates["ts"].max()
        # Among equal times the last ingested (here: last in frame order) wins.
        row = candidates[candidates["ts"] == latest].iloc[-1]
        expected.append(row["temp"] if t - latest <= ttl else np.nan)
    np.testing.assert_array_equal(out["temp"].to_numpy(), np.array(expected))
    assert out["temp"].notna().sum() > 50  # the case is not trivially all-missing


def test_clear_errors(store: FeatureStore) -> None:
    ingest_temps(store, [("a", T0, 1.0)])
    store.ingest(pd.DataFrame({"x": [1.0], "ts": [T0]}), "plain", timestamp="ts")
    labels = pd.DataFrame({"device": ["a"], "t": [T0]})
    with pytest.raises(MissingColumnError, match=r"no timestamp column 'when'"):
        store.training_set(labels, timestamp="when", features=["temps:temp"])
    with pytest.raises(MissingColumnError, match=r"lack entity column\(s\) \['device'\]"):
        store.training_set(labels.drop(columns="device"), timestamp="t", features=["temps:temp"])
    with pytest.raises(MissingColumnError, match=r"feature 'nope' of temps@v1 is absent"):
        store.training_set(labels, timestamp="t", features=["temps:nope"])
    with pytest.raises(MissingColumnError, match=r"'device' of temps@v1 is an entity"):
        store.training_set(labels, timestamp="t", features=["temps:device"])
    with pytest.raises(InvalidInputError, match=r"plain@v1 has no entity columns"):
        store.training_set(labels, timestamp="t", views=["plain"])
    with pytest.raises(InvalidInputError, match=r"labels column 'device' .* is a string"):
        store.training_set(labels.assign(device=[1]), timestamp="t", features=["temps:temp"])
    with pytest.raises(TimestampError, match=r"'t'.*'soon'"):
        store.training_set(labels.assign(t=["soon"]), timestamp="t", features=["temps:temp"])
    with pytest.raises(InvalidInputError, match=r"labels already have column\(s\) \['temp'\]"):
        store.training_set(labels.assign(temp=0.0), timestamp="t", features=["temps:temp"])
    with pytest.raises(InvalidInputError, match=r"no features requested"):
        store.training_set(labels, timestamp="t")
