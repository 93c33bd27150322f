"""Life under systemd, on a machine where systemd is not running.

- sd_notify as PID 1 sees it: the test binds the AF_UNIX datagram socket NOTIFY_SOCKET
  names and watches a real agent talk to it, with SO_PASSCRED as systemd uses, so each
  message's sender can be checked against NotifyAccess=main.
- Logging: journald only when its socket listens, ``<N>`` prefixes on a journal stream.
- The unit files: ``systemd-analyze verify`` and ``security --offline``, and the
  sandbox's seccomp filters (SystemCallFilter, MemoryDenyWriteExecute,
  RestrictAddressFamilies) rebuilt with libseccomp from the unit's own lines around
  a real agent that loads and serves a model.
- packaging/: the broker config under a real Mosquitto with its ACL and a real agent,
  and the example agent config through the agent's own parser.

Run as ``python -m tests.integration.test_systemd UNIT PROGRAM ARGS...`` this module
is the sandbox launcher: it loads the unit's filters, then execs PROGRAM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import json
import mmap
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import paho.mqtt.client as mqtt
import pytest

from edgeloop_agent.systemd import JOURNAL_SOCKET, journal_available
from tests.mqtt_helpers import VENV_BIN, AgentProcess, Probe
from tests.shipped_broker import ShippedBroker

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
PACKAGING = REPO / "packaging"
DEVICE = "sd-1"
WATCHDOG_USEC = 2_000_000  # WatchdogSec=2s: pings expected every second
READY_GRACE_S = 5.0  # Agent.run(ready_grace_s=5.0)
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")


# -- the notify socket, as PID 1 holds it --------------------------------------------


@dataclass
class Notification:
    at: float  # time.monotonic() on receipt
    pid: int  # sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifyListener:
    """Receives sd_notify datagrams like systemd: one message per datagram, KEY=VALUE lines."""

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 108, f"AF_UNIX path too long: {path}"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.received: list[Notification] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cred_size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, cred_size)
            except OSError:
                return  # closed
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            pairs = (line.partition("=") for line in data.decode().splitlines() if line)
            note = Notification(time.monotonic(), pid, {k: v for k, _, v in pairs})
            with self._cond:
                self.received.append(note)
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Notification], bool], timeout: float) -> Notification:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for note in self.received:
                    if predicate(note):
                        return note
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [n.fields for n in self.received if "WATCHDOG" not in n.fields]
                    raise TimeoutError(f"no matching notification in {timeout} s; got {seen}")
                self._cond.wait(remaining)

    def watchdog_pings(self) -> list[float]:
        with self._cond:
            return [n.at for n in self.received if n.fields.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def has(key: str, value: str | None = None) -> Callable[[Notification], bool]:
    return lambda n: key in n.fields and (value is None or n.fields[key] == value)


def start_agent(
    agents: list[AgentProcess],
    broker_url: str,
    state_dir: Path,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    agent = AgentProcess(broker_url=broker_url, device_id=DEVICE, state_dir=state_dir)
    for key in SYSTEMD_ENV:  # whatever runs pytest may itself be a systemd service
        agent.env.pop(key, None)
    agent.env.update(env or {})
    agents.append(agent.start())
    return agent


def notify_env(listener: NotifyListener) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def drain(probe: Probe, seconds: float) -> list[mqtt.MQTTMessage]:
    """Everything the probe receives within ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            out.append(probe.messages.get(timeout=remaining))
        except queue.Empty:
            break
    return out


