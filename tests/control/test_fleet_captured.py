"""The seam between transport and storage: MQTT sample/label messages, their outbox
envelope, and the feature store that only ever sees records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.captured import ingest_messages, store_captured, topic_kind
from edgeloop_control.fleet.messages import (
    Captured,
    PoisonMessage,
    open_envelope,
    parse_captured,
    parse_report,
)

TS0 = 1_764_160_000.0


def sample(i: int, device: str = "d1", **over: Any) -> dict[str, Any]:
    record = {
        "sample_id": f"{device}:{i:04d}",
        "device": device,
        "ts": TS0 + i,
        "model": "sensor",
        "features": {"temp": 20.0 + i},
        "prediction": 1,
    }
    return {**record, **over}


def label(i: int, value: Any = 1, device: str = "d1") -> dict[str, Any]:
    return {"sample_id": f"{device}:{i:04d}", "device": device, "ts": TS0 + i + 5, "label": value}


def envelope(record: Any, kind: str = "sample", device: str = "d1") -> dict[str, Any]:
    return {"id": "m-1", "device_id": device, "kind": kind, "ts": TS0, "payload": record}


def test_open_envelope_tells_envelopes_from_bare_records() -> None:
    record = sample(0)
    assert open_envelope(envelope(record)) == (envelope(record), record)
    assert open_envelope(record) == (None, record)
    # Telemetry from older senders has no kind; samples without one are bare records.
    no_kind = {"id": "r1", "payload": {"x": 1}}
    assert open_envelope(no_kind) == (None, no_kind)
    assert open_envelope(no_kind, kind_required=False) == (no_kind, {"x": 1})


def test_parse_captured_unwraps_and_names_the_kind() -> None:
    got = parse_captured("d1", "samples", envelope(sample(0)))
    assert got == Captured("samples", sample(0))
    assert parse_captured("d1", "labels", label(0)) == Captured("labels", label(0))


# The reasons a poison sample or label is recorded with: pinned, since operators
# read them in `edgeloop fleet poison` and the move to fleet/ must not change them.
POISON = [
    ("samples", [sample(0)], "samples message must be a JSON object, got a list"),
    ("samples", envelope([1]), "samples payload must be a JSON object, got a list"),
    ("labels", envelope("x", "label"), "labels payload must be a JSON object, got a string"),
    (
        "samples",
        envelope(sample(0), device="d2"),
        "envelope.device_id 'd2' is not the topic's device 'd1'",
    ),
    ("samples", sample(0, device="d2"), "samples.device 'd2' is not the topic's device 'd1'"),
    ("labels", {"ts": TS0, "label": 1}, "labels.sample_id must be a non-empty string, got null"),
    ("samples", sample(0, features=[1]), "samples.features must be a JSON object, got a list"),
    ("samples", sample(0, features={"t": [1]}), "feature 't' must be a number, string or null"),
    (
        "samples",
        sample(0, features={f"f{i}": 1 for i in range(513)}),
        "samples has 513 features; at most 512",
    ),
    ("status", sample(0), "topic leaf 'status' carries neither samples nor labels"),
]


@pytest.mark.parametrize(("leaf", "doc", "reason"), POISON)
def test_parse_captured_poison_reasons(leaf: str, doc: Any, reason: str) -> None:
    with pytest.raises(PoisonMessage) as caught:
        parse_captured("d1", leaf, doc)
    assert str(caught.value) == reason


def test_parse_captured_refuses_a_model_that_cannot_name_a_view() -> None:
    with pytest.raises(PoisonMessage, match=r"^samples\.model 'a/b' "):
        parse_captured("d1", "samples", sample(0, model="a/b"))


def test_telemetry_uses_the_same_envelope_and_keeps_its_reasons() -> None:
    report = {"report_id": "r1", "device": "d1", "ts": TS0}
    without_kind = {"id": "r1", "device_id": "d1", "ts": TS0, "payload": report}
    assert parse_report("d1", without_kind)["payload"] == report
    for bad in (report, {"id": "r1", "payload": [report]}):
        with pytest.raises(PoisonMessage) as caught:
            parse_report("d1", bad)
        assert str(caught.value) == (
            "telemetry message is not an outbox envelope (no payload object)"
        )


def test_topic_kind() -> None:
    assert topic_kind("edgeloop/d1/samples") == "samples"
    assert topic_kind("edgeloop/d1/labels") == "labels"
    assert topic_kind("edgeloop/d1/telemetry") is None
    assert topic_kind(None) is None


def test_store_captured_reports_rejects_by_batch_position(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "fs")
    items = [
        Captured("labels", label(0, "dry")),
        Captured("samples", sample(0)),
        Captured("samples", sample(1, ts="not a time")),
        Captured("labels", {"sample_id": "d1:0001", "ts": TS0}),  # no label
        Captured("samples", sample(0)),  # re-delivered
    ]
    rejects: list[tuple[int, str]] = []
    counts = store_captured(store, items, on_reject=lambda i, _r, why: rejects.append((i, why)))
    assert counts == {"samples": (1, 1), "labels": (1, 0)}
    assert rejects == [
        (2, "'ts' is not a timestamp: 'not a time'"),
        (3, "'label' is missing or null"),
    ]
    frame = store.captured_training_frame("sensor")
    assert frame["label"].tolist() == ["dry"]


def test_ingest_messages_keeps_its_reasons_for_raw_messages(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "fs")
    messages: list[tuple[str, Any]] = [
        ("edgeloop/d1/samples", json.dumps(envelope(sample(0))).encode()),
        ("edgeloop/d1/samples", json.dumps([sample(1)])),  # not an object
        ("edgeloop/d1/samples", envelope([1])),  # envelope of a non-object
        ("edgeloop/d1/status", b"{}"),
        ("edgeloop/d1/labels", b"\xff"),
    ]
    rejects: list[tuple[int, str]] = []
    counts = ingest_messages(store, messages, on_reject=lambda i, _r, why: rejects.append((i, why)))
    assert counts == {"samples": (1, 0), "labels": (0, 0)}
    # Transport rejects come first, as they are found; then the store's.
    assert [i for i, _ in rejects] == [3, 4, 1, 2]
    rejects.sort()
    assert rejects[0][1] == "expected a JSON object, got list"
    assert rejects[1][1] == "expected a JSON object, got list"
    assert rejects[2][1] == "topic 'edgeloop/d1/status' carries neither samples nor labels"
    assert rejects[3][1].startswith("payload is not JSON: ")
