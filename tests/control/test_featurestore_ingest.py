"""Ingestion into the feature store: typing, timestamps, versioning, idempotency."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from edgeloop_control.featurestore import (
    FeatureStore,
    InvalidInputError,
    MissingColumnError,
    SchemaMismatchError,
    TimestampError,
    UnknownViewError,
    data_hash,
)

BASE = pd.Timestamp("2025-03-01", tz="UTC")


def sensor_frame(n: int = 50, *, seed: int = 0, days: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, days * 86_400_000_000, n)
    return pd.DataFrame(
        {
            "device": rng.choice(["d1", "d2", "d3"], n),
            "ts": BASE + pd.to_timedelta(offsets, unit="us"),
            "temp": rng.normal(20, 3, n),
            "count": rng.integers(0, 100, n),
            "mode": rng.choice(["eco", "boost"], n),
            "ok": rng.random(n) > 0.5,
        }
    )


def sorted_rows(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by, kind="stable", ignore_index=True)


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def test_roundtrip_keeps_values_and_gives_training_dtypes(store: FeatureStore) -> None:
    frame = sensor_frame()
    result = store.ingest(frame, "sensors", entity=["device"], timestamp="ts")
    assert (result.version, result.accepted, result.duplicates) == (1, len(frame), 0)
    assert result.created_version

    back = store.read("sensors")
    assert list(back.columns) == list(frame.columns)
    assert str(back["ts"].dtype) == "datetime64[us, UTC]"
    assert back["temp"].dtype == np.float64
    assert back["count"].dtype == np.int64
    assert back["ok"].dtype == bool
    assert pd.api.types.is_string_dtype(back["mode"].dtype)
    assert back["ts"].is_monotonic_increasing
    expected = sorted_rows(frame, ["ts", "device"])
    got = sorted_rows(back, ["ts", "device"])
    np.testing.assert_array_equal(got["temp"].to_numpy(), expected["temp"].to_numpy())
    np.testing.assert_array_equal(got["count"].to_numpy(), expected["count"].to_numpy())
    assert got["mode"].tolist() == expected["mode"].tolist()
    assert (got["ts"] == expected["ts"]).all()


def test_files_are_partitioned_by_view_version_and_date(store: FeatureStore) -> None:
    frame = sensor_frame(days=3)
    store.ingest(frame, "sensors", entity="device", timestamp="ts")
    files = store.files("sensors")
    dates = sorted({f.path.split("/")[3] for f in files})
    expected = sorted({f"date={d}" for d in frame["ts"].dt.strftime("%Y-%m-%d")})
    assert dates == expected
    assert all(f.path.startswith("offline/sensors/v1/date=") for f in files)
    assert sum(pq.read_metadata(store.root / f.path).num_rows for f in files) == len(frame)
    assert [p.rows for p in store.partitions("sensors")] == [
        int(n) for n in frame.groupby(frame["ts"].dt.floor("D")).size()
    ]


def test_reingest_is_idempotent_and_counts_duplicates(store: FeatureStore) -> None:
    frame = sensor_frame(60)
    store.ingest(frame, "sensors", entity=["device"], timestamp="ts")
    again = store.ingest(frame, "sensors")
    assert (again.accepted, again.duplicates, again.files) == (0, len(frame), 0)

    extra = sensor_frame(20, seed=7)
    overlap = pd.concat([frame.iloc[:10], extra, extra.iloc[:5]], ignore_index=True)
    result = store.ingest(overlap, "sensors")
    # 10 already stored, 5 repeated within the batch.
    assert (result.accepted, result.duplicates) == (len(extra), 15)
    assert len(store.read("sensors")) == len(frame) + len(extra)


def test_csv_and_parquet_of_the_same_rows_are_duplicates(
    store: FeatureStore, tmp_path: Path
) -> None:
    frame = sensor_frame(30)
    csv = tmp_path / "s.csv"
    frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(csv, index=False)
    parquet = tmp_path / "s.parquet"
    frame.to_parquet(parquet)
    first = store.ingest(csv, "sensors", entity=["device"], timestamp="ts")
    second = store.ingest(parquet, "sensors")
    assert first.accepted == len(frame)
    assert (second.accepted, second.duplicates) == (0, len(frame))


def test_key_columns_make_a_row_id_the_identity(store: FeatureStore) -> None:
    frame = pd.DataFrame(
        {"id": ["a", "b"], "device": ["d1", "d1"], "ts": [BASE, BASE], "v": [1.0, 2.0]}
    )
    store.ingest(frame, "events", entity=["device"], timestamp="ts", key=["id"])
    changed = frame.assign(v=[10.0, 20.0])
    result = store.ingest(changed, "events")
    assert (result.accepted, result.duplicates) == (0, 2)
    assert store.read("events")["v"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda ts: ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"), id="iso-offset"),
        pytest.param(lambda ts: ts.dt.strftime("%Y-%m-%d %H:%M:%S.%f"), id="iso-naive"),
        pytest.param(lambda ts: ts.astype("int64") / 1e6, id="unix-float"),
        pytest.param(lambda ts: ts.dt.tz_convert("Asia/Tokyo"), id="tz-aware"),
        pytest.param(lambda ts: ts.dt.tz_localize(None), id="naive-datetime"),
    ],
)
def test_timestamp_forms_are_the_same_instants(tmp_path: Path, convert) -> None:
    store = FeatureStore(tmp_path / "fs")
    micros = BASE.value // 1000 + np.array([0, 123_456, 86_400_000_000 + 7])
    instants = pd.Series(micros.astype("datetime64[us]")).dt.tz_localize("UTC")
    frame = pd.DataFrame({"device": ["a", "b", "c"], "ts": convert(instants), "v": [1.0, 2, 3]})
    store.ingest(frame, "v", entity=["device"], timestamp="ts")
    back = store.read("v")
    assert back["ts"].tolist() == instants.tolist()


def test_bad_timestamps_name_the_column_and_a_value(store: FeatureStore) -> None:
    frame = pd.DataFrame({"device": ["a", "b"], "when": ["2025-01-01", "yesterday"], "v": [1, 2]})
    with pytest.raises(TimestampError, match=r"'when'.*'yesterday'"):
        store.ingest(frame, "v", entity=["device"], timestamp="when")
    millis = frame.assign(when=[1_740_000_000_000, 1_740_000_000_500])
    with pytest.raises(TimestampError, match=r"'when'.*milliseconds"):
        store.ingest(millis, "v", entity=["device"], timestamp="when")
    missing = frame.assign(when=["2025-01-01", None])
    with pytest.raises(TimestampError, match=r"'when' has 1 missing"):
        store.ingest(missing, "v", entity=["device"], timestamp="when")
    assert store.views() == []


def test_schema_change_is_an_error_naming_columns_unless_evolved(store: FeatureStore) -> None:
    frame = sensor_frame(20)
    v1 = store.ingest(frame, "sensors", entity=["device"], timestamp="ts")
    changed = frame.drop(columns=["ok"]).assign(mode=frame["count"], humidity=0.5)
    with pytest.raises(SchemaMismatchError) as info:
        store.ingest(changed, "sensors")
    message = str(info.value)
    assert "missing columns ['ok']" in message
    assert "new columns ['humidity']" in message
    assert "mode: string -> int64" in message
    assert "sensors@v2" in message

    v2 = store.ingest(changed, "sensors", evolve=True)
    assert (v2.version, v2.created_version) == (2, True)
    assert v2.fingerprint != v1.fingerprint
    assert [v.version for v in store.versions("sensors")] == [1, 2]
    old = store.read("sensors@v1")
    assert list(old.columns) == list(frame.columns) and len(old) == len(frame)
    assert list(store.read("sensors").columns) == list(changed.columns)
    assert store.view("sensors@v1").fingerprint == v1.fingerprint


def test_reordered_columns_and_int_for_float_are_the_same_schema(store: FeatureStore) -> None:
    frame = sensor_frame(10)
    store.ingest(frame, "sensors", entity=["device"], timestamp="ts")
    reordered = frame[list(reversed(frame.columns))].assign(temp=np.arange(10))
    result = store.ingest(reordered, "sensors")
    assert (result.version, result.created_version, result.accepted) == (1, False, 10)
    assert store.read("sensors")["temp"].dtype == np.float64


def test_evolve_keeps_existing_types_where_data_fits(store: FeatureStore) -> None:
    store.ingest(sensor_frame(5), "sensors", entity=["device"], timestamp="ts")
    new = sensor_frame(5, seed=3).assign(temp=np.arange(5), extra="x")
    store.ingest(new, "sensors", evolve=True)
    assert store.view("sensors@v2").types["temp"] == "float64"


def test_entity_timestamp_and_ttl_changes_need_a_new_version(store: FeatureStore) -> None:
    frame = sensor_frame(10)
    store.ingest(frame, "sensors", entity=["device"], timestamp="ts", ttl="1d")
    with pytest.raises(SchemaMismatchError, match=r"entity \['device'\] -> \['device', 'mode'\]"):
        store.ingest(frame, "sensors", entity=["device", "mode"])
    with pytest.raises(SchemaMismatchError, match=r"ttl 1d -> 2d"):
        store.ingest(frame, "sensors", ttl=dt.timedelta(days=2))
    store.ingest(frame, "sensors", ttl="48h", evolve=True)
    assert store.view("sensors").ttl == dt.timedelta(days=2)
    assert store.view("sensors@v1").ttl == dt.timedelta(days=1)


def test_missing_and_invalid_entity_columns_are_clear_errors(store: FeatureStore) -> None:
    frame = sensor_frame(5)
    with pytest.raises(MissingColumnError, match=r"entity column\(s\) \['site'\] not in the data"):
        store.ingest(frame, "sensors", entity=["site"], timestamp="ts")
    with pytest.raises(MissingColumnError, match=r"timestamp column\(s\) \['time'\]"):
        store.ingest(frame, "sensors", entity=["device"], timestamp="time")
    with pytest.raises(InvalidInputError, match=r"entity column 'temp' has type float64"):
        store.ingest(frame, "sensors", entity=["temp"], timestamp="ts")
    holes = frame.assign(device=["d1", None, "d2", "d3", "d1"])
    with pytest.raises(InvalidInputError, match=r"entity column 'device' has 1 missing"):
        store.ingest(holes, "sensors", entity=["device"], timestamp="ts")
    with pytest.raises(InvalidInputError, match=r"reserved prefix"):
        store.ingest(frame.assign(__key=1), "sensors", entity=["device"], timestamp="ts")
    with pytest.raises(InvalidInputError, match=r"invalid view name 'a/b'"):
        store.ingest(frame, "a/b", entity=["device"], timestamp="ts")


def test_unknown_views_and_versions(store: FeatureStore) -> None:
    with pytest.raises(UnknownViewError, match=r"unknown view 'nope' \(the store has no views"):
        store.read("nope")
    store.ingest(sensor_frame(5), "sensors", entity=["device"], timestamp="ts")
    with pytest.raises(UnknownViewError, match=r"no version v4 \(versions: v1\)"):
        store.read("sensors@v4")
    with pytest.raises(InvalidInputError, match=r"invalid version 'x2'"):
        store.view("sensors@x2")
    with pytest.raises(MissingColumnError, match=r"no column\(s\) \['nope'\]"):
        store.read("sensors", columns=["nope"])


def test_read_selects_columns_and_half_open_time_range(store: FeatureStore) -> None:
    frame = sensor_frame(80, days=4)
    store.ingest(frame, "sensors", entity=["device"], timestamp="ts")
    start, end = BASE + pd.Timedelta("1D"), BASE + pd.Timedelta("2D 12h")
    part = store.read("sensors", start=start.isoformat(), end=end, columns=["temp"])
    assert list(part.columns) == ["device", "ts", "temp"]
    inside = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
    assert len(part) == len(inside) > 0
    assert sorted(part["temp"]) == sorted(inside["temp"])
    with pytest.raises(InvalidInputError, match="must be after start"):
        store.read("sensors", start=end, end=start)


def test_view_without_entity_gets_row_ids(store: FeatureStore) -> None:
    frame = sensor_frame(12).drop(columns=["device"])
    store.ingest(frame.iloc[:7], "plain", timestamp="ts")
    store.ingest(frame, "plain")
    ids = store.read("plain", columns=["__row_id"])["__row_id"]
    assert sorted(ids) == list(range(len(frame)))
    assert store.view("plain").entity == ()


def test_view_without_timestamp_is_stamped_and_still_idempotent(store: FeatureStore) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": ["a", "b", "c"]})
    before = pd.Timestamp.now(tz="UTC")
    first = store.ingest(frame, "static")
    again = store.ingest(frame, "static")
    assert (first.accepted, again.duplicates) == (3, 3)
    back = store.read("static")
    assert list(back.columns) == ["x", "y", "ingested_at"]
    assert (back["ingested_at"] >= before.floor("us")).all()
    assert store.view("static").synthetic_timestamp


def test_data_hash_ignores_order_but_not_content() -> None:
    frame = sensor_frame(40)
    shuffled = frame.sample(frac=1.0, random_state=1)[list(reversed(frame.columns))]
    assert data_hash(frame) == data_hash(shuffled)
    changed = frame.copy()
    changed.loc[3, "temp"] += 1e-9
    assert data_hash(changed) != data_hash(frame)
    assert data_hash(frame.rename(columns={"temp": "t"})) != data_hash(frame)
    assert data_hash(pd.concat([frame, frame.iloc[:1]])) != data_hash(frame)


def test_store_accepts_file_uri_and_rejects_other_schemes(tmp_path: Path) -> None:
    store = FeatureStore(f"file://{tmp_path}/uri-store")
    assert store.root == (tmp_path / "uri-store").resolve()
    with pytest.raises(InvalidInputError, match="scheme 's3'"):
        FeatureStore("s3://bucket/features")
