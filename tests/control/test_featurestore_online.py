"""Online store: materialisation by time range and latest-value lookups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.featurestore import FeatureStore, InvalidInputError

NOW = pd.Timestamp.now(tz="UTC").floor("s")


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def machine_frame(n: int = 120, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "site": rng.choice(["north", "south"], n),
            "machine": rng.integers(1, 6, n),
            "ts": NOW - pd.to_timedelta(rng.integers(60, 3 * 86_400, n), unit="s"),
            "load": rng.random(n),
            "cycles": rng.integers(0, 10_000, n),
            "state": rng.choice(["idle", "run"], n),
            "alarm": rng.random(n) > 0.8,
            "serviced": NOW - pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        }
    )


def latest_per_key(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    ordered = frame.sort_values("ts", kind="stable")
    return ordered.drop_duplicates(keys, keep="last").set_index(keys).sort_index()


def test_materialize_serves_the_latest_row_per_entity_with_exact_types(
    store: FeatureStore,
) -> None:
    frame = machine_frame()
    store.ingest(frame, "machines", entity=["site", "machine"], timestamp="ts")
    expected = latest_per_key(frame, ["site", "machine"])
    written = store.materialize("machines")
    assert written == len(expected)

    keys = list(expected.index)
    got = store.get_online("machines", keys)
    assert [(r["site"], r["machine"]) for r in got] == keys
    for record, (_, row) in zip(got, expected.iterrows(), strict=True):
        assert record["ts"] == row["ts"]
        assert record["load"] == row["load"]  # floats round-trip exactly
        assert record["cycles"] == row["cycles"] and isinstance(record["cycles"], int)
        assert record["state"] == row["state"]
        assert record["alarm"] is bool(row["alarm"])
        assert record["serviced"] == row["serviced"]
    assert store.materialize("machines") == 0  # nothing newer the second time


def test_materialize_by_range_and_out_of_order_converges(store: FeatureStore) -> None:
    frame = machine_frame(200)
    store.ingest(frame, "machines", entity=["site", "machine"], timestamp="ts")
    cut = NOW - pd.Timedelta("36h")
    recent = frame[frame["ts"] >= cut]
    store.materialize("machines", start=cut)
    some = latest_per_key(recent, ["site", "machine"])
    for record in store.get_online("machines", list(some.index)):
        assert record["ts"] == some.loc[(record["site"], record["machine"]), "ts"]

    # Materialising the older range afterwards must not overwrite newer rows.
    older = frame[frame["ts"] < cut]
    store.materialize("machines", end=cut.isoformat())
    everything = latest_per_key(frame, ["site", "machine"])
    only_old = set(latest_per_key(older, ["site", "machine"]).index) - set(some.index)
    got = store.get_online("machines", list(everything.index))
    assert [r["ts"] for r in got] == everything["ts"].tolist()
    assert only_old <= {(r["site"], r["machine"]) for r in got if r["ts"] is not None}


def test_keys_as_tuples_mappings_and_text(store: FeatureStore) -> None:
    frame = machine_frame(40)
    store.ingest(frame, "machines", entity=["site", "machine"], timestamp="ts")
    store.materialize("machines")
    site, machine = frame.iloc[0]["site"], int(frame.iloc[0]["machine"])
    by_tuple = store.get_online("machines", [(site, machine)])
    by_mapping = store.get_online("machines", [{"machine": str(machine), "site": site}])
    assert by_tuple == by_mapping and by_tuple[0]["ts"] is not None
    with pytest.raises(InvalidInputError, match=r"keyed by \['site', 'machine'\]"):
        store.get_online("machines", ["north"])
    with pytest.raises(InvalidInputError, match=r"entity 'machine' .* is an integer, got 'x'"):
        store.get_online("machines", [("north", "x")])


def test_unknown_entities_and_expired_rows_are_empty(store: FeatureStore) -> None:
    frame = pd.DataFrame(
        {
            "device": ["fresh", "stale"],
            "ts": [NOW - pd.Timedelta("10min"), NOW - pd.Timedelta("3h")],
            "temp": [1.0, 2.0],
        }
    )
    store.ingest(frame, "temps", entity=["device"], timestamp="ts", ttl="1h")
    store.materialize("temps")
    fresh, stale, unknown = store.get_online("temps", ["fresh", "stale", "nobody"])
    assert fresh["temp"] == 1.0
    assert stale == {"device": "stale", "ts": None, "temp": None}
    assert unknown == {"device": "nobody", "ts": None, "temp": None}


def test_versions_are_served_separately(store: FeatureStore) -> None:
    v1 = pd.DataFrame({"device": ["a"], "ts": [NOW], "temp": [1.0]})
    store.ingest(v1, "temps", entity=["device"], timestamp="ts")
    store.ingest(v1.assign(temp=2.0, hum=0.3), "temps", evolve=True)
    store.materialize("temps@v1")
    assert store.get_online("temps@v1", "a")[0]["temp"] == 1.0
    assert store.get_online("temps", "a")[0]["temp"] is None
    store.materialize("temps")
    assert store.get_online("temps", "a")[0] == {"device": "a", "ts": NOW, "temp": 2.0, "hum": 0.3}


def test_views_without_entity_cannot_be_served(store: FeatureStore) -> None:
    store.ingest(pd.DataFrame({"x": [1.0], "ts": [NOW]}), "plain", timestamp="ts")
    with pytest.raises(InvalidInputError, match=r"plain@v1 has no entity columns"):
        store.materialize("plain")


def test_compaction_keeps_rows_order_ties_and_dedup(store: FeatureStore) -> None:
    frame = machine_frame(90)
    # Many small ingests, one of them a same-time correction that must keep winning.
    for lo in range(0, len(frame), 10):
        store.ingest(
            frame.iloc[lo : lo + 10], "machines", entity=["site", "machine"], timestamp="ts"
        )
    fix = frame.iloc[[0]].assign(load=-1.0)
    store.ingest(fix, "machines")
    before_rows = store.read("machines")
    labels = frame[["site", "machine", "ts"]].rename(columns={"ts": "t"})
    before_pit = store.training_set(labels, timestamp="t", views=["machines"])
    files_before = len(store.files("machines"))

    assert store.compact("machines") == (files_before, len(store.partitions("machines")))
    assert len(store.files("machines")) < files_before
    pd.testing.assert_frame_equal(store.read("machines"), before_rows)
    after_pit = store.training_set(labels, timestamp="t", views=["machines"])
    pd.testing.assert_frame_equal(after_pit, before_pit)
    assert (after_pit["load"] == -1.0).sum() >= 1
    assert store.ingest(frame, "machines").duplicates == len(frame)
    assert not list(store.root.rglob("*.tmp"))
    on_disk = {p.relative_to(store.root).as_posix() for p in store.root.rglob("*.parquet")}
    assert on_disk == {f.path for f in store.files("machines")}
