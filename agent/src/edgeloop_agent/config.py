"""Agent configuration: a TOML file, overridden by command-line flags."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeloop_agent.protocol import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_ROWS,
    MIN_ROW_BYTES,
    min_payload_for,
)
from edgeloop_agent.replypolicy import DEFAULT_REPLY_TOPICS, PolicyError, ReplyPolicy
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.names import check_device_id
from edgeloop_agent.wire.network import BrokerAddress, BrokerAddressError, parse_listen
from edgeloop_agent.wire.topics import DEFAULT_PREFIX, validate_prefix

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """The agent configuration is invalid; the message names the setting."""


@dataclass
class AgentConfig:
    device_id: str = ""
    broker: str = "mqtt://127.0.0.1:1883"
    # With mqtts://: PEM file of the CA that signed the broker's certificate
    # ("": the system's CA store).
    ca_file: str = ""
    # A broker that requires client certificates (Mosquitto require_certificate, the
    # device id as the certificate's CN): this device's certificate and key (PEM).
    cert_file: str = ""
    key_file: str = ""
    # A file holding the broker password (kept out of agent.toml); the user name is
    # the URL's, else the device id. Written by `edgeloop-agent enroll`.
    password_file: str = ""
    state_dir: Path = Path("/var/lib/edgeloop-agent")
    topic_prefix: str = DEFAULT_PREFIX
    # Request limits: a payload over max_payload_bytes is refused unparsed.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    max_batch_rows: int = DEFAULT_MAX_ROWS
    # Update path limits (see docs/protocol.md, desired state): a desired-state
    # message over max_desired_bytes is refused unparsed; an artifact whose
    # declared size is over max_artifact_bytes is never subscribed to, and the
    # broker is told (MQTT 5 Maximum Packet Size) to send nothing bigger. Measured
    # (bench/update_path_memory.py): receiving one N MB message costs the agent
    # about 3.1 x N MB at peak (paho's buffers and copies) on top of ~81 MB, so
    # 64 MB would pass the unit's MemoryMax=256M before onnxruntime saw a byte;
    # 32 MB peaks near 185 MB.
    max_desired_bytes: int = 256 * 1024
    max_artifact_bytes: int = 32 * 1024 * 1024
    # MQTT session: requests queued by the broker while the agent is away
    # survive for this long (MQTT 5 session expiry).
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    reply_qos: int = 1
    # Ed25519 public keys (PEM) that may sign desired state and artifacts. With
    # none, nothing is applied unless allow_unsigned is true (development only;
    # logged as a warning at every start and shown on status).
    trusted_keys: list[Path] = field(default_factory=list)
    require_signature: bool = False
    allow_unsigned: bool = False
    artifact_timeout_s: float = 120.0
    # Seconds to wait for the broker before telling systemd READY anyway.
    ready_grace_s: float = 5.0
    # Micro-batching of the intake: at most this many requests per inference call.
    max_micro_batch: int = 64
    # The intake bound: requests read from the broker and not yet served. Past it
    # the agent stops reading its socket and a burst waits in the broker (~1 KB
    # per queued request here; docs/performance.md).
    max_intake: int = 1024
    inference_threads: int = 1
    # Telemetry and data capture (see docs/telemetry.md).
    telemetry_interval_s: float = 10.0
    capture_rate: float = 0.05
    outbox_max_bytes: int = 64 * 1024 * 1024
    # ~270 bytes per remembered prediction: 20,000 is ~5 MB of the memory budget.
    feedback_window: int = 20_000
    feedback_max_age_s: float = 3600.0
    drift_window: int = 1000
    drift_window_kind: str = "count"
    drift_slide: int | None = None
    log_level: str = "INFO"
    # Prometheus, opt-in (docs/operations.md): a local /metrics endpoint
    # ("127.0.0.1:9108") and/or node_exporter's textfile collector directory.
    metrics_listen: str | None = None
    metrics_textfile_dir: Path | None = None
    # Open Inference Protocol v2 over HTTP, opt-in ("127.0.0.1:8000"): no
    # authentication, so keep it on loopback (docs/protocol.md, docs/security.md).
    http_listen: str | None = None
    # Where replies may go (see replypolicy.py and docs/protocol.md): topic filters
    # under the prefix, with {prefix} and {device} placeholders; topics outside the
    # prefix (never $-topics) are allowed while reply_outside_prefix is true.
    reply_topics: list[str] = field(default_factory=lambda: list(DEFAULT_REPLY_TOPICS))
    reply_outside_prefix: bool = True

    def reply_policy(self) -> ReplyPolicy:
        try:
            return ReplyPolicy(
                prefix=self.topic_prefix,
                device=self.device_id,
                allowed=self.reply_topics,
                outside_prefix=self.reply_outside_prefix,
            )
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None

    def validate(self) -> AgentConfig:
        try:
            check_device_id(self.device_id)
            validate_prefix(self.topic_prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.broker_address  # noqa: B018 - parses the URL and checks ca_file
        positive = (
            "max_payload_bytes",
            "max_batch_rows",
            "max_artifact_bytes",
            "max_desired_bytes",
            "keepalive_s",
            "max_micro_batch",
            "max_intake",
            "inference_threads",
            "outbox_max_bytes",
            "feedback_window",
            "drift_window",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {json_text(getattr(self, name))}")
        need = min_payload_for(self.max_batch_rows)
        if self.max_payload_bytes < need:
            raise ConfigError(
                f"max_batch_rows {self.max_batch_rows} cannot be reached within max_payload_bytes "
                f"{self.max_payload_bytes}: even compact rows ({MIN_ROW_BYTES} bytes each) need "
                f"{need}; raise max_payload_bytes or lower max_batch_rows"
            )
        if self.reply_qos not in (0, 1, 2):
            raise ConfigError(f"reply_qos must be 0, 1 or 2, got {json_text(self.reply_qos)}")
        if not 0.0 <= self.capture_rate <= 1.0:
            raise ConfigError(
                f"capture_rate must be within [0, 1], got {json_text(self.capture_rate)}"
            )
        if self.require_signature and not self.trusted_keys:
            raise ConfigError("require_signature is set but no trusted_keys are configured")
        for what in ("metrics_listen", "http_listen"):
            listen = getattr(self, what)
            if listen is not None:
                try:
                    parse_listen(listen, what)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
        if self.metrics_textfile_dir is not None and not self.metrics_textfile_dir.is_dir():
            raise ConfigError(
                f"metrics_textfile_dir {self.metrics_textfile_dir} is not a directory"
            )
        if self.allow_unsigned and (self.trusted_keys or self.require_signature):
            raise ConfigError(
                "allow_unsigned contradicts trusted_keys/require_signature: "
                "with a trusted key every document must be signed"
            )
        if self.drift_window_kind not in ("count", "time"):
            raise ConfigError(
                "drift_window_kind must be 'count' or 'time', "
                f"got {json_text(self.drift_window_kind)}"
            )
        self._check_drift_window()
        self.reply_policy()  # one clear error for a bad reply policy, at start
        return self

    def _check_drift_window(self) -> None:
        # A count window smaller than the monitor's minimum sample is never judged:
        # every window would say enough_data false, and data drift could not be seen.
        from edgeloop_agent.drift.monitor import DriftConfig

        least = DriftConfig.min_samples
        if self.drift_window_kind == "count" and self.drift_window < least:
            raise ConfigError(
                f"drift_window {self.drift_window} is below the {least} rows the drift "
                f"monitor needs to judge a window: data drift would never be reported; "
                f"use at least {least}"
            )

    @property
    def broker_address(self) -> BrokerAddress:
        try:
            address = (
                BrokerAddress.parse(self.broker)
                .with_ca_file(self.ca_file)
                .with_client_cert(self.cert_file, self.key_file)
            )
        except BrokerAddressError as exc:
            raise ConfigError(str(exc)) from None
        if not self.password_file:
            return address
        try:
            secret = Path(self.password_file).read_text(encoding="utf-8").strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read password_file {self.password_file}: {exc}") from None
        if not secret:
            raise ConfigError(f"password_file {self.password_file} is empty")
        return replace(address, username=address.username or self.device_id, password=secret)

    @classmethod
    def from_file(cls, path: Path) -> AgentConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        config = cls.from_mapping(data, source=str(path))
        # Relative file settings are relative to the config file, so a config and its
        # files move together (/etc/edgeloop, or the unit's credentials directory).
        base = path.parent
        for name in _FILE_SETTINGS:
            value = getattr(config, name)
            if value and not Path(value).is_absolute():
                setattr(config, name, str(base / value))
        config.trusted_keys = [k if k.is_absolute() else base / k for k in config.trusted_keys]
        return config

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "config") -> AgentConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown settings {', '.join(unknown)}")
        cfg = cls()
        for key, value in data.items():
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key), source))
        return cfg

    def override(self, **values: Any) -> AgentConfig:
        for key, value in values.items():
            if value is not None:
                setattr(self, key, _coerce(key, value, getattr(self, key), "command line"))
        return self


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` for setting ``key`` as the setting's type, or ConfigError naming it.

    ``default`` is the setting's current value: settings whose type is not fixed by it
    (lists, optional values) are checked by name, the lists before anything else.
    """
    if key in _LIST_SETTINGS:
        return _LIST_SETTINGS[key](key, value, source)
    if isinstance(default, (Path, bool, int, float)):
        return _coerce_like(key, value, default, source)
    if key in _OPTIONAL_SETTINGS:
        return _OPTIONAL_SETTINGS[key](key, value, source)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, got {json_text(value)}")
    return value


