"""A control-node workspace: one directory holding config, stores and keys.

Resolution order for the workspace directory: explicit ``--workspace/-w``, then
``EDGELOOP_WORKSPACE``, then the current directory. Each store takes a URI or a
path; relative paths are resolved against the workspace root so a workspace can
be moved or copied as a whole.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgeloop_control.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_NAME = "edgeloop.toml"
ENV_WORKSPACE = "EDGELOOP_WORKSPACE"
ENV_BROKER = "EDGELOOP_BROKER"
ENV_CONTROL_DB = "EDGELOOP_CONTROL_DB"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
# The broker password never sits in edgeloop.toml (0644, often copied around):
# it comes from the environment, a systemd credential (LoadCredential=
# broker.password), or a 0600 file the config points to, in that order.
ENV_BROKER_PASSWORD = "EDGELOOP_BROKER_PASSWORD"
CREDENTIAL_NAME = "broker.password"
SECRETS_DIR = ".edgeloop"

log = logging.getLogger("edgeloop.workspace")

CONFIG_TEMPLATE = """\
# edgeloop workspace configuration. Relative paths are relative to this file.

[broker]
url = "{broker}"
topic_prefix = "edgeloop"
# The password (for a user in the URL) is read from ${env}, else the systemd
# credential {cred}, else this file (mode 0600).
{password_line}

[feature_store]
# A directory (Parquet offline store + SQLite catalogue and online store).
uri = "features"

[registry]
# A git + DVC repository; artifacts are pushed to the DVC remote below
# (a local directory by default; any DVC remote URL works).
path = "registry"
remote = "dvc-remote"

[tracking]
# MLflow tracking URI. Empty: use $MLFLOW_TRACKING_URI, else keep runs in the
# workspace (tracking/) and replay them later with `edgeloop runs push --to URI`.
uri = ""

[control]
# The control database: empty for the embedded SQLite file (control.sqlite), or a
# PostgreSQL URL for a larger fleet or several `edgeloop serve` workers
# (docs/scale.md), e.g. "postgresql://edgeloop@db.example/edgeloop". Put the
# password in ~/.pgpass or $PGPASSWORD, not here.
database = ""

