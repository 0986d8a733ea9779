"""sando: deploy makenotwork with Pulumi. Components: Node, Release, CurrentPointer."""

from .config import ConfigError, StackConfig
from .current_pointer import CurrentPointer, CurrentPointerArgs
from .node import Node, NodeArgs, bootstrap_sources
from .release import Release, ReleaseArgs, retained_versions

__all__ = ["ConfigError", "CurrentPointer", "CurrentPointerArgs", "Node", "NodeArgs", "Release", "bootstrap_sources", "ReleaseArgs",
           "StackConfig", "retained_versions"]
