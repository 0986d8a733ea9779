"""What __main__ needs before it wires components: validated config, the resolved source and
its migrations, and how to reach each node; and the stack outputs of a node."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pulumi
import pulumi.runtime.config as runtime_config

from . import build, migrations, paths
from .config import ConfigError, NodeConfig, StackConfig, load
from .history import deployer


def load_config() -> StackConfig:
    """Validate the `sando:` namespace once; ConfigError names the key. A stack whose secrets are
    under the demo's public passphrase (or none) is refused (passphrase.py)."""
    from pathlib import Path

    from . import passphrase

    unsafe = passphrase.problem(Path.cwd(), pulumi.get_stack(), need=False)
    if unsafe:
        raise ConfigError(unsafe)
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


def release_migrations(cfg: StackConfig, source: Source) -> list[migrations.Migration]:
    return migrations.of_release(source.repo, source.commit, cfg.migrations.dir) if cfg.migrations.gate else []


def known_destructive(cfg: StackConfig, source: Source, release: list[migrations.Migration]) -> list[str]:
    """Every destructive migration of the pinned release and of the repo's HEAD (which usually holds
    every migration ever written): a preview pinning an older version names what the database is
    ahead by, and which of those were destructive (issue 20.5)."""
    found = {m.version for m in release if m.destructive}
    if cfg.migrations.gate:
        try:
            head = build.resolve_commit(source.repo, "HEAD")
            found |= {m.version for m in migrations.of_release(source.repo, head, cfg.migrations.dir) if m.destructive}
        except Exception:  # noqa: BLE001 - only for a warning
            pass
    return sorted(found, key=lambda v: (len(v), v))


def env_file(cfg: StackConfig, sources: dict[str, str]) -> str:
    """The unit's EnvironmentFile (where the service reads DATABASE_PATH), else the default."""
    m = re.search(r"^EnvironmentFile=-?(\S+)", sources.get("unit", ""), re.M)
    return m.group(1) if m else paths.for_service(paths.DEFAULT_ENV_FILE, cfg.service)


def node_outputs(node: NodeConfig, batch: int, release, pointer) -> dict:
    """What `pulumi stack output nodes` says about a node after this run."""
    p = pointer.pointer
    return {
        "host": node.host, "batch": batch, "liveVersion": p.liveVersion, "liveCommit": p.liveCommit,
        "previousVersion": p.previousVersion, "switchedAt": p.switchedAt, "health": p.health,
        "releases": p.releases, "foreign": p.foreign, "release": release.path, "sha256": release.sha256,
        "lastTransfer": release.last_transfer, "restartWarning": p.restartWarning, "migrations": p.migrations,
        "lastDeploy": p.lastDeploy,  # who switched what, when, how (the node's .sando/history)
    }


__all__ = ["ConfigError", "Source", "connection", "deployer", "env_file", "known_destructive", "load_config", "node_outputs", "private_key",
           "release_migrations", "resolve_source", "service_token"]
