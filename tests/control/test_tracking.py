"""Experiment tracking against a real MLflow server, read back with MLflow's own client."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.tracking import (
    TAG_DATA_HASH,
    TAG_FEATURE_VIEW_VERSION,
    TAG_LOCAL_RUN_ID,
    TAG_REGISTRY_COMMIT,
    LocalRunStore,
    Tracker,
    TrackingError,
    push_local_runs,
)
from tests.control.mlflow_server import MlflowServer, free_port, start_mlflow_server

ONNX = b"\x08\x07onnx-bytes" * 50
PROFILE = {"features": {"temp": {"bins": [0.0, 1.0, 2.0], "counts": [5, 7]}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), wait=False)
    try:
        # Importing mlflow here takes seconds too: overlap it with the server's boot.
        import mlflow.tracking  # noqa: F401

        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Workspace.init(tmp_path / "ws")


def _train(tracker: Tracker, experiment: str, name: str, tmp_path: Path) -> Any:
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(json.dumps(PROFILE))
    with tracker.start_run(experiment, run_name=name, tags={TAG_DATA_HASH: "sha256:abc"}) as run:
        run.log_params({"algo": "hist_gbdt", "max_depth": 4, "learning_rate": 0.1})
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            run.log_metric("train_loss", loss, step=step)
        run.log_metrics({"auc": 0.91, "accuracy": 0.87})
        run.set_tags({TAG_REGISTRY_COMMIT: "0" * 40, TAG_FEATURE_VIEW_VERSION: "sensors@2"})
        run.log_artifact(ONNX, "model.onnx")
        run.log_artifact(profile_file, "profile/reference.json")
    return run


def _download(client: Any, run_id: str, path: str, dest: Path) -> bytes:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dest))).read_bytes()


def test_run_logged_to_server(server: MlflowServer, client: Any, tmp_path: Path) -> None:
    tracker = Tracker(server.uri, tmp_path / "unused")
    assert not tracker.is_local
    run = _train(tracker, "direct", "train-1", tmp_path)
    info = run.info
    assert info.tracking_uri == server.uri and info.uri == f"runs:/{info.run_id}"
    assert info.status == "FINISHED" and info.end_time is not None
    assert info.url and info.url.startswith(server.uri)

    got = client.get_run(info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train-1"
    assert got.data.params == {"algo": "hist_gbdt", "max_depth": "4", "learning_rate": "0.1"}
    assert got.data.metrics == {"train_loss": 0.3, "auc": 0.91, "accuracy": 0.87}
    history = client.get_metric_history(info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    tags = got.data.tags
    assert tags[TAG_DATA_HASH] == "sha256:abc"
    assert tags[TAG_REGISTRY_COMMIT] == "0" * 40
    assert tags[TAG_FEATURE_VIEW_VERSION] == "sensors@2"
    assert {a.path for a in client.list_artifacts(info.run_id)} == {"model.onnx", "profile"}
    assert [a.path for a in client.list_artifacts(info.run_id, "profile")] == [
        "profile/reference.json"
    ]
    assert _download(client, info.run_id, "model.onnx", tmp_path / "dl") == ONNX
    profile = _download(client, info.run_id, "profile/reference.json", tmp_path / "dl")
    assert json.loads(profile) == PROFILE
    assert not (tmp_path / "unused").exists()  # nothing kept locally

    listed = tracker.list_runs("direct")
    assert [r.run_id for r in listed] == [info.run_id]


def test_failed_run_is_marked_failed(server: MlflowServer, client: Any, tmp_path: Path) -> None:
    tracker = Tracker(server.uri, tmp_path)
    with pytest.raises(RuntimeError), tracker.start_run("failing") as run:
        run.log_metric("loss", 1.0)
        raise RuntimeError("fit diverged")
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert run.info.status == "FAILED"


def test_workspace_picks_up_mlflow_env(
    server: MlflowServer, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Tracker.for_workspace(ws).is_local
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    tracker = Tracker.for_workspace(ws)
    assert tracker.uri == server.uri


def test_local_runs_layout(ws: Workspace, tmp_path: Path) -> None:
    tracker = Tracker.for_workspace(ws)
    assert tracker.is_local
    run = _train(tracker, "offline", "train-local", tmp_path)
    run_dir = ws.local_runs_dir / "runs" / run.run_id
    assert run.info.uri == run_dir.resolve().as_uri()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["experiment"] == "offline"
    assert record["params"]["max_depth"] == "4"
    assert record["tags"][TAG_DATA_HASH] == "sha256:abc"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["key"], m["step"], m["value"]) for m in metrics][:3] == [
        ("train_loss", 0, 0.9),
        ("train_loss", 1, 0.5),
        ("train_loss", 2, 0.3),
    ]
    assert (run_dir / "artifacts" / "model.onnx").read_bytes() == ONNX
    assert json.loads((run_dir / "artifacts" / "profile" / "reference.json").read_text()) == PROFILE
    assert [r.run_id for r in tracker.list_runs()] == [run.run_id]


def test_push_replays_local_runs_once(
    server: MlflowServer, client: Any, ws: Workspace, tmp_path: Path
) -> None:
    tracker = Tracker.for_workspace(ws)
    done = _train(tracker, "replay", "offline-1", tmp_path)
    with pytest.raises(ValueError), tracker.start_run("replay", run_name="offline-2") as failed:
        failed.log_metric("loss", float("nan"), step=0)
        failed.log_metric("loss", 0.5, step=1)
        raise ValueError("bad data")
    with tracker.start_run("replay", run_name="still-going") as live:
        # A run in progress (its process is alive) is left for a later push.
        results = push_local_runs(ws, server.uri)
        by_id = {r.local_run_id: r for r in results}
        assert by_id[live.run_id].status == "skipped"
        assert by_id[done.run_id].status == by_id[failed.run_id].status == "pushed"

    remote = client.get_run(by_id[done.run_id].remote_run_id)
    local = LocalRunStore(ws.local_runs_dir).read_record(ws.local_runs_dir / "runs" / done.run_id)
    assert remote.info.run_name == "offline-1"
    assert remote.info.status == "FINISHED"
    assert remote.info.start_time == local["start_time"]
    assert remote.info.end_time == local["end_time"]
    assert remote.data.params == {"algo": "hist_gbdt", "max_depth": "4", "learning_rate": "0.1"}
    assert remote.data.tags[TAG_LOCAL_RUN_ID] == done.run_id
    assert remote.data.tags[TAG_REGISTRY_COMMIT] == "0" * 40
    history = client.get_metric_history(remote.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert {a.path for a in client.list_artifacts(remote.info.run_id)} == {"model.onnx", "profile"}
    assert _download(client, remote.info.run_id, "model.onnx", tmp_path / "dl") == ONNX

    bad = client.get_run(by_id[failed.run_id].remote_run_id)
    assert bad.info.status == "FAILED"
    losses = client.get_metric_history(bad.info.run_id, "loss")
    assert math.isnan(losses[0].value) and losses[1].value == 0.5

    # Again: the finished runs are not pushed twice; the one that ended since is.
    experiment = client.get_experiment_by_name("replay")
    before = len(client.search_runs([experiment.experiment_id]))
    again = {r.local_run_id: r for r in push_local_runs(ws, server.uri + "/")}
    assert again[done.run_id].status == "already-pushed"
    assert again[done.run_id].remote_run_id == by_id[done.run_id].remote_run_id
    assert again[failed.run_id].status == "already-pushed"
    assert again[live.run_id].status == "pushed"
    assert len(client.search_runs([experiment.experiment_id])) == before + 1
    pushed = tracker.list_runs("replay")
    assert all(server.uri in r.pushed for r in pushed)


def test_interrupted_push_is_not_doubled(
    server: MlflowServer, client: Any, ws: Workspace, tmp_path: Path
) -> None:
    from mlflow.entities import ViewType

    tracker = Tracker.for_workspace(ws)
    first = _train(tracker, "crashy", "a", tmp_path)
    second = _train(tracker, "crashy", "b", tmp_path)
    store = LocalRunStore(ws.local_runs_dir)
    (result_a,) = [r for r in store.push(server.uri) if r.local_run_id == first.run_id]

    # Crash after the server had the run but before the push was recorded locally.
    run_dir = ws.local_runs_dir / "runs" / first.run_id
    record = store.read_record(run_dir)
    record["pushed"] = {}
    store.write_record(run_dir, record)
    # Crash half-way through replaying the second run: a RUNNING remote leftover.
    experiment_id = client.get_experiment_by_name("crashy").experiment_id
    run_dir_b = ws.local_runs_dir / "runs" / second.run_id
    record_b = store.read_record(run_dir_b)
    record_b["pushed"] = {}
    store.write_record(run_dir_b, record_b)
    first_b = next(r for r in client.search_runs([experiment_id]) if r.info.run_name == "b")
    client.delete_run(first_b.info.run_id)
    half = client.create_run(
        experiment_id, run_name="b", tags={TAG_LOCAL_RUN_ID: second.run_id}
    ).info.run_id

    results = {r.local_run_id: r for r in store.push(server.uri)}
    assert results[first.run_id].status == "already-pushed"
    assert results[first.run_id].remote_run_id == result_a.remote_run_id
    assert results[second.run_id].status == "pushed"
    assert client.get_run(half).info.lifecycle_stage == "deleted"
    active = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    assert sorted(r.info.run_name for r in active) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in active)


def test_run_of_a_dead_process_is_pushed_as_killed(
    server: MlflowServer, client: Any, ws: Workspace
) -> None:
    store = LocalRunStore(ws.local_runs_dir)
    run = store.create("orphans", "crashed", {})
    run.log_metric("loss", 0.7)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    run_dir = ws.local_runs_dir / "runs" / run.run_id
    record = store.read_record(run_dir)
    record["pid"] = int(dead.stdout)
    store.write_record(run_dir, record)
    (result,) = push_local_runs(ws, server.uri, mlflow_experiment="orphans")
    assert result.status == "pushed"
    assert client.get_run(result.remote_run_id).info.status == "KILLED"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda r: r.log_metric("bad*name", 1.0), "may only contain"),
        (lambda r: r.log_metric("../escape", 1.0), "clean relative path"),
        (lambda r: r.log_metric("loss", "high"), "must be a number"),
        (lambda r: r.log_metric("loss", 1.0, step=1.5), "step must be an integer"),
        (lambda r: r.log_param("p", "x" * 6001), "MLflow allows 6000"),
        (lambda r: r.set_tag("", "x"), "non-empty string"),
        (lambda r: r.log_artifact(b"x", "../model.onnx"), "without '..'"),
        (lambda r: r.log_artifact("/no/such/file", "f"), "does not exist"),
        (lambda r: r.log_dict({"x": float("nan")}, "p.json"), "not JSON-serialisable"),
    ],
)
def test_local_validation_matches_mlflow_rules(ws: Workspace, action: Any, message: str) -> None:
    with (
        Tracker.for_workspace(ws).start_run("checks") as run,
        pytest.raises(TrackingError, match=message),
    ):
        action(run)


def test_params_cannot_change(ws: Workspace) -> None:
    with Tracker.for_workspace(ws).start_run("checks") as run:
        run.log_param("lr", 0.1)
        run.log_param("lr", 0.1)  # same value: fine, as in MLflow
        with pytest.raises(TrackingError, match=r"already logged as '0\.1'"):
            run.log_param("lr", 0.2)


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable"), Tracker(uri, tmp_path).start_run("x"):
        pass
    assert time.monotonic() - started < 10
    with pytest.raises(TrackingError, match="not a URL"):
        Tracker("localhost:5000", tmp_path)


# -- CLI ---------------------------------------------------------------------------


def _cli(ws: Workspace, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    from typer.testing import CliRunner

    from edgeloop_control.cli import runs

    monkeypatch.setenv("EDGELOOP_WORKSPACE", str(ws.root))
    return CliRunner().invoke(runs.app, list(args))


def test_cli_ls_and_push(
    server: MlflowServer, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _train(Tracker.for_workspace(ws), "cli", "from-cli", tmp_path)
    listed = _cli(ws, monkeypatch, "ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [run.run_id]
    assert run.run_id in _cli(ws, monkeypatch, "ls").stdout

    pushed = _cli(ws, monkeypatch, "push", "--to", server.uri, "--json")
    assert pushed.exit_code == 0, pushed.output
    (first,) = json.loads(pushed.stdout)
    assert first["status"] == "pushed"
    again = _cli(ws, monkeypatch, "push", "--to", server.uri, "--json")
    assert [r["status"] for r in json.loads(again.stdout)] == ["already-pushed"]
    assert "already-pushed" in _cli(ws, monkeypatch, "push", "--to", server.uri).stdout

    # With a tracking URI, `runs ls` reads the server; --local still shows the workspace.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    remote = json.loads(_cli(ws, monkeypatch, "ls", "-e", "cli", "--json").stdout)
    assert [r["run_id"] for r in remote] == [first["remote_run_id"]]
    local = json.loads(_cli(ws, monkeypatch, "ls", "--local", "--json").stdout)
    assert local[0]["pushed"] == {server.uri: first["remote_run_id"]}


def test_cli_push_failure_is_one_line(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    with Tracker.for_workspace(ws).start_run("cli") as run:
        run.log_metric("m", 1.0)
    result = _cli(ws, monkeypatch, "push", "--to", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0]


def test_cli_push_never_prints_the_password_in_the_uri(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Tracker.for_workspace(ws).start_run("cli") as run:
        run.log_metric("m", 1.0)
    port = free_port()
    result = _cli(ws, monkeypatch, "push", "--to", f"http://bob:hunter2@127.0.0.1:{port}")
    assert result.exit_code == 1
    assert "hunter2" not in result.stderr + result.stdout, result.stderr
    assert f"http://127.0.0.1:{port}" in result.stderr, result.stderr


def test_documented_tags_find_a_trained_model_on_the_server(
    server: MlflowServer, client: Any, ws: Workspace
) -> None:
    """Every tag docs/tracking.md lists is set, and MLflow finds the run by it."""
    import numpy as np
    import pandas as pd

    from edgeloop_control.featurestore import FeatureStore
    from edgeloop_control.infra.signing import ensure_keypair
    from edgeloop_control.jobs.train_and_register import train_and_register
    from edgeloop_control.registry import Registry
    from edgeloop_control.training import TrainConfig

    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    Registry.for_workspace(ws)
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    frame = pd.DataFrame({"id": range(200), "x": x, "y": (x > 0).astype(int)})
    FeatureStore(ws.feature_store_dir).ingest(frame, "tagged", entity="id")
    outcome = train_and_register(
        ws, name="tagged-model", config=TrainConfig(target="y", algo="logreg"), view="tagged"
    )
    push_local_runs(ws, server.uri)
    experiment = client.get_experiment_by_name("tagged-model")
    documented = {
        "edgeloop.model": "tagged-model",
        "edgeloop.model_version": "tagged-model@v1",
        "edgeloop.feature_view": "tagged",
        "edgeloop.feature_view_version": "tagged@v1",
        "edgeloop.data_hash": outcome.result.data_hash,
        "edgeloop.sha256": outcome.version.sha256,
        "edgeloop.registry_commit": None,  # any value: checked for presence
        "edgeloop.rows": "200",
    }
    docs = (Path(__file__).resolve().parents[2] / "docs" / "tracking.md").read_text()
    for tag, value in documented.items():
        assert f"`{tag}`" in docs, f"{tag} is set but not documented"
        if value is None:
            found = client.search_runs([experiment.experiment_id], f"tags.`{tag}` != ''")
        else:
            found = client.search_runs([experiment.experiment_id], f"tags.`{tag}` = '{value}'")
        assert len(found) == 1, tag


def test_runs_push_links_the_registered_version_to_its_mlflow_run(
    server: MlflowServer, client: Any, ws: Workspace
) -> None:
    """The registry's lineage named only the workspace run (`tracking_uri: workspace`) after
    `runs push`, so a model could not be followed to its run on the server."""
    import numpy as np
    import pandas as pd
    from typer.testing import CliRunner

    from edgeloop_control.cli import app
    from edgeloop_control.featurestore import FeatureStore
    from edgeloop_control.jobs.train_and_register import train_and_register
    from edgeloop_control.registry import Registry
    from edgeloop_control.training import TrainConfig

    x = np.random.default_rng(1).normal(size=200)
    frame = pd.DataFrame({"id": range(200), "x": x, "y": (x > 0).astype(int)})
    FeatureStore(ws.feature_store_dir).ingest(frame, "linked", entity="id")
    outcome = train_and_register(
        ws, name="linked-model", config=TrainConfig(target="y", algo="logreg"), view="linked"
    )
    local_id = outcome.version.lineage["tracking_run_id"]
    assert outcome.version.lineage["tracking_uri"] == "workspace"

    pushed = CliRunner().invoke(
        app, ["-w", str(ws.root), "runs", "push", "--to", server.uri, "--json"]
    )
    assert pushed.exit_code == 0, pushed.output
    (result,) = json.loads(pushed.stdout)
    assert result["model_versions"] == ["linked-model@v1"]
    remote_id = result["remote_run_id"]

    lineage = Registry.for_workspace(ws, create=False).get("linked-model@v1").lineage
    assert lineage["tracking_run_id"] == local_id  # the workspace run stays named
    assert (lineage["mlflow_run_id"], lineage["mlflow_uri"]) == (remote_id, server.uri)
    # The run the registry names is the one on the server, and it names the version back.
    run = client.get_run(lineage["mlflow_run_id"])
    assert run.data.tags["edgeloop.model_version"] == "linked-model@v1"
    assert run.data.tags["edgeloop.local_run_id"] == local_id
    shown = CliRunner().invoke(app, ["-w", str(ws.root), "models", "show", "linked-model@v1"])
    assert remote_id in shown.stdout

    # Pushing again links nothing new and makes no commit.
    head = Registry.for_workspace(ws, create=False).head_commit()
    again = CliRunner().invoke(app, ["-w", str(ws.root), "runs", "push", "--to", server.uri])
    assert again.exit_code == 0, again.output
    assert Registry.for_workspace(ws, create=False).head_commit() == head


def test_a_linked_uri_keeps_no_credentials() -> None:
    from edgeloop_control.registry.lineage import public_uri

    assert public_uri("http://alice:s3cret@mlflow.lan:5000/x") == "http://mlflow.lan:5000/x"
    assert public_uri("https://mlflow.example.org") == "https://mlflow.example.org"
