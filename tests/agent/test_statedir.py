"""The agent's state directory: verified artifacts and a last deployment that may be damaged."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from edgeloop_agent.statedir import ArtifactError, StateDir


def test_artifacts_are_verified_on_the_way_in_and_out(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    data = b"onnx bytes"
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(ArtifactError) as err:
        state.store_artifact("m", "v1", "0" * 64, data)
    assert err.value.code == "artifact_sha256_mismatch"
    path = state.store_artifact("m", "v1", sha, data)
    assert state.read_artifact("m", "v1", sha) == data
    path.write_bytes(b"rotted")
    with pytest.raises(ArtifactError) as err:
        state.read_artifact("m", "v1", sha)
    assert err.value.code == "artifact_corrupt"


def test_a_damaged_deployment_file_is_reported_and_ignored(tmp_path: Path, caplog) -> None:
    state = StateDir(tmp_path)
    assert state.load_deployment() is None
    state.save_deployment({"revision": 3})
    assert state.load_deployment() == {"revision": 3}
    (tmp_path / "deployment.json").write_text('{"revision": 3')
    with caplog.at_level(logging.ERROR, logger="edgeloop.agent.state"):
        assert state.load_deployment() is None
    assert "deployment.json" in caplog.text
