"""The retrain policy on its own: real workspace, feature store, registry and tracking.

The loop broke on the first real data set: a boolean column in the training
view met the same feature captured on devices as 0.0/1.0, the concatenation
became an object column, column typing raised StopIteration, and the daemon
retried every tick (86 identical events, ~95 FAILED tracking runs in two
minutes). These tests drive the policy's tick directly with drift evidence and
captured samples written where the daemon writes them.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.captured import ingest_messages
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.signing import ensure_keypair
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.jobs.train_and_register import train_and_register
from edgeloop_control.policies.retrain.policy import RetrainConfig, RetrainPolicy
from edgeloop_control.registry import Registry
from edgeloop_control.training import TrainConfig

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

DEVICE = "loan-1"
T0 = 1_764_000_000.0


def loan_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A loan book with each column type a real data set has."""
    income = rng.normal(50_000, 15_000, n).round(2)
    accounts = rng.integers(0, 8, n)
    secured = rng.random(n) < 0.4
    band = pd.Categorical(rng.choice(["A", "B", "C"], n, p=[0.5, 0.4, 0.1]))
    region = rng.choice(["north", "south", "east"], n)
    risk = -income / 20_000 + accounts * 0.4 - secured * 1.0 + (band == "C") * 1.5
    default = (risk + rng.normal(0, 0.7, n) > -1.2).astype(int)
    frame = pd.DataFrame(
        {
            "loan_id": np.arange(n),
            "income": income,
            "n_accounts": accounts,
            "secured": secured,
            "band": band,
            "region": region,
            "default": default,
        }
    )
    frame.loc[frame.index % 17 == 0, "income"] = np.nan  # missing values
    return frame


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    Registry.for_workspace(ws)
    return ws


@pytest.fixture
def champion(ws: Workspace) -> str:
    store = FeatureStore(ws.feature_store_dir)
    frame = loan_rows(600, np.random.default_rng(1))
    store.ingest(frame, "loans", entity="loan_id")  # no event timestamp
    assert store.read("loans").dtypes["secured"] == np.dtype(bool)
    outcome = train_and_register(
        ws,
        name="loan",
        config=TrainConfig(target="default", algo="hgb", holdout=0.25, seed=0),
        view="loans",
        stage="auto",
    )
    assert outcome.stage == "champion"
    return outcome.version.ref


def serve_and_drift(db: ControlDB, variant: str, now: float) -> None:
    db.upsert_device(DEVICE)  # in the inventory, as the telemetry carrying its windows leaves it
    db.set_desired(
        DEVICE,
        {"revision": 1, "models": [{"variant": variant, "role": "serve", "weight": 100}]},
    )
    for i in range(3):
        db.conn.execute(
            "INSERT INTO drift_windows(report_id, idx, device, variant, version, start, end, n, "
            "enough_data, dataset_drift, output_drift, drifted, doc) "
            "VALUES (?,?,?,?,?,?,?,?,1,1,0,?,'{}')",
            (
                f"r{i}",
                0,
                DEVICE,
                variant,
                "v1",
                now - 300 + i * 60,
                now - 240 + i * 60,
                500,
                json.dumps(["income"]),
            ),
        )


def captured(store: FeatureStore, rows: pd.DataFrame, variant: str, start: float) -> None:
    """Samples and labels as agents send them: JSON values, a bool as true/false
    (agents since the JSON-boolean contract) or 0.0/1.0 (older agents)."""
    messages: list[tuple[str, bytes]] = []
    model, version = variant.split("@")
    for i, row in enumerate(rows.itertuples(index=False)):
        sid = f"{DEVICE}:ab12:{i:06d}"
        features: dict[str, Any] = {
            "income": None if pd.isna(row.income) else float(row.income),
            "n_accounts": int(row.n_accounts),
            "secured": bool(row.secured) if i % 2 else (1.0 if row.secured else 0.0),
            "band": str(row.band),
            # A region the training data never had: unseen categories must pass.
            "region": "west" if i % 5 == 0 else str(row.region),
        }
        sample = {
            "sample_id": sid,
            "device": DEVICE,
            "ts": start + i,
            "request_id": f"r-{i}",
            "model": model,
            "version": version,
            "variant": variant,
            "features": features,
            "prediction": 0,
            "label": None,
        }
        label = {
            "sample_id": sid,
            "request_id": f"r-{i}",
            "device": DEVICE,
            "ts": start + i + 30,
            "label": int(row.default),
        }
        messages.append((f"edgeloop/{DEVICE}/samples", json.dumps(sample).encode()))
        messages.append((f"edgeloop/{DEVICE}/labels", json.dumps(label).encode()))
    counts = ingest_messages(store, messages)
    assert counts["samples"][0] == len(rows) and counts["labels"][0] == len(rows)