[signing]
# Ed25519 key that signs every registered artifact; give signing.pub to agents.
private_key = "keys/signing.key"
public_key = "keys/signing.pub"
"""


class WorkspaceError(ConfigError):
    """The workspace is missing or its configuration is invalid."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    config: dict[str, Any]

    # -- discovery ---------------------------------------------------------

    @classmethod
    def resolve_root(cls, explicit: str | os.PathLike[str] | None = None) -> Path:
        if explicit:
            return Path(explicit).expanduser().resolve()
        env = os.environ.get(ENV_WORKSPACE)
        if env:
            return Path(env).expanduser().resolve()
        return Path.cwd().resolve()

    @classmethod
    def open(cls, explicit: str | os.PathLike[str] | None = None) -> Workspace:
        root = cls.resolve_root(explicit)
        path = root / CONFIG_NAME
        if not path.is_file():
            raise WorkspaceError(
                f"no edgeloop workspace at {root} (missing {CONFIG_NAME}); "
                "run `edgeloop init` there or pass --workspace"
            )
        try:
            config = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise WorkspaceError(f"cannot read {path}: {exc}") from None
        return cls(root=root, config=config)

    @classmethod
    def init(cls, directory: str | os.PathLike[str], *, broker: str | None = None) -> Workspace:
        root = Path(directory).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        path = root / CONFIG_NAME
        if path.exists():
            raise WorkspaceError(f"{root} is already an edgeloop workspace")
        url, password = split_password(broker or DEFAULT_BROKER)
        password_line = f'# password_file = "{SECRETS_DIR}/{CREDENTIAL_NAME}"'
        if password is not None:
            secret = root / SECRETS_DIR / CREDENTIAL_NAME
            write_secret(secret, password)
            password_line = f'password_file = "{SECRETS_DIR}/{CREDENTIAL_NAME}"'
        path.write_text(
            CONFIG_TEMPLATE.format(
                broker=url,
                password_line=password_line,
                env=ENV_BROKER_PASSWORD,
                cred=CREDENTIAL_NAME,
            ),
            encoding="utf-8",
        )
        return cls.open(root)

    # -- settings ----------------------------------------------------------

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name, {})
        if not isinstance(value, dict):
            raise WorkspaceError(f"[{name}] in {CONFIG_NAME} must be a table")
        return value

    def path_setting(self, section: str, key: str, default: str) -> Path:
        raw = self.section(section).get(key, default)
        if not isinstance(raw, str) or not raw:
            raise WorkspaceError(f"{section}.{key} in {CONFIG_NAME} must be a non-empty string")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.root / path

    def broker_url(self, override: str | None = None) -> str:
        """The broker URL to connect with, password included when the URL names a user.

        Never log it: ``BrokerAddress.parse(url)`` prints without credentials.
        """
        configured = self.section("broker").get("url")
        if configured is not None and not isinstance(configured, str):
            raise WorkspaceError(f"broker.url in {CONFIG_NAME} must be a string")
        url = override or os.environ.get(ENV_BROKER) or configured or DEFAULT_BROKER
        if url is configured and split_password(url)[1] is not None:
            _warn_once(
                f"{self.root / CONFIG_NAME} holds the broker password in [broker] url; "
                f"move it to a 0600 file named by [broker] password_file, "
                f"${ENV_BROKER_PASSWORD} or the systemd credential {CREDENTIAL_NAME}"
            )
            return url
        parts = urlsplit(url)
        if parts.username is None or parts.password is not None:
            return url
        password = self.broker_password()
        return url if password is None else with_password(url, password)

    def broker_password(self) -> str | None:
        env = os.environ.get(ENV_BROKER_PASSWORD)
        if env:
            return env
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
            return _read_secret(Path(creds) / CREDENTIAL_NAME, check_mode=False)
        raw = self.section("broker").get("password_file")
        if not raw:
            return None
        if not isinstance(raw, str):
            raise WorkspaceError(f"broker.password_file in {CONFIG_NAME} must be a path")
        path = self.path_setting("broker", "password_file", raw)
        if not path.is_file():
            raise WorkspaceError(f"broker.password_file {path} does not exist")
        return _read_secret(path, check_mode=True)

    @property
    def topic_prefix(self) -> str:
        return str(self.section("broker").get("topic_prefix", "edgeloop"))

    @property
    def feature_store_dir(self) -> Path:
        return self.path_setting("feature_store", "uri", "features")

    @property
    def registry_dir(self) -> Path:
        return self.path_setting("registry", "path", "registry")

    @property
    def registry_remote(self) -> str:
        raw = str(self.section("registry").get("remote", "dvc-remote"))
        # A bare relative path is a local directory remote inside the workspace;
        # anything with a scheme (s3://, ssh://, ...) is passed to DVC untouched.
        if "://" in raw or Path(raw).is_absolute():
            return raw
        return str(self.root / raw)

    @property
    def tracking_uri(self) -> str | None:
        configured = str(self.section("tracking").get("uri", "") or "")
        return configured or os.environ.get("MLFLOW_TRACKING_URI") or None

    @property
    def local_runs_dir(self) -> Path:
        return self.root / "tracking"

    @property
    def signing_key_path(self) -> Path:
        return self.path_setting("signing", "private_key", "keys/signing.key")

    @property
    def public_key_path(self) -> Path:
        return self.path_setting("signing", "public_key", "keys/signing.pub")

    @property
    def state_db(self) -> Path:
        """The embedded control database: a SQLite file in the workspace."""
        return self.root / "control.sqlite"

    @property
    def control_db(self) -> str | Path:
        """Where the control state lives (fleet, events, experiments, rollouts): a
        ``postgresql://`` URL from ``$EDGELOOP_CONTROL_DB`` or ``[control] database``, else
        the embedded SQLite file :attr:`state_db`."""
        configured = self.section("control").get("database", "")
        if not isinstance(configured, str):
            raise WorkspaceError(f"control.database in {CONFIG_NAME} must be a string")
        url = os.environ.get(ENV_CONTROL_DB) or configured
        if not url:
            return self.state_db
        if not url.startswith(("postgresql://", "postgres://")):
            raise WorkspaceError(
                f"control.database in {CONFIG_NAME} must be a postgresql:// URL (or empty for "
                f"the workspace's SQLite file), not {url.split(':', 1)[0]!r}"
            )
        return url


# -- secrets --------------------------------------------------------------------


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (None if it has none)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}")), parts.password


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def write_secret(path: Path, value: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte on (no
    window in which a umask-default file holds the secret)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        os.write(fd, value.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: Path, *, check_mode: bool) -> str:
    if check_mode and stat.S_IMODE(path.stat().st_mode) & 0o077:
        _warn_once(f"{path} is readable by other users; chmod 600 it")
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise WorkspaceError(f"cannot read the broker password from {path}: {exc}") from None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
