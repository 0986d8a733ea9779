"""What every component of one node needs: the validated config, the node, and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .config import NodeConfig, StackConfig


@dataclass
class NodeTarget:
    cfg: StackConfig
    node: NodeConfig
    connection: dict  # host, port, user, hostKey, insecure; or local (see stack.connection)
    private_key: pulumi.Input[str] | None  # secret; None = SSH agent