def events(db: ControlDB, kind: str) -> list[dict[str, Any]]:
    return [e for e in db.events(limit=1000) if e["kind"] == kind]


def tracking_runs(ws: Workspace) -> list[Path]:
    runs = ws.local_runs_dir / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


def test_bool_int_float_category_string_and_missing_columns_retrain(
    ws: Workspace, champion: str
) -> None:
    now = T0 + 10_000
    db = ControlDB(ws.control_db)
    store = FeatureStore(ws.feature_store_dir)
    serve_and_drift(db, champion, now)
    captured(store, loan_rows(500, np.random.default_rng(2)), champion, now - 250)
    policy = RetrainPolicy(
        ws, db, store, config=RetrainConfig(min_samples=300, consecutive_windows=3)
    )
    policy.tick(now)
    assert not events(db, "retrain_failed"), events(db, "retrain_failed")
    registered = events(db, "registered")
    assert len(registered) == 1, db.events(limit=20)
    assert "loan@v2" in registered[0]["message"]
    new = Registry.for_workspace(ws, create=False, sync_remote=False).get("loan@v2")
    assert new.metadata["categorical_features"] == ["band", "region"]
    assert set(new.metadata["features"]) == {"income", "n_accounts", "secured", "band", "region"}
    # The champion typed "secured" bool; captured true/false/0.0/1.0 keep it bool.
    old = Registry.for_workspace(ws, create=False, sync_remote=False).get(champion)
    assert new.metadata["input_schema"] == old.metadata["input_schema"]
    kinds = {f["name"]: f["dtype"] for f in new.metadata["input_schema"]["features"]}
    assert kinds["secured"] == "bool" and kinds["income"] == "float"


def test_a_failing_episode_backs_off_with_one_event_and_no_tracking_run(
    ws: Workspace, champion: str
) -> None:
    now = T0 + 10_000
    db = ControlDB(ws.control_db)
    store = FeatureStore(ws.feature_store_dir)
    serve_and_drift(db, champion, now)
    rows = loan_rows(400, np.random.default_rng(3))
    rows["default"] = 1  # a single class: training must refuse it
    captured(store, rows, champion, now - 250)
    config = RetrainConfig(
        min_samples=300,
        consecutive_windows=3,
        reference_share=0.0,
        retry_base_s=60.0,
        retry_max_s=240.0,
    )
    policy = RetrainPolicy(ws, db, store, config=config)
    runs_before = tracking_runs(ws)

    policy.tick(now)
    failed = events(db, "retrain_failed")
    assert len(failed) == 1 and "single class" in failed[0]["message"]
    st = policy.state("loan")
    assert st.failures == 1 and st.retry_at == pytest.approx(now + 60)
    assert st.phase == "collecting"  # the episode stays open for more labels

    # Ticks inside the back-off do nothing at all.
    for dt in (1, 10, 59):
        policy.tick(now + dt)
    assert policy.state("loan").failures == 1

    # Retries double the delay up to the cap; the same reason is not recorded again.
    t = now
    for failures, delay in ((2, 120), (3, 240), (4, 240)):
        t = policy.state("loan").retry_at
        policy.tick(t)
        st = policy.state("loan")
        assert st.failures == failures
        assert st.retry_at == pytest.approx(t + delay)
    assert len(events(db, "retrain_failed")) == 1
    assert len(events(db, "retrain")) == 1  # the attempt itself is news once
    # Refused before training started: no tracking run was opened for it.
    assert tracking_runs(ws) == runs_before

    # The operator sees the stuck loop under `edgeloop ab status` (and `edgeloop fleet`).
    from edgeloop_control.cli.retraining import failing_lines

    [line] = failing_lines(db, now=t)
    assert line.startswith("retraining loan is failing (4 attempts, next try in 4m): ")
    assert "single class" in line
    from tests.mqtt_helpers import VENV_BIN

    shown = subprocess.run(
        [str(VENV_BIN / "edgeloop"), "-w", str(ws.root), "ab", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "warning: retraining loan is failing (4 attempts" in shown.stderr


def test_an_unexpected_error_is_contained_and_backed_off(ws: Workspace, champion: str) -> None:
    now = T0 + 10_000
    db = ControlDB(ws.control_db)
    store = FeatureStore(ws.feature_store_dir)
    serve_and_drift(db, champion, now)
    # A drift window whose feature list is not JSON: the evidence query breaks.
    db.conn.execute("UPDATE drift_windows SET drifted = '{broken' WHERE report_id = 'r0'")
    policy = RetrainPolicy(ws, db, store, config=RetrainConfig(retry_base_s=30.0))
    started = time.monotonic()
    for i in range(20):
        policy.tick(now + i)
    assert time.monotonic() - started < 10
    failed = events(db, "retrain_failed")
    assert len(failed) == 1 and "JSONDecodeError" in failed[0]["message"]
    assert policy.state("loan").failures == 1
