"""The model registry: a git + DVC repository whose versions and stages are GTO tags.

Layout of the repository (see docs/registry.md)::

    models/<name>/v<N>/model.onnx.dvc   DVC pointer to the artifact (the bytes live
                                        in the DVC cache and on the DVC remote)
    models/<name>/v<N>/metadata.json    sha256, signature, lineage, caller metadata
    dvc.yaml                            DVC/GTO annotation of each model's latest path
    tags  <name>@v<N>.0.0               version registration (GTO format)
          <name>#<stage>#<k>            stage assignment (champion, challenger, ...)
          <name>#<stage>!#<k>           stage unassignment

The tags are the source of truth for versions and stages; metadata is always
read from the tagged commit, never from the working tree, so a local edit
cannot change what a version claims to be.

:class:`Registry` is the entry point; the parts it uses:

    tagstate.py       versions and stages as the tags say; resolving a reference
    versionrecord.py  metadata.json: written at registration, read into ModelVersion
    lineage.py        checking and normalising a new version's lineage; links to
                      MLflow runs made after registration (tracking.json, read at HEAD)
    worktree.py       writer lock, clean tree, rollback, dvc.yaml
    tags.py, refs.py  GTO tag names; version and stage references
    gitrepo.py, dvcstore.py  git and DVC
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop_agent.wire.names import InvalidName, check_model_name
from edgeloop_agent.wire.signature import SignatureError
from edgeloop_control.infra import signing
from edgeloop_control.registry import dvcstore
from edgeloop_control.registry.diff import diff_versions
from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.gitrepo import GitRepo
from edgeloop_control.registry.lineage import (
    add_link,
    check_lineage,
    links_path,
    public_uri,
    with_links,
)
from edgeloop_control.registry.model import (
    ARTIFACT_NAME,
    RECORD_NAME,
    ModelVersion,
    to_json_value,
)
from edgeloop_control.registry.refs import (
    Ref,
    check_name,
    check_stage,
    parse_ref,
    short_version,
)
from edgeloop_control.registry.tags import (
    assign_tag,
    register_tag,
    unassign_tag,
)
from edgeloop_control.registry.tagstate import (
    ModelTags,
    Semver,
    read_models,
    resolve,
    tag_time,
)
from edgeloop_control.registry.versionrecord import new_record, version_from_record
from edgeloop_control.registry.worktree import (
    ensure_clean,
    next_major,
    rollback,
    write_dvc_yaml,
    writer_lock,
)

if TYPE_CHECKING:
    from edgeloop_control.infra.workspace import Workspace

# Stages a version gives up when it is promoted to the key stage.
EXCLUSIVE_STAGES: dict[str, tuple[str, ...]] = {"champion": ("challenger",)}

_README = """\
# edgeloop model registry