def wait_log(agent: AgentProcess, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = agent.log()
        if needle in text:
            return text
        assert agent.alive(), f"agent exited early:\n{text}"
        time.sleep(0.1)
    raise TimeoutError(f"{needle!r} not in the agent's log:\n{agent.log()}")


def send_requests(probe: Probe, ids: list[str], reply_topic: str) -> None:
    """Publish all requests back to back (QoS 1), then wait until the broker has each."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from tests.integration.models import sample_features

    features = sample_features(1)[0]
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    infos = [
        probe.client.publish(
            f"edgeloop/{DEVICE}/predict",
            json.dumps({"id": rid, "features": features}),
            qos=1,
            properties=props,
        )
        for rid in ids
    ]
    for info in infos:
        info.wait_for_publish(10)


# -- the notify protocol ------------------------------------------------------------------


def test_ready_watchdog_status_and_a_clean_stop(broker, probe, agents, tmp_path: Path):
    from tests.integration.models import sensor_model
    from tests.integration.test_agent_e2e import publish_deployment

    status_topic = f"edgeloop/{DEVICE}/status"
    probe.subscribe(status_topic)
    probe.subscribe("replies/#")
    state = tmp_path / "state"
    with NotifyListener(tmp_path / "notify.sock") as pid1:
        agent = start_agent(agents, broker.url, state, notify_env(pid1))
        ready = pid1.wait_for(has("READY"), 30)
        # No model yet: ready once connected, and it says so.
        assert ready.fields == {"READY": "1", "STATUS": "waiting for a model, connected"}
        assert pid1.received[0].fields == {"STATUS": "loading last good model"}
        status = probe.wait_for(status_topic, lambda s: s.get("online") is True, 10)
        assert status["state"] == "no_model"

        v1 = sensor_model("v1")
        publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
        serving = pid1.wait_for(lambda n: n.fields.get("STATUS", "").startswith("serving"), 30)
        assert serving.fields["STATUS"].startswith("serving revision 1: ")
        assert "sensor@v1" in serving.fields["STATUS"]
        assert "READY" not in serving.fields  # READY is sent once

        # Pings at WatchdogSec/2 = 1 s: never closer (one per loop tick would wake
        # PID 1 five times a second) and never further apart than WatchdogSec.
        time.sleep(max(0.0, 4.5 - (time.monotonic() - pid1.received[0].at)))
        pings = pid1.watchdog_pings()
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 3, pings
        assert min(gaps) > 0.9 and max(gaps) < WATCHDOG_USEC / 1e6, gaps

        # Requests the agent has accepted when SIGTERM arrives are answered before it exits.
        drain(probe, 0.2)
        pid = agent.pid
        ids = [f"r{i}" for i in range(300)]
        send_requests(probe, ids, "replies/stop")
        stopped_at = time.monotonic()
        assert agent.stop(timeout=30) == 0
        stop_s = time.monotonic() - stopped_at
        stopping = pid1.wait_for(has("STOPPING"), 5)
        assert stopping.fields == {"STOPPING": "1", "STATUS": "draining"}
        # NotifyAccess=main: systemd would drop a message from any other process.
        assert {n.pid for n in pid1.received} == {pid}

    answered: set[str] = set()
    stopped = {"device": DEVICE, "online": False, "reason": "stopped"}
    while True:  # the offline status is the agent's last word
        msg = probe.next(10)
        if msg.topic == "replies/stop":
            answered.add(json.loads(msg.payload)["id"])
        elif msg.topic == status_topic and msg.payload and json.loads(msg.payload) == stopped:
            break
    assert stop_s < unit_seconds("edgeloop-agent.service", "TimeoutStopSec")
    assert answered and answered <= set(ids)  # here all 300, unless SIGTERM beat delivery

    # Whatever had not reached the agent waits in its persistent session: the next
    # start answers it, and READY now means "serving the last good model".
    with NotifyListener(tmp_path / "notify2.sock") as pid1:
        start_agent(agents, broker.url, state, notify_env(pid1))
        ready = pid1.wait_for(has("READY"), 30)
        assert ready.fields == {"READY": "1", "STATUS": "serving, connected"}
        deadline = time.monotonic() + 20
        while answered != set(ids) and time.monotonic() < deadline:
            for m in drain(probe, 0.5):
                if m.topic == "replies/stop":
                    answered.add(json.loads(m.payload)["id"])
        assert answered == set(ids), f"{len(set(ids) - answered)} requests never answered"


def test_ready_with_the_last_good_model_while_the_broker_is_down(
    broker, probe, agents, tmp_path: Path
):
    from tests.integration.models import sensor_model
    from tests.integration.test_agent_e2e import publish_deployment, wait_status

    state = tmp_path / "state"
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    # First run outside systemd: no NOTIFY_SOCKET, nothing breaks, logs on stderr.
    agent = start_agent(agents, broker.url, state)
    v1 = sensor_model("v1")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    assert agent.stop() == 0
    log = agent.log()
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO edgeloop\.agent: agent ", log, re.M
    )
    assert "Traceback" not in log

    probe.close()
    broker.stop()
    with NotifyListener(tmp_path / "notify.sock") as pid1:
        spawned = time.monotonic()
        agent = start_agent(agents, broker.url, state, notify_env(pid1))
        ready = pid1.wait_for(has("READY"), READY_GRACE_S + 10)
        assert ready.fields["READY"] == "1"
        # Why, in the words of the log line (the broker is stopped: its port refuses).
        assert ready.fields["STATUS"].startswith(
            "serving, broker unreachable: connection refused (is the broker running"
        ), ready.fields
        # Not before the grace period (the broker might still answer), not long after.
        assert READY_GRACE_S <= ready.at - spawned <= READY_GRACE_S + 5
        # The serving loop is alive without a broker: the watchdog keeps being fed.
        time.sleep(1.5)
        assert any(t > ready.at for t in pid1.watchdog_pings())
        # When the broker comes back, STATUS= says so (it used to keep saying
        # "broker unreachable" until the next model swap).
        broker.start()
        back = pid1.wait_for(
            lambda n: (
                n.at > ready.at and "STATUS" in n.fields and "unreachable" not in n.fields["STATUS"]
            ),
            30,
        )
        assert back.fields["STATUS"].startswith("serving")
        broker.stop()
        pid1.wait_for(
            lambda n: n.at > back.at and "broker unreachable" in n.fields.get("STATUS", ""), 60
        )
        stopped_at = time.monotonic()
        assert agent.stop(timeout=30) == 0
        assert time.monotonic() - stopped_at < unit_seconds(
            "edgeloop-agent.service", "TimeoutStopSec"
        )
        pid1.wait_for(has("STOPPING"), 5)


# -- logging ------------------------------------------------------------------------------------

UNREACHABLE = "mqtt://127.0.0.1:1"  # connection refused at once: no broker needed here


REFUSED = "connection refused (is the broker running, and is that its port?)"


def test_an_unreachable_broker_is_said_plainly_in_the_log_and_in_status(agents, tmp_path: Path):
    """The first failure with its reason, then one line per back-off step, not per
    attempt: only the start line used to be logged. paho 2.2 retries a first
    connection after 3, 4 and 8 s, then every 15 s."""
    with NotifyListener(tmp_path / "notify.sock") as pid1:
        agent = start_agent(agents, UNREACHABLE, tmp_path / "state", notify_env(pid1))
        ready = pid1.wait_for(has("READY"), READY_GRACE_S + 10)
        assert ready.fields["STATUS"].startswith(
            f"waiting for a model, broker unreachable: {REFUSED}; "
        ), ready.fields
        # After READY, STATUS= follows each back-off step (the 3rd attempt, ~7 s in).
        step = pid1.wait_for(
            lambda n: n.at > ready.at and "next in 8 s" in n.fields.get("STATUS", ""), 20
        )
        assert f"(broker unreachable: {REFUSED}; 3 attempts, next in 8 s)" in step.fields["STATUS"]
        first = wait_log(agent, "cannot connect to mqtt://127.0.0.1:1: ")
        wait_log(agent, "next attempt in 8 s")
        # ~10 s after the first failure: attempts at about 0, 3 and 7 s, none due before 15.
        time.sleep(3.0)
        assert agent.stop() == 0
    assert first
    lines = [ln for ln in agent.log().splitlines() if "connect to mqtt://127.0.0.1:1" in ln]
    assert lines[0].endswith(
        f"WARNING edgeloop.agent.mqtt: cannot connect to mqtt://127.0.0.1:1: {REFUSED}; "
        "retrying in 3 s"
    ), lines
    assert [ln.rsplit("; ", 1)[-1] for ln in lines] == [
        "retrying in 3 s",
        "next attempt in 4 s",
        "next attempt in 8 s",
    ], lines
    assert re.search(r"yet: .* \(3 attempts in [78] s\); next attempt in 8 s$", lines[-1]), lines


def test_journal_variables_without_journald_log_to_stderr(agents, tmp_path: Path):
    if journal_available():
        pytest.skip("a journald listens on this machine")
    agent = start_agent(
        agents,
        UNREACHABLE,
        tmp_path / "state",
        {"JOURNAL_STREAM": "1:2", "INVOCATION_ID": uuid.uuid4().hex},
    )
    wait_log(agent, "edgeloop.agent: agent ")
    assert agent.stop() == 0
    log = agent.log()
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO edgeloop\.agent: agent ", log, re.M)
    assert "Traceback" not in log and "Logging error" not in log


def test_journal_stream_gets_priority_prefixes(tmp_path: Path):
    """stderr connected to journald (as JOURNAL_STREAM says): <N> prefixes, no timestamps."""
    if journal_available():
        pytest.skip("a journald listens on this machine: the JournalHandler is used")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(theirs.fileno())
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    args = [str(VENV_BIN / "edgeloop-agent"), "--broker", UNREACHABLE, "--device-id", DEVICE]
    args += ["--state-dir", str(tmp_path / "state")]
    proc = subprocess.Popen(args, stdout=theirs, stderr=theirs, env=env)
    theirs.close()
    try:
        ours.settimeout(20)
        text = b""
        while b"edgeloop.agent: agent " not in text:
            chunk = ours.recv(65536)
            assert chunk, f"agent closed stderr early:\n{text.decode()}"
            text += chunk
        proc.send_signal(signal.SIGTERM)
        while chunk := ours.recv(65536):
            text += chunk
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        ours.close()
    lines = text.decode().splitlines()
    assert any(line.startswith("<6>edgeloop.agent: agent ") for line in lines), lines
    assert any(line.startswith("<6>edgeloop.agent: stopping") for line in lines), lines
    assert not [line for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)], lines


@pytest.fixture
def fake_journald() -> Iterator[socket.socket]:
    """A datagram socket where libsystemd sends journal entries, if this machine has none."""
    path = Path(JOURNAL_SOCKET)
    if path.exists():
        pytest.skip(f"{path} exists (a real journald)")
    created = [d for d in (path.parent.parent, path.parent) if not d.exists()]
    try:
        for d in created:
            d.mkdir()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
    except OSError as exc:
        for d in reversed(created):
            d.rmdir()
        pytest.skip(f"cannot create {path}: {exc}")
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        for d in reversed(created):
            d.rmdir()


def test_journald_gets_native_entries_when_it_listens(fake_journald, agents, tmp_path: Path):
    agent = start_agent(
        agents, UNREACHABLE, tmp_path / "state", {"INVOCATION_ID": uuid.uuid4().hex}
    )
    fake_journald.settimeout(20)
    entries: list[bytes] = []
    while not any(b"MESSAGE=edgeloop.agent: agent " in e for e in entries):
        entries.append(fake_journald.recv(65536))
    assert agent.stop() == 0
    entry = next(e for e in entries if b"MESSAGE=edgeloop.agent: agent " in e)
    assert b"\nSYSLOG_IDENTIFIER=edgeloop-agent\n" in entry
    assert b"\nPRIORITY=6\n" in entry
    assert "edgeloop.agent: agent " not in agent.log()  # not duplicated on stderr


# -- the unit files ------------------------------------------------------------------------------


def unit_lines(name: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; the units use no line continuations."""
    out, section = [], ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(name: str, key: str) -> list[str]:
    return [v for s, k, v in unit_lines(name) if s == "Service" and k == key]


def unit_seconds(name: str, key: str) -> float:
    (value,) = unit_values(name, key)
    units = {"s": 1, "min": 60, "ms": 0.001}
    m = re.fullmatch(r"(\d+)(s|min|ms)?", value)
    assert m, value
    return int(m.group(1)) * units[m.group(2) or "s"]


def installable_copy(name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this virtualenv (verify checks the binary exists)."""
    text = (UNITS / name).read_text()
    text, n = re.subn(r"^ExecStart=/usr/local/bin/", f"ExecStart={VENV_BIN}/", text, flags=re.M)
    assert n == 1
    copy = tmp_path / name
    copy.write_text(text)
    return copy


UNIT_FILES = ["edgeloop-agent.service", "edgeloop-control.service"]


@pytest.mark.parametrize("name", UNIT_FILES)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(installable_copy(name, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning


@pytest.mark.parametrize("name", UNIT_FILES)
def test_unit_security_exposure_is_at_most_2(name: str, tmp_path: Path):
    result = subprocess.run(
        [
            *("systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager"),
            str(installable_copy(name, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert m, result.stdout
    assert float(m.group(1)) <= 2.0
    # docs/operations.md quotes the figure; keep it true.
    docs = (REPO / "docs" / "operations.md").read_text()
    assert f"Overall exposure level for {name}: {m.group(1)}" in docs


# -- the sandbox's seccomp filters, rebuilt from the unit ------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 4, 5, 7
SHM_EXEC = 0o100000


# (action, syscall name, argument comparisons (arg, op, datum_a, datum_b))
Rule = tuple[int, str, tuple[tuple[int, int, int, int], ...]]


def scmp_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class Seccomp:
    """The few libseccomp calls systemd's own filters are made of."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        )
        lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        self.lib = lib

    def load(self, default: int, rules: list[Rule]) -> None:
        ctx = self.lib.seccomp_init(default)  # native architecture only, NNP set on load
        try:
            for action, name, cmps in rules:
                nr = self.lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:
                    continue  # not a syscall on this architecture (mmap2, riscv_*, ...)
                arr = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
                self.lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            rc = self.lib.seccomp_load(ctx)
            if rc != 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def expand_syscall_group(group: str) -> set[str]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", group],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:  # the first line repeats the group's name
        word = line.strip()
        if word and not word.startswith("#"):
            names |= expand_syscall_group(word) if word.startswith("@") else {word}
    return names


def sandbox_exec(unit: str, argv: list[str]) -> NoReturn:
    """Load what systemd would for ``unit``'s seccomp settings, then exec ``argv``.

    Same order as systemd: the architecture, W^X and address-family filters first,
    the system call allow-list last (it forbids seccomp() itself).
    """
    values = {key: unit_values(unit, key) for key in ("MemoryDenyWriteExecute",)}
    sc = Seccomp()
    rules: list[Rule] = []
    if values["MemoryDenyWriteExecute"] == ["yes"]:
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        x = mmap.PROT_EXEC
        deny = scmp_errno(errno.EPERM)
        rules += [
            (deny, "mmap", ((2, SCMP_CMP_MASKED_EQ, wx, wx),)),
            (deny, "mprotect", ((2, SCMP_CMP_MASKED_EQ, x, x),)),
            (deny, "pkey_mprotect", ((2, SCMP_CMP_MASKED_EQ, x, x),)),
            (deny, "shmat", ((2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC),)),
        ]
    (families,) = unit_values(unit, "RestrictAddressFamilies")
    allowed_af = {int(getattr(socket, name)) for name in families.split()}
    no_af = scmp_errno(errno.EAFNOSUPPORT)
    rules += [
        (no_af, "socket", ((0, SCMP_CMP_EQ, af, 0),)) for af in range(64) if af not in allowed_af
    ]
    rules.append((no_af, "socket", ((0, SCMP_CMP_GE, 64, 0),)))
    sc.load(SCMP_ACT_ALLOW, rules)

    # SystemCallFilter: an allow-list (with @default implied), "~" lines remove from it.
    entries = unit_values(unit, "SystemCallFilter")
    assert entries and not entries[0].startswith("~"), "only allow-lists are modelled"
    allowed = expand_syscall_group("@default")
    for entry in entries:
        names = entry.removeprefix("~").split()
        group = set().union(*(expand_syscall_group(n) if n[0] == "@" else {n} for n in names))
        allowed = allowed - group if entry.startswith("~") else allowed | group
    (errno_name,) = unit_values(unit, "SystemCallErrorNumber") or ["kill"]
    kill = errno_name == "kill"
    refuse = SCMP_ACT_KILL_PROCESS if kill else scmp_errno(getattr(errno, errno_name))
    sc.load(refuse, [(SCMP_ACT_ALLOW, name, ()) for name in sorted(allowed)])
    os.execv(argv[0], argv)


def sandboxed(unit: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.integration.test_systemd", unit, *argv]


def sandbox_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


needs_seccomp = pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None, reason="libseccomp is not installed"
)

CHECK_SANDBOX = """
import json, mmap, os, socket
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx"] = "allowed"
except OSError as e:
    out["wx"] = e.errno
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    out["netlink"] = "allowed"
except OSError as e:
    out["netlink"] = e.errno
try:
    os.sched_setaffinity(0, {0})
    out["setaffinity"] = "allowed"
except OSError as e:
    out["setaffinity"] = e.errno
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
print(json.dumps(out))
"""


@needs_seccomp
def test_sandbox_filters_bite():
    """The rebuilt filters refuse what the unit forbids, so the next test means something."""
    result = subprocess.run(
        sandboxed("edgeloop-agent.service", [sys.executable, "-c", CHECK_SANDBOX]),
        capture_output=True,
        text=True,
        env={**os.environ, **sandbox_env()},
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "wx": errno.EPERM,  # MemoryDenyWriteExecute
        "netlink": errno.EAFNOSUPPORT,  # RestrictAddressFamilies
        "setaffinity": errno.EPERM,  # SystemCallFilter=~@resources
    }


@needs_seccomp
def test_agent_serves_inside_the_units_seccomp_sandbox(broker, probe, agents, tmp_path: Path):
    from tests.integration.models import sample_features, sensor_model
    from tests.integration.test_agent_e2e import publish_deployment, request, wait_status

    state = tmp_path / "state"
    agent = AgentProcess(broker_url=broker.url, device_id="pump-1", state_dir=state)
    agent.args = sandboxed("edgeloop-agent.service", agent.args)
    agent.env.update(sandbox_env())
    agents.append(agent.start())

    probe.subscribe("edgeloop/pump-1/status")
    probe.subscribe("replies/#")
    v1 = sensor_model("v1")
    publish_deployment(probe, "pump-1", 1, [(v1, v1.entry())])
    wait_status(probe, "pump-1", lambda s: s.get("revision") == 1)
    rows = sample_features(50, seed=3)
    assert len(request(probe, {"id": "batch", "rows": rows})["predictions"]) == 50
    assert "prediction" in request(probe, {"id": "one", "features": rows[0]})

    # Peak resident memory against the unit's MemoryMax, with room to spare.
    status = Path(f"/proc/{agent.pid}/status").read_text()
    peak_kb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))
    (limit,) = unit_values("edgeloop-agent.service", "MemoryMax")
    assert limit.endswith("M")
    assert peak_kb * 1024 < 0.75 * int(limit[:-1]) * 1024 * 1024, f"peak {peak_kb} kB"
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()


