"""The model registry against real git, real DVC (with a local remote) and real GTO."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop_agent.wire.signature import load_public_keys, verify
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import ModelVersion, Registry, RegistryError, parse_ref

# DVC's own code triggers these in pygtrie; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dvc.*")

BIN = Path(sys.executable).parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def tiny_onnx(scale: float) -> bytes:
    """A real (if trivial) ONNX model; ``scale`` makes each version's bytes differ."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.full((1, 2), scale, np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def metadata(auc: float, depth: int, rows: int) -> dict[str, Any]:
    return {
        "feature_view": {"name": "sensors", "version": 2},
        "time_range": ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"],
        "rows": rows,
        "data_hash": f"sha256:{rows:064x}",
        "algorithm": {"name": "hist_gbdt", "params": {"max_depth": depth}},
        "metrics": {"auc": auc, "log_loss": None},
        "parity": {"ok": True, "max_abs_diff": 1e-7},
        "opset": {"": 17},
        "input_schema": [{"name": "x", "dtype": "float32", "shape": [None, 2]}],
        "profile": {"x": {"bins": [0.0, 1.0, 2.0], "counts": [3, 4]}},
        "np_scalar": np.float32(0.5),
    }


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.init(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def artifacts() -> dict[str, bytes]:
    return {f"v{i}": tiny_onnx(float(i)) for i in (1, 2, 3)}


@pytest.fixture(scope="module")
def registry(ws: Workspace, artifacts: dict[str, bytes]) -> Registry:
    reg = Registry.for_workspace(ws)
    reg.register("sensor", artifacts["v1"], metadata(0.80, 3, 1000), lineage={"run_id": "r1"})
    reg.register(
        "sensor",
        artifacts["v2"],
        metadata(0.84, 4, 1200),
        lineage={"run_id": "r2", "run_uri": "runs:/r2", "parent": "v1", "cause": "drift-17"},
    )
    reg.register("sensor", artifacts["v3"], metadata(0.83, 4, 1500), lineage={"parent": "latest"})
    return reg


def test_registration_layout(registry: Registry, ws: Workspace, artifacts: dict) -> None:
    versions = registry.list("sensor")
    assert [v.version for v in versions] == ["v1", "v2", "v3"]
    assert [v.semver for v in versions] == ["1.0.0", "2.0.0", "3.0.0"]
    assert [v.tag for v in versions] == ["sensor@v1.0.0", "sensor@v2.0.0", "sensor@v3.0.0"]
    root = ws.registry_dir
    for mv in versions:
        data = artifacts[mv.version]
        assert mv.sha256 == hashlib.sha256(data).hexdigest()
        assert mv.size == len(data)
        assert mv.artifact_path == root / "models" / "sensor" / mv.version / "model.onnx"
        # The tagged commit holds the .dvc pointer and the metadata, not the bytes.
        files = git(root, "ls-tree", "-r", "--name-only", mv.tag).splitlines()
        vdir = f"models/sensor/{mv.version}"
        assert {f"{vdir}/model.onnx.dvc", f"{vdir}/metadata.json"} <= set(files)
        assert f"{vdir}/model.onnx" not in files
        dvc_file = git(root, "show", f"{mv.tag}:{vdir}/model.onnx.dvc")
        assert f"size: {len(data)}" in dvc_file
        assert git(root, "cat-file", "-t", mv.tag) == "tag"  # annotated, as GTO requires
        assert git(root, "tag", "-l", "--format=%(contents:subject)", mv.tag) == (
            f"Registering artifact sensor version v{mv.semver}"
        )
    assert git(root, "status", "--porcelain") == ""
    # Pushed: the remote holds every artifact under its content hash.
    assert len([p for p in Path(ws.registry_remote).rglob("*") if p.is_file()]) == 3


def test_metadata_and_lineage_are_recorded(registry: Registry) -> None:
    v2 = registry.get("sensor@v2")
    assert v2.metadata["metrics"] == {"auc": 0.84, "log_loss": None}
    assert v2.metadata["np_scalar"] == 0.5  # numpy scalars stored as plain JSON numbers
    assert v2.metadata["feature_view"] == {"name": "sensors", "version": 2}
    assert v2.lineage == {
        "run_id": "r2",
        "run_uri": "runs:/r2",
        "parent": "sensor@v1",
        "cause": "drift-17",
    }
    # A moving alias as parent is recorded as the concrete version it meant.
    assert registry.get("sensor@v3").lineage == {"parent": "sensor@v2"}
    assert registry.get("sensor@v1").lineage == {"run_id": "r1"}


def test_signature_verifies_with_the_agent(registry: Registry, ws: Workspace) -> None:
    keys = load_public_keys([ws.public_key_path])
    for mv in registry.list():
        verify(registry.artifact_bytes(mv), mv.signature, keys)
    assert ws.signing_key_path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("sensor@v2", "v2"),
        ("sensor@v2.0.0", "v2"),
        ("sensor@2", "v2"),
        ("sensor@latest", "v3"),
        ("sensor", "v3"),
    ],
)
def test_get_by_ref(registry: Registry, ref: str, version: str) -> None:
    assert registry.get(ref).version == version


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("sensor@v9", r"no version v9 \(versions: v1, v2, v3\)"),
        ("radar@v1", r"no model named 'radar'.*models: sensor"),
        ("sensor#prod", "no version in stage 'prod'"),
        ("sensor@vx", "not a version"),
        ("sen sor@v1", "not a model name"),
        ("sensor@", r"nothing after '@'"),
        ("", "empty model reference"),
    ],
)
def test_bad_refs(registry: Registry, ref: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.get(ref)


def test_parse_ref_forms() -> None:
    assert parse_ref("sensor@v3").version == (3, 0, 0)
    assert parse_ref("sensor@v3.1.2").version == (3, 1, 2)
    assert parse_ref("sensor#champion").stage == "champion"
    assert parse_ref("sensor:challenger").stage == "challenger"
    assert parse_ref("sensor@latest").latest
    assert str(parse_ref("sensor@v3.0.0")) == "sensor@v3"


def test_diff(registry: Registry) -> None:
    d = registry.diff("sensor@v1", "sensor@v2")
    assert d["a"] == "sensor@v1" and d["b"] == "sensor@v2"
    assert d["metrics"]["metrics.auc"]["a"] == 0.80
    assert d["metrics"]["metrics.auc"]["delta"] == pytest.approx(0.04)
    assert "metrics.log_loss" not in d["metrics"]  # unchanged
    assert d["params"] == {"algorithm.params.max_depth": {"a": 3, "b": 4, "delta": 1}}
    assert set(d["metadata"]) == {"rows", "data_hash"}
    assert "sha256" in d["artifact"]
    assert d["lineage"]["parent"] == {"a": None, "b": "sensor@v1"}
    same = registry.diff("sensor@v2", "sensor@v2")
    assert same["metrics"] == same["params"] == same["metadata"] == same["artifact"] == {}


def test_stages_follow_gto_conventions(registry: Registry, ws: Workspace) -> None:
    root = ws.registry_dir
    registry.promote("sensor", "v1", "champion")
    registry.promote("sensor", "v2", "challenger")
    assert registry.stages("sensor") == {"champion": "v1", "challenger": "v2"}
    # The challenger wins: it becomes champion and stops being challenger.
    mv = registry.promote("sensor", "sensor#challenger", "champion")
    assert mv.version == "v2" and mv.stages == ["champion"]
    registry.promote("sensor", "v3", "challenger")
    before = git(root, "tag", "-l")
    again = registry.promote("sensor", "v3", "challenger")  # already there: no new tag
    assert again.stages == ["challenger"] and git(root, "tag", "-l") == before

    assert registry.stages("sensor") == {"champion": "v2", "challenger": "v3"}
    assert registry.get("sensor#champion").version == "v2"
    assert registry.get("sensor:challenger").version == "v3"
    assert [(v.version, v.stages) for v in registry.list("sensor")] == [
        ("v1", []),
        ("v2", ["champion"]),
        ("v3", ["challenger"]),
    ]
    stage_tags = [t for t in git(root, "tag", "-l").splitlines() if "#" in t]
    assert sorted(stage_tags, key=lambda t: int(t.rsplit("#", 1)[1])) == [
        "sensor#champion#1",
        "sensor#challenger#2",
        "sensor#champion!#3",
        "sensor#champion#4",
        "sensor#challenger!#5",
        "sensor#challenger#6",
    ]
    assert git(root, "tag", "-l", "--format=%(contents:subject)", "sensor#champion#4") == (
        "Assigning stage champion to artifact sensor version v2.0.0"
    )
    assert git(root, "rev-parse", "sensor#champion#4^{commit}") == registry.get("sensor@v2").commit

    # GTO itself reads the same versions and stages from our tags.
    shown = json.loads(_gto(root, "show", "--json"))
    assert shown["sensor"]["version"] == "v3.0.0"
    assert shown["sensor"]["stage"] == {"champion": "v2.0.0", "challenger": "v3.0.0"}
    versions = json.loads(_gto(root, "show", "sensor", "--json"))
    by_version = {v["version"]: v for v in versions}
    assert set(by_version) == {"v1.0.0", "v2.0.0", "v3.0.0"}
    assert all(v["registrations"] and v["is_active"] for v in versions)
    active = {v: sorted(s["stage"] for s in by_version[v]["stages"]) for v in by_version}
    assert active == {"v1.0.0": [], "v2.0.0": ["champion"], "v3.0.0": ["challenger"]}
    # GTO's time-ordered view agrees too (our tag times strictly increase).
    by_time = json.loads(_gto(root, "show", "--json", "--sort", "timestamp"))
    assert by_time["sensor"]["stage"] == {"champion": "v2.0.0", "challenger": "v3.0.0"}

    demoted = registry.demote("sensor", "challenger")
    assert demoted is not None and demoted.version == "v3"
    assert registry.demote("sensor", "challenger") is None
    assert registry.stages("sensor") == {"champion": "v2"}
    assert json.loads(_gto(root, "show", "--json"))["sensor"]["stage"] == {"champion": "v2.0.0"}
    registry.promote("sensor", "v3", "challenger")


def _gto(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "gto"), *args], cwd=repo, capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_restore_old_version_with_plain_git_and_dvc(
    registry: Registry, ws: Workspace, artifacts: dict, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws.registry_dir), str(clone)], check=True)
    for version in ("v1", "v2"):
        git(clone, "checkout", "-q", f"sensor@{version}.0.0")
        # The clone has no DVC cache: the bytes come from the remote in .dvc/config.
        subprocess.run(
            [str(BIN / "dvc"), "pull", "-q"], cwd=clone, env=ENV, check=True, capture_output=True
        )
        restored = (clone / "models" / "sensor" / version / "model.onnx").read_bytes()
        assert restored == artifacts[version]
        assert hashlib.sha256(restored).hexdigest() == registry.get(f"sensor@{version}").sha256
    # At v1 there was no v2 yet: the checkout is the registry as it was then.
    git(clone, "checkout", "-q", "sensor@v1.0.0")
    assert not (clone / "models" / "sensor" / "v2" / "model.onnx.dvc").exists()


