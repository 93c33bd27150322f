"""Captured samples and feedback labels from agents, and the retraining frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.featurestore import (
    LABELS_VIEW,
    FeatureStore,
    UnknownViewError,
    captured_view,
)
from edgeloop_control.fleet.captured import ingest_messages

TS0 = 1_764_160_000.123


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def sample(i: int, *, device: str = "dev1", model: str = "sensor", **over: Any) -> dict:
    record = {
        "sample_id": f"{device}:3f2a:{i:06d}",
        "device": device,
        "ts": TS0 + i,
        "request_id": f"r-{i}",
        "model": model,
        "version": "v1",
        "variant": f"{model}@v1",
        "features": {"temp": 20.0 + i, "mode": "eco" if i % 2 else "boost"},
        "prediction": i % 2,
        "label": None,
    }
    record.update(over)
    return record


def label(i: int, value: Any, *, device: str = "dev1", delay: float = 60.0) -> dict:
    return {
        "sample_id": f"{device}:3f2a:{i:06d}",
        "request_id": f"r-{i}",
        "device": device,
        "ts": TS0 + i + delay,
        "label": value,
    }


class Rejects(list):
    def __call__(self, index: int, record: Any, reason: str) -> None:
        self.append((index, reason))


def test_samples_are_stored_once_per_sample_id(store: FeatureStore) -> None:
    batch = [sample(i) for i in range(10)]
    assert store.ingest_samples(batch) == (10, 0)
    # At-least-once delivery: a re-sent batch, partly overlapping, plus repeats inside it.
    again = [*batch[5:], sample(10), sample(10)]
    assert store.ingest_samples(again) == (1, 6)
    stored = store.read(captured_view("sensor"))
    assert sorted(stored["sample_id"]) == sorted({r["sample_id"] for r in [*batch, sample(10)]})
    assert stored["temp"].dtype == np.float64
    first = stored.set_index("sample_id").loc[batch[0]["sample_id"]]
    assert first["ts"] == pd.Timestamp(round(TS0 * 1e6), unit="us", tz="UTC")


def test_bad_records_are_rejected_with_reasons_and_the_rest_kept(store: FeatureStore) -> None:
    rejects = Rejects()
    bad = [
        "not a dict",
        sample(1, sample_id=""),
        sample(2, ts="not a time"),
        sample(3, ts=float("nan")),
        sample(4, features={}),
        sample(5, features={"temp": [1, 2]}),
        sample(6, features={"device": 1.0}),
        sample(7, model="bad/name"),
        sample(8, device=None),
        sample(9, prediction={1, 2}),
    ]
    good = [sample(20), sample(21)]
    accepted = store.ingest_samples([*bad, *good], on_reject=rejects)
    assert accepted == (2, 0)
    reasons = dict(rejects)
    assert sorted(reasons) == list(range(len(bad)))
    assert "expected a JSON object" in reasons[0]
    assert "'sample_id' must be a non-empty string" in reasons[1]
    assert "'ts' is not a timestamp" in reasons[2]
    assert "'ts' is out of range" in reasons[3]
    assert "'features' must be a non-empty object" in reasons[4]
    assert "feature 'temp' must be a number, string or null" in reasons[5]
    assert "reserved" in reasons[6]
    assert "cannot name a view" in reasons[7]
    assert "'device' must be a non-empty string" in reasons[8]
    assert "not JSON-serialisable" in reasons[9]


def test_type_conflicts_reject_the_record_not_the_batch(store: FeatureStore) -> None:
    store.ingest_samples([sample(i) for i in range(3)])
    rejects = Rejects()
    conflicting = sample(5, features={"temp": "hot", "mode": "eco"})
    ints = sample(6, features={"temp": 21, "mode": None})
    assert store.ingest_samples([conflicting, ints], on_reject=rejects) == (1, 0)
    assert rejects == [(0, "feature 'temp' is a numeric feature, got 'hot'")]
    assert [v.version for v in store.versions(captured_view("sensor"))] == [1]


def test_two_feature_sets_at_once_get_stable_versions(store: FeatureStore) -> None:
    view = captured_view("sensor")
    for round_ in range(3):
        old = sample(round_, version="v1")
        new = sample(
            100 + round_,
            version="v2",
            variant="sensor@v2",
            features={"temp": 1.0, "mode": "eco", "hum": 0.4},
        )
        assert store.ingest_samples([old, new]) == (2, 0)
    # An A/B test sending both feature sets must not create a version per batch.
    assert [v.version for v in store.versions(view)] == [1, 2]
    assert len(store.read(f"{view}@v1")) == 3 and len(store.read(f"{view}@v2")) == 3


def test_labels_are_deduplicated_and_null_labels_rejected(store: FeatureStore) -> None:
    rejects = Rejects()
    labels = [label(i, i % 2) for i in range(4)]
    assert store.ingest_labels([*labels, {"sample_id": "x", "ts": TS0}], on_reject=rejects) == (
        4,
        0,
    )
    assert rejects == [(4, "'label' is missing or null")]
    assert store.ingest_labels(labels) == (0, 4)
    assert len(store.read(LABELS_VIEW)) == 4


def test_training_frame_joins_labels_and_keeps_only_labelled_rows(store: FeatureStore) -> None:
    store.ingest_samples([sample(i) for i in range(8)])
    store.ingest_samples([sample(8, label=1)])  # labelled on the device itself
    store.ingest_samples([sample(0, model="other")])  # another model's sample
    store.ingest_labels([label(1, 0), label(3, 1), label(5, 1), label(99, 0)])

    frame = store.captured_training_frame("sensor")
    wanted = [sample(i)["sample_id"] for i in (1, 3, 5, 8)]
    assert frame["sample_id"].tolist() == wanted
    assert frame["label"].tolist() == [0, 1, 1, 1]
    assert frame["label"].dtype == np.int64
    assert frame["prediction"].tolist() == [1, 1, 1, 0]
    assert frame["temp"].tolist() == [21.0, 23.0, 25.0, 28.0]
    assert frame["label_ts"].iloc[:3].notna().all() and pd.isna(frame["label_ts"].iloc[3])
    assert list(frame.columns[:6]) == [
        "sample_id",
        "device",
        "ts",
        "request_id",
        "version",
        "variant",
    ]

    since = pd.Timestamp(TS0 + 3, unit="s", tz="UTC")
    until = pd.Timestamp(TS0 + 8, unit="s", tz="UTC")
    window = store.captured_training_frame("sensor", since=since, until=until)
    assert window["sample_id"].tolist() == wanted[1:3]


def test_a_later_label_corrects_an_earlier_one(store: FeatureStore) -> None:
    store.ingest_samples([sample(0), sample(1)])
    assert store.ingest_labels([label(0, 1), label(1, 0)]) == (2, 0)
    correction = label(0, 0, delay=2 * 86_400)  # two days later
    assert store.ingest_labels([correction, label(1, 0)]) == (1, 1)
    frame = store.captured_training_frame("sensor")
    assert frame["label"].tolist() == [0, 0]
    expected_ts = pd.Timestamp(round(correction["ts"] * 1e6), unit="us", tz="UTC")
    assert frame["label_ts"].iloc[0] == expected_ts


def test_training_frame_spans_versions_and_unknown_models_fail(store: FeatureStore) -> None:
    store.ingest_samples([sample(0)])
    store.ingest_samples(
        [sample(1, features={"temp": 5.0, "mode": "eco", "hum": 0.7}, label="wet")]
    )
    store.ingest_labels([label(0, "dry")])
    frame = store.captured_training_frame("sensor")
    assert frame["label"].tolist() == ["dry", "wet"]
    assert np.isnan(frame["hum"].iloc[0]) and frame["hum"].iloc[1] == 0.7
    with pytest.raises(UnknownViewError, match="no captured samples for model 'ghost'"):
        store.captured_training_frame("ghost")


def test_mqtt_messages_with_and_without_outbox_envelopes(store: FeatureStore) -> None:
    def envelope(record: dict, kind: str) -> bytes:
        body = {"id": f"m-{record['sample_id']}", "device_id": "dev1", "kind": kind}
        return json.dumps({**body, "ts": record["ts"], "payload": record}).encode()

    messages = [
        ("edgeloop/dev1/samples", envelope(sample(0), "sample")),
        ("edgeloop/dev1/samples", json.dumps(sample(1))),
        ("edgeloop/dev1/samples", envelope(sample(0), "sample")),  # re-delivered
        ("edgeloop/dev1/labels", envelope(label(0, 1), "label")),
        ("edgeloop/dev1/labels", b"{not json"),
        ("edgeloop/dev1/telemetry", b"{}"),
        ("edgeloop/dev1/samples", envelope(sample(7, ts=None), "sample")),
    ]
    rejects = Rejects()
    counts = ingest_messages(store, messages, on_reject=rejects)
    assert counts == {"samples": (2, 1), "labels": (1, 0)}
    assert [index for index, _ in rejects] == [4, 5, 6]
    assert "not JSON" in rejects[0][1] and "neither samples nor labels" in rejects[1][1]
    assert "'ts' must be unix seconds" in rejects[2][1]
    assert store.captured_training_frame("sensor")["sample_id"].tolist() == [sample(0)["sample_id"]]