# -- packaging: the broker config ----------------------------------------------------------------


class AuthProbe(Probe):
    """A Probe that logs in with a user name and password; ``accepted`` says how it went."""

    def __init__(self, port: int, user: str | None, password: str | None = None) -> None:
        super().__init__(
            f"mqtt://127.0.0.1:{port}",
            client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
            username=user,
            password=password,
            require_accept=False,
        )


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    """Mosquitto with packaging/mosquitto-edgeloop.conf and packaging/edgeloop.acl."""
    users = ["pump-1", "pump-2", "edgeloop-control", "app-dashboard"]
    broker = ShippedBroker(tmp_path / "site-broker", users).start()
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_config_authenticates_and_confines_devices(site_broker, agents, tmp_path: Path):
    from tests.integration.models import sample_features, sensor_model
    from tests.integration.test_agent_e2e import publish_deployment

    port = site_broker.port
    clients: list[AuthProbe] = []

    def login(user: str | None, password: str | None = None) -> AuthProbe:
        clients.append(AuthProbe(port, user, password))
        return clients[-1]

    try:
        assert not login(None).accepted  # allow_anonymous false
        assert not login("pump-1", "wrong").accepted
        control = login("edgeloop-control", "pw-edgeloop-control")
        app = login("app-dashboard", "pw-app-dashboard")
        intruder = login("pump-2", "pw-pump-2")
        assert control.accepted and app.accepted and intruder.accepted

        # A real agent logs in with the password in its broker URL and is served its model.
        agent = AgentProcess(
            broker_url=f"mqtt://pump-1:pw-pump-1@127.0.0.1:{port}",
            device_id="pump-1",
            state_dir=tmp_path / "state",
        )
        agents.append(agent.start())
        control.subscribe("edgeloop/pump-1/status")
        v1 = sensor_model("v1")
        publish_deployment(control, "pump-1", 1, [(v1, v1.entry())])
        control.wait_for("edgeloop/pump-1/status", lambda s: s.get("revision") == 1, 30)

        # The app's reply topic lies under the device's subtree, as the ACL asks.
        reply_topic = "edgeloop/pump-1/replies/app-dashboard/1"
        app.subscribe(reply_topic)
        app.publish(
            "edgeloop/pump-1/predict",
            {"id": "acl", "features": sample_features(1)[0]},
            response_topic=reply_topic,
        )
        assert "prediction" in json.loads(app.next(10, topic=reply_topic).payload)

        # Another device reads nothing of pump-1's and cannot plant an artifact.
        # Mosquitto 2.0 grants the subscription but checks the ACL on every delivery:
        # neither the retained status/desired nor a new request reaches pump-2.
        intruder.subscribe("edgeloop/pump-1/#")
        app.publish("edgeloop/pump-1/predict", {"id": "x", "features": sample_features(1)[0]})
        assert drain(intruder, 1.0) == []
        control.subscribe("edgeloop/models/#")
        drain(control, 0.5)  # the retained artifact
        intruder.publish("edgeloop/models/sensor/evil", b"not onnx", retain=True)
        control.publish("edgeloop/models/sensor/probe", b"from control")
        got = [m.topic for m in drain(control, 1.0) if m.topic.startswith("edgeloop/models/")]
        assert got == ["edgeloop/models/sensor/probe"]
        assert agent.stop() == 0
    finally:
        for c in clients:
            c.close()


