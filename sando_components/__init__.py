"""sando: deploy makenotwork with Pulumi. Components: Node, Release, CurrentPointer."""

from .config import ConfigError, StackConfig
from .current_pointer import CurrentPointer, CurrentPointerArgs, verdict
from .node import Node, NodeArgs, bootstrap_sources
from .release import Release, ReleaseArgs
from .target import NodeTarget

__all__ = ["ConfigError", "CurrentPointer", "CurrentPointerArgs", "Node", "NodeArgs", "NodeTarget", "Release",
           "ReleaseArgs", "StackConfig", "bootstrap_sources", "verdict"]