def test_tampered_artifact_is_detected_and_restorable(registry: Registry, artifacts: dict) -> None:
    mv = registry.get("sensor@v1")
    path = mv.artifact_path
    tampered = bytearray(artifacts["v1"])
    tampered[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(tampered))
    with pytest.raises(RegistryError, match=r"sha256 .* modified after registration"):
        registry.artifact_bytes(mv)
    # A missing artifact is fetched again (DVC cache, else the remote).
    path.unlink()
    assert registry.artifact_bytes("sensor@v1") == artifacts["v1"]


def test_worktree_edits_cannot_change_a_version(registry: Registry, ws: Workspace) -> None:
    record = ws.registry_dir / "models" / "sensor" / "v1" / "metadata.json"
    original = record.read_text()
    forged = json.loads(original)
    forged["artifact"]["sha256"] = "0" * 64
    record.write_text(json.dumps(forged))
    try:
        # Versions are read from the tagged commit, not the working tree...
        assert registry.get("sensor@v1").sha256 != "0" * 64
        # ... and a dirty registry refuses new registrations.
        with pytest.raises(RegistryError, match=r"local changes \(M models/sensor/v1/metadata"):
            registry.register("sensor", b"x", {})
    finally:
        record.write_text(original)
    assert git(ws.registry_dir, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("bad name", b"x", {}), {}, "invalid model name 'bad name'"),
        (("-sensor", b"x", {}), {}, "invalid model name"),
        (("sensor", b"", {}), {}, "empty artifact"),
        (("sensor", "text", {}), {}, "onnx_bytes must be bytes"),
        (("sensor", b"x", []), {}, "metadata must be a dict"),
        (
            ("sensor", b"x", {"metrics": {"auc": float("nan")}}),
            {},
            r"metadata\.metrics\.auc is nan",
        ),
        (("sensor", b"x", {"when": object()}), {}, r"metadata\.when has a object value"),
        (("sensor", b"x", {1: 2}), {}, "non-string key 1"),
        (("sensor", b"x", {}), {"lineage": {"parent": "v42"}}, "has no version v42"),
        (("sensor", b"x", {}), {"lineage": {"run_id": 7}}, r"lineage\.run_id must be a string"),
        (("sensor", b"x", {}), {"lineage": "r1"}, "lineage must be a dict"),
    ],
)
def test_register_validation(
    registry: Registry, ws: Workspace, args: tuple, kwargs: dict, message: str
) -> None:
    tags = git(ws.registry_dir, "tag", "-l")
    with pytest.raises(RegistryError, match=message):
        registry.register(*args, **kwargs)
    assert git(ws.registry_dir, "tag", "-l") == tags
    assert git(ws.registry_dir, "status", "--porcelain") == ""


