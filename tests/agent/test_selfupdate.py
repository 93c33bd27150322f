"""The agent's self-update bookkeeping on real files (selfupdate.py), no broker.

The fetch itself runs against a real Mosquitto in tests/integration/test_selfupdate.py
and the one-shot under systemd in tests/system/test_deb_selfupdate.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest

from edgeloop_agent.selfinstall import Refused, verify
from edgeloop_agent.selfupdate import RESULT_FILE, SelfUpdate
from edgeloop_agent.wire.agentpackage import AgentPackage

SHA = "ef" * 32
PKG = AgentPackage("1.1.0", "amd64", SHA, 10_000, 4096)


def updater(spool: Path) -> SelfUpdate:
    return SelfUpdate(
        prefix="edgeloop", spool=spool, chunk_timeout_s=5, version="1.0.0", architecture="amd64"
    )


def no_broker(_topic: str) -> None:
    raise AssertionError("nothing may be fetched")


def write_result(spool: Path, **doc: object) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    (spool / RESULT_FILE).write_text(json.dumps({"ts": time.time(), **doc}))


def test_a_package_the_one_shot_rolled_back_is_not_asked_for_again(tmp_path: Path):
    spool = tmp_path / "update"
    write_result(spool, state="rolled_back", version="1.1.0", sha256=SHA, reason="exited")
    su = updater(spool)
    su.handle(PKG, b"{}", subscribe=no_broker, unsubscribe=no_broker, beat=lambda: None)
    assert not (spool / "request.json").exists()
    status = su.status()
    assert status["state"] == "rolled_back" and status["reason"] == "exited"
    assert status["running"] == "1.0.0"


def test_the_running_version_and_no_entry_ask_for_nothing(tmp_path: Path):
    su = updater(tmp_path / "update")
    same = AgentPackage("1.0.0", "amd64", SHA, 10_000, 4096)
    for pkg in (None, same):
        su.handle(pkg, b"{}", subscribe=no_broker, unsubscribe=no_broker, beat=lambda: None)
    assert su.status()["state"] == "idle"
    assert not (tmp_path / "update").exists()


def test_the_one_shots_verdict_is_noticed_once_and_reported(tmp_path: Path):
    spool = tmp_path / "update"
    su = updater(spool)
    assert not su.result_changed()
    write_result(spool, state="installing", version="1.1.0", sha256=SHA)
    assert su.result_changed() and not su.result_changed()
    time.sleep(0.01)
    write_result(spool, state="done", version="1.1.0", sha256=SHA, extra="x" * 10)
    assert su.result_changed()
    assert su.status()["state"] == "done"


def test_an_unreadable_result_is_reported_not_raised(tmp_path: Path):
    spool = tmp_path / "update"
    spool.mkdir()
    (spool / RESULT_FILE).write_text("{not json")
    status = updater(spool).status()
    assert status["state"] == "unknown" and RESULT_FILE in status["reason"]


def test_a_half_fetched_package_is_removed_at_start(tmp_path: Path):
    spool = tmp_path / "update"
    spool.mkdir()
    (spool / ".0123456789abcdef.part").write_bytes(b"half")
    (spool / RESULT_FILE).write_text("{}")
    updater(spool)
    assert sorted(p.name for p in spool.iterdir()) == [RESULT_FILE]


def _request(
    tmp_path: Path, data: bytes, *, device: str, expires: float, agent: bool, revision: int = 3
) -> Path:
    from edgeloop_control.infra.signing import generate_keypair, load_signing_key
    from tests.integration.signed import envelope

    if not (tmp_path / "k.key").exists():
        generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    key = load_signing_key(tmp_path / "k.key")
    model = {"name": "m", "version": "v1", "sha256": "ab" * 32, "size": 10, "signature": None}
    extra = {}
    if agent:
        extra["agent"] = {
            "version": "1.1.0",
            "architecture": "amd64",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    raw = envelope(device, revision, [model], [key], expires=expires, **extra)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"envelope": base64.b64encode(raw).decode()}))
    (tmp_path / "agent.toml").write_text('device_id = "self-1"\ntrusted_keys = ["k.pub"]\n')
    return request


@pytest.mark.parametrize(
    ("device", "expires_in", "agent", "needle"),
    [
        ("other-1", 600, True, 'is for "other-1", not "self-1"'),
        ("self-1", -1, True, "expired"),
        ("self-1", 600, False, "names no agent package"),
    ],
)
def test_the_one_shots_check_refuses_what_the_control_key_did_not_sign_for_this_device(
    tmp_path: Path, device: str, expires_in: float, agent: bool, needle: str
):
    data = b"package bytes"
    deb = tmp_path / "p.deb"
    deb.write_bytes(data)
    request = _request(tmp_path, data, device=device, expires=time.time() + expires_in, agent=agent)
    with pytest.raises(Refused, match=needle):
        verify(request, deb, tmp_path / "agent.toml", time.time())


def test_the_one_shots_check_refuses_a_replayed_older_document(tmp_path: Path):
    data = b"package bytes"
    deb = tmp_path / "p.deb"
    deb.write_bytes(data)
    accepted = tmp_path / "accepted.json"
    config = tmp_path / "agent.toml"
    later = _request(tmp_path, data, device="self-1", expires=time.time() + 600, agent=True)
    assert verify(later, deb, config, time.time(), accepted) == ("1.1.0", "amd64")
    assert verify(later, deb, config, time.time(), accepted)  # the same one again: a retry
    older = _request(
        tmp_path, data, device="self-1", expires=time.time() + 600, agent=True, revision=2
    )
    with pytest.raises(Refused, match="revision 2 is older than revision 3"):
        verify(older, deb, config, time.time(), accepted)
