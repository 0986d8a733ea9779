"""What __main__ needs before it wires components: validated config, the resolved
source, and what this stack deployed last time (its own outputs)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pulumi
import pulumi.runtime.config as runtime_config

from . import build
from .config import ConfigError, StackConfig, load


def load_config() -> StackConfig:
    """Validate the `sando:` namespace once; ConfigError names the key."""
    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret = set(runtime_config.get_config_secret_keys_env()) | set(runtime_config._SECRET_KEYS.get())
    return load(raw, frozenset(secret))


@dataclass(frozen=True)
class Source:
    repo: str  # absolute path of the server repository
    commit: str


def resolve_source(cfg: StackConfig) -> Source:
    """Resolve sando:version to a commit and check what the release needs exists there."""
    repo = os.path.abspath(cfg.source.repo)
    commit = build.resolve_commit(repo, cfg.version)
    build.check_tree(repo, commit, cfg.source.error_pages_dir, "source.errorPagesDir")
    return Source(repo, commit)


def previous_outputs() -> dict:
    """This stack's outputs from its last update ({} for a new stack), via the engine."""
    name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    # A failed read must stop the program, not make it forget retained releases (which
    # would prune them); a new stack reads as empty outputs. The file backend can be caught
    # rewriting the checkpoint (`preview --refresh`): "failed to load checkpoint" is retried.
    for attempt in range(20):
        try:
            res = pulumi.runtime.invoke("pulumi:pulumi:readStackOutputs", {"name": name})
            return dict((res.value or {}).get("outputs") or {})
        except Exception as exc:
            if "failed to load checkpoint" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def connection(cfg: StackConfig, node) -> dict:
    return {"host": node.host, "port": node.port, "user": node.user, "hostKey": node.host_key,
            "insecure": cfg.insecure_skip_host_key_check and not node.host_key}


def private_key(cfg: StackConfig) -> pulumi.Output[str] | None:
    if cfg.ssh_private_key is None:
        return None
    return pulumi.Output.secret(cfg.ssh_private_key.get_secret_value())


def service_token(cfg: StackConfig) -> pulumi.Output[str] | None:
    if cfg.cli_service_token is None:
        return None
    return pulumi.Output.secret(cfg.cli_service_token.get_secret_value())


__all__ = ["ConfigError", "Source", "connection", "load_config", "previous_outputs", "private_key",
           "resolve_source", "service_token"]