# -- packaging: the example agent config ---------------------------------------------------------


def test_example_agent_config_lists_every_setting_with_true_defaults(tmp_path: Path):
    from edgeloop_agent.config import AgentConfig, tomllib

    text = (PACKAGING / "edgeloop-agent.toml").read_text()
    active = AgentConfig.from_file(PACKAGING / "edgeloop-agent.toml").validate()
    assert active.require_signature and active.trusted_keys

    # Every commented-out "# key = value" line, uncommented, must parse too...
    commented = re.findall(r"^# (\w+ = .+)$", text, re.M)
    full = tmp_path / "full.toml"
    full.write_text(text + "\n" + "\n".join(commented) + "\n")
    AgentConfig.from_file(full).validate()
    # ...show the real default (settings that are off by default, None, show an
    # example instead)...
    defaults = AgentConfig()
    for line in commented:
        key = line.split(" = ")[0]
        if getattr(defaults, key) is None:
            continue
        value = getattr(AgentConfig.from_mapping(tomllib.loads(line)), key)
        assert value == getattr(defaults, key), line
    # ...and together the two cover every setting the agent has.
    listed = set(re.findall(r"^(?:# )?(\w+) = ", text, re.M))
    assert listed == {f.name for f in fields(AgentConfig)}


if __name__ == "__main__":
    sandbox_exec(sys.argv[1], sys.argv[2:])
