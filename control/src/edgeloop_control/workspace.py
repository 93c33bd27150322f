"""A control-node workspace: one directory holding config, stores and keys.

Resolution order for the workspace directory: explicit ``--workspace/-w``, then
``EDGELOOP_WORKSPACE``, then the current directory. Each store takes a URI or a
path; relative paths are resolved against the workspace root so a workspace can
be moved or copied as a whole.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_NAME = "edgeloop.toml"
ENV_WORKSPACE = "EDGELOOP_WORKSPACE"
ENV_BROKER = "EDGELOOP_BROKER"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

CONFIG_TEMPLATE = """\
# edgeloop workspace configuration. Relative paths are relative to this file.

[broker]
url = "{broker}"
topic_prefix = "edgeloop"

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

[signing]
# Ed25519 key that signs every registered artifact; give signing.pub to agents.
private_key = "keys/signing.key"
public_key = "keys/signing.pub"
"""


class WorkspaceError(Exception):
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
        path.write_text(CONFIG_TEMPLATE.format(broker=broker or DEFAULT_BROKER), encoding="utf-8")
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
        return (
            override
            or os.environ.get(ENV_BROKER)
            or self.section("broker").get("url")
            or DEFAULT_BROKER
        )

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
        """SQLite database of the control daemon (fleet, events, experiments, rollouts)."""
        return self.root / "control.sqlite"
