"""DVC-tracked, GTO-tagged, Ed25519-signed model registry (see docs/registry.md)."""

from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.model import ModelVersion
from edgeloop_control.registry.refs import Ref, parse_ref
from edgeloop_control.registry.registry import Registry

__all__ = ["ModelVersion", "Ref", "Registry", "RegistryError", "parse_ref"]