def test_promote_validation(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="invalid stage 'prod!'"):
        registry.promote("sensor", "v1", "prod!")
    with pytest.raises(RegistryError, match="no version v7"):
        registry.promote("sensor", "v7", "champion")
    with pytest.raises(RegistryError, match="refers to model 'radar'"):
        registry.promote("sensor", "radar@v1", "champion")


def test_failed_push_leaves_no_trace_and_remote_follows_workspace_config(
    tmp_path: Path,
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the remote directory should be")
    config = ws.root / "edgeloop.toml"
    config.write_text(
        config.read_text().replace('remote = "dvc-remote"', f'remote = "{blocker}/remote"')
    )
    ws = Workspace.open(ws.root)
    reg = Registry.for_workspace(ws)
    with pytest.raises(RegistryError, match=r"cannot push .* to the DVC remote"):
        reg.register("radar", tiny_onnx(1.0), {"metrics": {"auc": 0.7}})
    assert reg.list() == []
    assert git(reg.root, "tag", "-l") == ""
    assert git(reg.root, "status", "--porcelain") == ""
    assert not (reg.root / "models" / "radar" / "v1").exists()

    good = tmp_path / "elsewhere" / "remote"
    config.write_text(config.read_text().replace(f"{blocker}/remote", str(good)))
    reg = Registry.for_workspace(Workspace.open(ws.root))
    assert reg.remote == str(good)
    assert "remote" in git(reg.root, "log", "-1", "--format=%s")  # the change is committed
    mv = reg.register("radar", tiny_onnx(1.0), {"metrics": {"auc": 0.7}})
    assert mv.version == "v1"
    assert any(p.is_file() for p in good.rglob("*"))


def test_several_models_and_dvc_yaml(registry: Registry, ws: Workspace) -> None:
    mv = registry.register("radar", tiny_onnx(9.0), {"metrics": {"auc": 0.6}})
    assert mv.ref == "radar@v1"
    assert registry.names() == ["radar", "sensor"]
    assert [v.ref for v in registry.list()][:1] == ["radar@v1"]
    dvc_yaml = (ws.registry_dir / "dvc.yaml").read_text()
    assert "path: models/sensor/v3/model.onnx" in dvc_yaml
    assert "path: models/radar/v1/model.onnx" in dvc_yaml


def test_model_version_to_dict_is_json(registry: Registry) -> None:
    mv: ModelVersion = registry.get("sensor#champion")
    data = json.loads(json.dumps(mv.to_dict()))
    assert data["ref"] == "sensor@v2" and data["stages"] == ["champion"]
    assert data["signature"] == mv.signature


# -- CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli(ws: Workspace, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Any:
    from typer.testing import CliRunner

    from edgeloop_control.cli import models

    monkeypatch.setenv("EDGELOOP_WORKSPACE", str(ws.root))
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(models.app, list(args))

    return invoke


def test_cli_lists_by_default(cli: Any) -> None:
    result = cli("--json")
    assert result.exit_code == 0, result.output
    refs = [row["ref"] for row in json.loads(result.stdout)]
    assert {"sensor@v1", "sensor@v2", "sensor@v3"} <= set(refs)
    table = cli()
    assert table.exit_code == 0 and "sensor@v2" in table.stdout and "champion" in table.stdout
    only = json.loads(cli("ls", "sensor", "--json").stdout)
    assert [r["ref"] for r in only] == ["sensor@v1", "sensor@v2", "sensor@v3"]


def test_cli_show_promote_diff_verify(cli: Any, registry: Registry) -> None:
    shown = cli("show", "sensor#champion", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["ref"] == "sensor@v2"
    assert "sensor@v2" in cli("show", "sensor@v2").stdout

    promoted = cli("promote", "sensor@v1", "canary", "--json")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["stages"]["canary"] == "v1"
    assert registry.stages("sensor")["canary"] == "v1"
    assert cli("demote", "sensor", "canary").exit_code == 0
    assert "canary" not in registry.stages("sensor")

    diff = json.loads(cli("diff", "sensor@v1", "sensor@v2", "--json").stdout)
    assert diff["metrics"]["metrics.auc"]["b"] == 0.84
    assert "metrics.auc" in cli("diff", "sensor@v1", "sensor@v2").stdout

    verified = cli("verify", "sensor@v3")
    assert verified.exit_code == 0 and "OK" in verified.stdout


def test_cli_failure_is_one_clear_line(cli: Any) -> None:
    result = cli("show", "sensor@v9")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no version v9" in lines[0]
    bad = cli("promote", "sensor@v1", "not a stage")
    assert bad.exit_code == 1 and "invalid stage" in bad.stderr


def test_diff_says_whether_metrics_share_a_holdout() -> None:
    from edgeloop_control.registry.diff import metrics_comparable

    same, note = metrics_comparable({"holdout_hash": "h1"}, {"holdout_hash": "h1"})
    assert same is True and "same holdout" in note
    other, note = metrics_comparable(
        {"metrics": {"holdout_hash": "h1"}}, {"metrics": {"holdout_hash": "h2"}}
    )
    assert other is False and "different holdouts" in note
    unknown, note = metrics_comparable({}, {"holdout_hash": "h2"})
    assert unknown is None and "unknown" in note


def test_cli_diff_warns_about_different_holdouts(cli: Any, registry: Registry) -> None:
    out = cli("diff", "sensor@v1", "sensor@v2")
    assert "metrics.auc" in out.stdout
    assert "whether the metrics compare is unknown" in out.stderr


def test_stage_names_have_one_spelling(cli: Any, registry: Registry) -> None:
    """`promote m@v1 Canary` used to create a stage 'Canary' beside 'canary'."""
    assert cli("promote", "sensor@v1", "canary").exit_code == 0
    promoted = cli("promote", "sensor@v3", "Canary")
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stdout.strip() == "sensor@v3 is now canary"
    stages = registry.stages("sensor")
    assert stages["canary"] == "v3" and not any(s != s.lower() for s in stages)
    assert cli("show", "sensor#CANARY", "--json").exit_code == 0
    assert json.loads(cli("show", "sensor#CANARY", "--json").stdout)["ref"] == "sensor@v3"
    assert parse_ref("sensor:Champion").stage == "champion"
    assert cli("demote", "sensor", "CANARY").stdout.strip() == "sensor@v3 is no longer canary"
    assert "canary" not in registry.stages("sensor")
