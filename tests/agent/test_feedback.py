from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
import pytest

from edgeloop_agent.feedback import FeedbackJoiner


def _clf(**kw: object) -> FeedbackJoiner:
    return FeedbackJoiner(task="classification", **kw)  # type: ignore[arg-type]


def test_match_then_duplicate() -> None:
    j = _clf()
    assert j.record("r1", "v2", 1, ts=100.0, extra="sample-9")
    res = j.join("r1", 1, now=130.0)
    assert res.status == "matched"
    assert (res.variant, res.prediction, res.label, res.correct) == ("v2", 1, 1, True)
    assert res.delay_s == 30.0 and res.extra == "sample-9" and res.error is None
    assert len(j) == 0
    again = j.join("r1", 0, now=131.0)
    assert again.status == "duplicate" and again.correct is None
    j.record("r2", "v1", "cat", ts=100.0)
    assert j.join("r2", "dog", now=101.0).correct is False
    assert j.stats() == {
        "recorded": 2,
        "duplicate_records": 0,
        "matched": 2,
        "unknown": 0,
        "late": 0,
        "duplicate": 1,
        "invalid": 0,
        "evicted_age": 0,
        "evicted_count": 0,
        "size": 0,
    }


def test_unknown_and_malformed_messages_are_counted() -> None:
    j = _clf()
    assert j.join("never-seen", 1, now=1.0).status == "unknown"
    assert j.join(42, 1, now=1.0).reason == "id must be a non-empty str, got 42"
    for msg, reason in [
        ([1, 2], "feedback must be an object, got list"),
        ({"label": 1}, 'feedback has no "id" field'),
        ({"id": "x"}, 'feedback has no "label" field'),
    ]:
        res = j.join_message(msg, now=1.0)
        assert (res.status, res.reason) == ("invalid", reason)
    assert j.join_message({"id": "nope", "label": 1}, now=1.0).status == "unknown"
    st = j.stats()
    assert (st["unknown"], st["invalid"]) == (2, 4)


def test_eviction_by_age_gives_late() -> None:
    j = _clf(max_age_s=60.0)
    j.record("old", "v1", 0, ts=0.0)
    j.record("young", "v1", 0, ts=50.0)
    assert j.join("old", 0, now=61.0).status == "late"  # 61 s after its prediction
    assert j.join("young", 0, now=61.0).status == "matched"
    j.record("r3", "v1", 0, ts=100.0)
    assert j.expire(now=159.0) == 0 and j.expire(now=161.0) == 1
    assert len(j) == 0
    assert j.stats()["evicted_age"] == 2


def test_eviction_by_count_and_bounded_memory_of_evicted_ids() -> None:
    j = _clf(max_entries=3, remember=2)
    for i in range(6):
        j.record(f"r{i}", "v1", i, ts=float(i))
    assert len(j) == 3
    assert j.stats()["evicted_count"] == 3
    # r0..r2 were evicted; only the last two evicted ids are remembered as late.
    assert [j.join(f"r{i}", i, now=6.0).status for i in range(6)] == [
        "unknown",
        "late",
        "late",
        "matched",
        "matched",
        "matched",
    ]


def test_repeated_request_id_keeps_first_prediction() -> None:
    j = _clf()
    assert j.record("r", "v1", "a", ts=1.0)
    assert not j.record("r", "v2", "b", ts=2.0)
    res = j.join("r", "a", now=3.0)
    assert (res.variant, res.correct) == ("v1", True)
    assert j.stats()["duplicate_records"] == 1


@pytest.mark.parametrize(
    ("prediction", "label", "correct"),
    [
        (1, 1.0, True),  # numbers compare as numbers
        (1, True, True),  # JSON true is the class 1
        (0, False, True),
        (np.int64(2), 2, True),  # ONNX outputs hold numpy scalars
        (np.str_("cat"), "cat", True),
        (2, 2.5, False),
        ("cat", "Cat", False),  # strings compare exactly
    ],
)
def test_classification_comparison_rules(prediction: object, label: object, correct: bool) -> None:
    j = _clf()
    j.record("r", "v", prediction, ts=0.0)
    res = j.join("r", label, now=1.0)
    assert (res.status, res.correct) == ("matched", correct)