Managed by `edgeloop models`; see docs/registry.md in the edgeloop repository.
Versions are git tags `NAME@vX.Y.Z`, stages are tags `NAME#STAGE#N` (GTO format).
Artifacts are DVC-tracked: `git checkout NAME@vX.Y.Z && dvc pull` restores one.
"""


class Registry:
    """Open an existing registry; use :meth:`init` or :meth:`for_workspace` to create one."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        signing_key: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not (self.root / ".git").exists() or not (self.root / ".dvc").is_dir():
            raise RegistryError(
                f"no model registry at {self.root} (expected a git + DVC repository); "
                "it is created on the first registration"
            )
        # Defaults mirror the workspace layout (registry/ next to keys/).
        self.signing_key_path = Path(signing_key or self.root.parent / "keys" / "signing.key")
        self.public_key_path = Path(public_key or self.root.parent / "keys" / "signing.pub")
        self.git = GitRepo(self.root)
        self.git.ensure_identity()

    # -- creation ------------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: str | os.PathLike[str],
        remote: str,
        *,
        signing_key: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
    ) -> Registry:
        """Create a registry at ``root`` pushing artifacts to the DVC ``remote`` (path or URL)."""
        path = Path(root).expanduser().resolve()
        if not isinstance(remote, str) or not remote.strip():
            raise RegistryError(f"registry remote must be a DVC remote URL or path, got {remote!r}")
        if path.exists() and any(path.iterdir()):
            raise RegistryError(f"cannot create a registry at {path}: the directory is not empty")
        git = GitRepo(path)
        git.init()
        dvcstore.init(path, _remote_url(remote))
        (path / "README.md").write_text(_README, encoding="utf-8")
        git.add([".dvc/config", ".dvc/.gitignore", ".dvcignore", "README.md"])
        git.commit("Initialise edgeloop model registry")
        return cls(path, signing_key=signing_key, public_key=public_key)

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        signing_key: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
    ) -> Registry:
        return cls(root, signing_key=signing_key, public_key=public_key)

    @classmethod
    def for_workspace(
        cls, ws: Workspace, *, create: bool = True, sync_remote: bool | None = None
    ) -> Registry:
        """The workspace's registry with the workspace's key paths.

        ``create``: initialise it on first use (else a missing registry is an
        error). ``sync_remote`` (default: same as ``create``): point the registry at
        the workspace's configured DVC remote, committing the change; read-only
        callers skip it, which also spares them DVC's import time.
        """
        keys = {"signing_key": ws.signing_key_path, "public_key": ws.public_key_path}
        root = ws.registry_dir
        if not (root / ".dvc").is_dir():
            if not create:
                raise RegistryError(f"no model registry at {root} yet; register a model first")
            return cls.init(root, ws.registry_remote, **keys)
        registry = cls(root, **keys)
        if (create if sync_remote is None else sync_remote) and registry.remote != _remote_url(
            ws.registry_remote
        ):
            registry.set_remote(ws.registry_remote)
        return registry

    # -- configuration -------------------------------------------------------

    @property
    def remote(self) -> str | None:
        return dvcstore.remote_url(self.root)

    def set_remote(self, url: str) -> None:
        """Point the registry at another DVC remote (committed in ``.dvc/config``)."""
        with self._lock():
            url = _remote_url(url)
            dvcstore.set_remote(self.root, url)
            if self.git.run("diff", "--quiet", "--", ".dvc/config", check=False).returncode:
                self.git.commit(f"Use DVC remote {url}", [".dvc/config"])

    def head_commit(self) -> str:
        """The registry's current git commit, for tagging training runs."""
        head = self.git.head()
        if head is None:
            raise RegistryError(f"registry at {self.root} has no commits")
        return head

    # -- writing ---------------------------------------------------------------

    def register(
        self,
        name: str,
        onnx_bytes: bytes,
        metadata: dict[str, Any],
        *,
        lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Store, sign, commit, push and tag a new version (the next major: v1, v2, ...).

        All or nothing: if any step after the first write fails (dvc add/push,
        commit, tag), the repository is put back where it was (working tree,
        index, branch, tags), so no half-registered model remains.
        """
        name = _check_model_name(name)
        if not isinstance(onnx_bytes, (bytes, bytearray, memoryview)):
            raise RegistryError(f"onnx_bytes must be bytes, got {type(onnx_bytes).__name__}")
        data = bytes(onnx_bytes)
        if not data:
            raise RegistryError(f"refusing to register an empty artifact for model {name!r}")
        if not isinstance(metadata, dict):
            raise RegistryError(f"metadata must be a dict, got {type(metadata).__name__}")
        meta = to_json_value(metadata, "metadata")

        with self._lock():
            models = self._models()
            model = models.get(name, ModelTags())
            lin = check_lineage(name, lineage, model, self._model)
            major = next_major(self.git, name, model)
            semver: Semver = (major, 0, 0)
            vdir = f"models/{name}/{short_version(semver)}"
            ensure_clean(self.root, self.git, vdir)

            try:
                key = signing.ensure_keypair(self.signing_key_path, self.public_key_path)
            except signing.SigningError as exc:
                raise RegistryError(f"cannot sign {name}: {exc}") from None
            record = new_record(name, semver, data, key, lin, meta)
            target = self.root / vdir
            before = self.git.head()
            target.mkdir(parents=True)
            try:
                (target / ARTIFACT_NAME).write_bytes(data)
                (target / RECORD_NAME).write_text(
                    json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n",
                    encoding="utf-8",
                )
                dvcstore.add_and_push(self.root, f"{vdir}/{ARTIFACT_NAME}")
                latest = {n: v for n, m in models.items() if (v := m.latest()) is not None}
                latest[name] = semver
                write_dvc_yaml(self.root, latest)
                paths = [
                    f"{vdir}/{ARTIFACT_NAME}.dvc",
                    f"{vdir}/{RECORD_NAME}",
                    f"{vdir}/.gitignore",
                    "dvc.yaml",
                ]
                self.git.add(paths)
                commit = self.git.commit(
                    f"Register {name} {short_version(semver)} "
                    f"(sha256 {record['artifact']['sha256'][:12]})",
                    paths,
                )
                tag, message = register_tag(name, semver)
                self.git.tag(tag, commit, message, timestamp=tag_time(model))
            except BaseException:
                rollback(self.root, self.git, before, vdir)
                raise
        return self.get(f"{name}@{short_version(semver)}")

    def promote(self, name: str, version: str, stage: str) -> ModelVersion:
        """Assign ``stage`` (e.g. champion, challenger) to a version, moving it off the
        version that held it. A no-op if the version already holds the stage.

        Promoting the challenger to champion also ends its challenger stage: an A/B
        comparison of a version with itself is never what anyone wants.
        """
        name, stage = _check_model_name(name), check_stage(stage)
        with self._lock():
            model = self._model(name)
            semver = self._resolve(name, model, _version_ref(name, version))
            made: builtins.list[str] = []
            if model.stages.get(stage) == semver:
                return self.get(f"{name}@{short_version(semver)}")
            counter, stamp = model.max_counter, tag_time(model)

            def tag(make: Any, stage: str, target: Semver) -> None:
                nonlocal counter, stamp
                counter += 1
                name_, message = make(name, stage, target, counter)
                self.git.tag(name_, model.versions[target].commit, message, timestamp=stamp)
                made.append(name_)
                stamp += 1

            # Up to three tags: all of them or none (a lone unassign would leave
            # the stage on no version).
            try:
                current = model.stages.get(stage)
                if current is not None:
                    tag(unassign_tag, stage, current)
                tag(assign_tag, stage, semver)
                for other in EXCLUSIVE_STAGES.get(stage, ()):
                    if model.stages.get(other) == semver:
                        tag(unassign_tag, other, semver)
            except BaseException:
                for made_tag in made:
                    self.git.run("tag", "-d", made_tag, check=False)
                raise
        return self.get(f"{name}@{short_version(semver)}")

    def demote(self, name: str, stage: str) -> ModelVersion | None:
        """Take ``stage`` off whichever version holds it; returns that version (None if none)."""
        name, stage = check_name(name), check_stage(stage)
        with self._lock():
            model = self._model(name)
            current = model.stages.get(stage)
            if current is None:
                return None
            tag, message = unassign_tag(name, stage, current, model.max_counter + 1)
            self.git.tag(tag, model.versions[current].commit, message, timestamp=tag_time(model))
        return self.get(f"{name}@{short_version(current)}")

    # -- reading ---------------------------------------------------------------

    def names(self) -> builtins.list[str]:
        return sorted(self._models())

    def get(self, ref: str) -> ModelVersion:
        """Resolve ``name@v3``, ``name@v3.0.0``, ``name@latest``, ``name#stage``,
        ``name:stage`` or a bare ``name`` (its latest version)."""
        parsed = parse_ref(ref)
        model = self._model(parsed.name)
        semver = self._resolve(parsed.name, model, parsed)
        return self._load(parsed.name, model, [semver])[0]

    def stages(self, name: str) -> dict[str, str]:
        """{stage: version}, e.g. {"champion": "v2", "challenger": "v3"}."""
        model = self._model(check_name(name))
        return {stage: short_version(v) for stage, v in sorted(model.stages.items())}

    def artifact_bytes(self, mv: ModelVersion | str) -> bytes:
        """The artifact's bytes, fetched from the DVC remote if needed and verified.

        Raises :class:`RegistryError` if the bytes do not match the sha256 recorded
        at registration, or (when the registry's public key is the one that signed
        them) if the signature does not verify.
        """
        if isinstance(mv, str):
            mv = self.get(mv)
        path = mv.artifact_path
        if not path.is_file():
            dvcstore.pull(self.root, str(path.relative_to(self.root)))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read the artifact of {mv.ref}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != mv.sha256:
            raise RegistryError(
                f"artifact of {mv.ref} at {path} has sha256 {digest[:16]}..., but "
                f"{mv.sha256[:16]}... was registered: it was modified after registration "
                f"(restore it with `dvc checkout {path.relative_to(self.root)}` in {self.root})"
            )
        self._verify_signature(mv, data)
        return data

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        """Changed metrics, params, other metadata, artifact and lineage fields."""
        return diff_versions(self.get(ref_a), self.get(ref_b))

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        """Registered versions, by model name then version."""
        models = self._models()
        if name is not None:
            models = {check_name(name): self._model(name, models)}
        out: builtins.list[ModelVersion] = []
        for model_name in sorted(models):
            model = models[model_name]
            out.extend(self._load(model_name, model, sorted(model.versions)))
        return out

    # -- internals: tags -------------------------------------------------------

    def _models(self) -> dict[str, ModelTags]:
        return read_models(self.git)

    def _model(self, name: str, models: dict[str, ModelTags] | None = None) -> ModelTags:
        models = self._models() if models is None else models
        if name not in models:
            known = ", ".join(sorted(models)) or "none"
            raise RegistryError(
                f"no model named {name!r} in the registry at {self.root} (models: {known})"
            )
        return models[name]

    def _resolve(self, name: str, model: ModelTags, ref: Ref) -> Semver:
        return resolve(name, model, ref)

    def _load(
        self, name: str, model: ModelTags, semvers: builtins.list[Semver]
    ) -> builtins.list[ModelVersion]:
        specs = [
            f"{model.versions[v].commit}:models/{name}/{short_version(v)}/{RECORD_NAME}"
            for v in semvers
        ]
        # Links to tracking runs are read at HEAD, not at the tag (see lineage.LINKS_NAME).
        links = [f"HEAD:{links_path(name, short_version(v))}" for v in semvers]
        blobs = self.git.read_blobs(specs + links)
        out = []
        for i, semver in enumerate(semvers):
            blob = blobs[i]
            reg = model.versions[semver]
            if blob is None:
                raise RegistryError(
                    f"tag {reg.tag} points at commit {reg.commit[:12]}, which has no "
                    f"models/{name}/{short_version(semver)}/{RECORD_NAME}"
                )
            mv = version_from_record(self.root, name, semver, reg, model, blob)
            out.append(replace(mv, lineage=with_links(mv.lineage, blobs[len(semvers) + i])))
        return out

    def link_run(self, ref: str, run_id: str, uri: str, *, local_run_id: str) -> bool:
        """Record that ``ref`` was trained by MLflow run ``run_id`` at ``uri`` (the replay
        of workspace run ``local_run_id``): one commit, read back as ``lineage.mlflow_run_id``
        and ``lineage.mlflow_uri``. Returns False if that link was already recorded."""
        with self._lock():
            mv = self.get(ref)
            path = links_path(mv.name, mv.version)
            file = self.root / path
            before = file.read_text(encoding="utf-8") if file.is_file() else None
            entry = {
                "run_id": run_id,
                "uri": public_uri(uri),
                "local_run_id": local_run_id,
                "linked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            text = add_link(before, entry)
            if text is None:
                return False
            file.write_text(text, encoding="utf-8")
            try:
                self.git.add([path])
                self.git.commit(f"Link {mv.ref} to MLflow run {run_id} at {entry['uri']}", [path])
            except BaseException:
                self.git.reset_index()
                if before is None:
                    file.unlink(missing_ok=True)
                else:
                    file.write_text(before, encoding="utf-8")
                raise
        return True

    def _verify_signature(self, mv: ModelVersion, data: bytes) -> None:
        if not self.public_key_path.is_file():
            return
        try:
            key = signing.load_public_key(self.public_key_path)
        except signing.SigningError as exc:
            raise RegistryError(str(exc)) from None
        if mv.key_id and mv.key_id != signing.key_id(key):
            return  # signed by an earlier key; the sha256 check above still holds
        try:
            signing.verify(data, mv.signature, [key])
        except SignatureError as exc:
            raise RegistryError(f"artifact of {mv.ref}: {exc}") from None

    def _lock(self) -> AbstractContextManager[None]:
        return writer_lock(self.root)


def _check_model_name(name: object) -> str:
    """The registry's own rule, then the shared one (fullmatch: no trailing newline)."""
    check_name(name)
    try:
        return check_model_name("invalid model name:", name)
    except InvalidName as exc:
        raise RegistryError(str(exc)) from None


def _remote_url(remote: str) -> str:
    if "://" in remote:
        return remote
    return str(Path(remote).expanduser().resolve())


def _version_ref(name: str, version: str) -> Ref:
    """``v3`` / ``3.0.0`` / ``latest`` / ``sensor@v3`` / ``sensor#challenger`` for ``name``."""
    if not isinstance(version, str):
        raise RegistryError(f"version must be a string like v3, got {version!r}")
    text = version if any(c in version for c in "@#:") else f"{name}@{version}"
    ref = parse_ref(text)
    if ref.name != name:
        raise RegistryError(f"version {version!r} refers to model {ref.name!r}, not {name!r}")
    return ref