def _coerce_like(key: str, value: Any, default: Path | bool | int | float, source: str) -> Any:
    """``value`` as the type of ``default`` (a path, bool, integer or number)."""
    if isinstance(default, Path):
        return Path(value).expanduser()
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {json_text(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {json_text(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: {key} must be a number, got {json_text(value)}")
    return float(value)


def _trusted_keys(key: str, value: Any, source: str) -> list[Path]:
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{source}: {key} must be a list of paths")
    return [Path(v).expanduser() for v in value]


def _reply_topics(key: str, value: Any, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key} must be a list of topic filters")
    return list(value)


def _directory(key: str, value: Any, source: str) -> Path:
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"{source}: {key} must be a directory path, got {json_text(value)}")
    return Path(value).expanduser()


def _listen(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be host:port, got {json_text(value)}")
    return value


def _optional_int(key: str, value: Any, source: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{source}: {key} must be an integer, got {json_text(value)}")
    return value


_FILE_SETTINGS = ("ca_file", "cert_file", "key_file", "password_file")

# Checked by name: a list's or an optional setting's current value does not say its type.
_LIST_SETTINGS: dict[str, Callable[[str, Any, str], Any]] = {
    "trusted_keys": _trusted_keys,
    "reply_topics": _reply_topics,
}
_OPTIONAL_SETTINGS: dict[str, Callable[[str, Any, str], Any]] = {
    "metrics_textfile_dir": _directory,
    "metrics_listen": _listen,
    "http_listen": _listen,
    "drift_slide": _optional_int,
}