@pytest.mark.parametrize(
    ("prediction", "label", "reason"),
    [
        (1, "1", 'type mismatch: label "1" vs prediction 1'),
        ("1", 1, 'type mismatch: label 1 vs prediction "1"'),
        (1, None, "label must be a str or a number, got null"),
        (1, [1], "label must be a str or a number, got [1]"),
        (1, float("nan"), "label must be finite, got NaN"),
    ],
)
def test_classification_type_mismatch_is_invalid_and_keeps_the_prediction(
    prediction: object, label: object, reason: str
) -> None:
    j = _clf()
    j.record("r", "v", prediction, ts=0.0)
    res = j.join("r", label, now=1.0)
    assert (res.status, res.reason, res.correct) == ("invalid", reason, None)
    assert len(j) == 1  # a corrected label can still join
    assert j.join("r", prediction, now=2.0).status == "matched"


def test_regression_outcome_and_rules() -> None:
    j = FeedbackJoiner(task="regression")
    j.record("a", "v1", np.float32(2.5), ts=0.0)
    res = j.join("a", 4, now=1.0)
    assert (res.status, res.error, res.correct) == ("matched", -1.5, None)
    j.record("b", "v1", 1.0, ts=0.0)
    for bad, reason in [
        ("3.5", 'label must be a finite number, got "3.5"'),
        (True, "label must be a finite number, got true"),
        (float("inf"), "label must be a finite number, got Infinity"),
    ]:
        res = j.join("b", bad, now=1.0)
        assert (res.status, res.reason) == ("invalid", reason)
    assert j.join("b", 0.25, now=1.0).error == 0.75
    with pytest.raises(TypeError, match="regression prediction must be a number"):
        j.record("c", "v1", "high", ts=0.0)


def test_record_and_constructor_validation() -> None:
    j = _clf()
    with pytest.raises(ValueError, match="request_id"):
        j.record("", "v", 1, ts=0.0)
    with pytest.raises(ValueError, match="variant"):
        j.record("r", "", 1, ts=0.0)
    with pytest.raises(TypeError, match="prediction must be a str, int, float or bool, got list"):
        j.record("r", "v", [0.1, 0.9], ts=0.0)
    with pytest.raises(ValueError, match="ts must be a finite number"):
        j.record("r", "v", 1, ts=float("nan"))
    with pytest.raises(ValueError, match="task must be one of"):
        FeedbackJoiner(task="ranking")
    with pytest.raises(ValueError, match="max_entries"):
        _clf(max_entries=0)
    with pytest.raises(ValueError, match="max_age_s"):
        _clf(max_age_s=-1)


def _traced_size(j: FeedbackJoiner, start: int, stop: int) -> int:
    for i in range(start, stop):
        j.record(f"req-{i:012d}", "v1", i % 7, ts=float(i), extra=i)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_memory_stays_bounded_on_a_long_stream() -> None:
    j = _clf(max_entries=10_000, max_age_s=1e9, remember=2_000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        full = _traced_size(j, 0, 10_000 + 2_000) - base  # window and evicted memory full
        later = _traced_size(j, 12_000, 52_000) - base  # 40,000 more predictions
    finally:
        tracemalloc.stop()
    assert len(j) == 10_000
    assert later < 1.1 * full
    assert full / 10_000 < 600  # bytes per remembered prediction, all included


def test_concurrent_record_and_join() -> None:
    j = _clf(max_entries=1_000_000, max_age_s=1e9)
    n = 20_000
    results: list[str] = []

    def serve() -> None:
        for i in range(n):
            j.record(f"r{i}", "v", i % 2, ts=float(i))

    def feedback() -> None:
        for i in range(n):
            results.append(j.join(f"r{i}", i % 2, now=float(i)).status)

    threads = [threading.Thread(target=serve), threading.Thread(target=feedback)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = j.stats()
    assert st["matched"] + st["unknown"] == n == len(results)
    assert st["size"] == n - st["matched"]
