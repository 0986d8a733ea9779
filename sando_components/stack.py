"""What __main__ needs before it wires components: validated config, the resolved source and
its migrations, and how to reach each node; and the stack outputs of a node."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import pulumi
import pulumi.runtime
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
    return load(raw, frozenset(secret), env=dict(os.environ))


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
    """How to reach a node: host, port, user, pinned host key, and the bastion it is reached
    through (proxyJump, same fields), if any. A local node: `local: true` (a local shell, as
    whoever runs sando; host and port only name it, for the providers' bookkeeping)."""
    if node.local:
        return {"local": True, "host": "localhost", "port": 0}
    def endpoint(e) -> dict:
        return {"host": e.host, "port": e.port, "user": e.user, "hostKey": e.host_key,
                "insecure": cfg.insecure_skip_host_key_check and not e.host_key}

    conn = endpoint(node)
    if node.proxy_jump is not None:
        conn["proxyJump"] = endpoint(node.proxy_jump)
    return conn


def reach(target, refuse: dict | None = None, env_file: str | None = None) -> pulumi.ResourceOptions:
    """The node's Reach resource (providers/reach.py), as the options that make every other resource
    of the node wait for it: a node that cannot be reached is said once, before anything else; and a
    pin that sando:verifyAgainst refuses (expected_build), unless the node holds that release. Its
    read is the head start's (node_reads), the database's migrations included (`dbRead`, never a
    change by itself): whichever of the two comes first makes the node's one read."""
    from .providers import Reach

    cfg, node = target.cfg, target.node
    props = {"node": node.name, "connection": target.connection, "privateKey": target.private_key,
             "releaseRoot": cfg.release_root, "service": cfg.service, "refuse": refuse,
             **({"dbRead": db} if (db := db_read(cfg, env_file)) else {})}
    r = Reach(f"{node.name}-reach", props)
    return pulumi.ResourceOptions(depends_on=[r])


def host_waits_for(expect: dict | None, release) -> list:
    """What a node's host config step waits for besides its Reach: with bytes the pin must have (a
    promote's sando:verifiedBuild or sando:verifyAgainst's, expected_build), the node's release,
    whose refusal of other bytes holds the node out of the run (providers/release.py), so a refused
    node changes nothing at all, its host config included: what was tested is what ships. Without,
    nothing: the two steps run side by side."""
    return [release.files] if expect else []


def node_reads(cfg: StackConfig, env_file: str | None = None) -> list[dict]:
    """Every node as its Reach reads it (props above, the key in clear: headstart.reads marks it
    secret), for the head start that reads them all at once while the program still works: the
    engine checks resources one at a time, so the Reach checks would otherwise read one node after
    another. With the migration gate on (and `env_file`, stack.env_file), the read also takes the
    migrations the database has applied (`dbRead`), the database the status read would find (ahead.py):
    a pin the database is not ahead of then needs no status read."""
    db = db_read(cfg, env_file)
    reads = []
    for node in cfg.nodes:
        key = cfg.private_key(node)
        reads.append({"node": node.name, "connection": connection(cfg, node),
                      "privateKey": None if key is None else key.get_secret_value(),
                      "releaseRoot": cfg.release_root, "service": cfg.service, **({"dbRead": db} if db else {})})
    return reads


def db_read(cfg: StackConfig, env_file: str | None) -> dict | None:
    """With the migration gate on: where a node's read finds the database (sh/db.sh), as the status
    read would (ahead.status_command), and the pin (a node whose `current` is the pin is not read:
    nothing switches there); else None (the read leaves the database alone)."""
    if not cfg.migrations.gate or not env_file:
        return None
    return {"database": cfg.migrations.database or "", "envFile": env_file, "pin": cfg.version}


def ahead_reads(cfg: StackConfig, env_file: str, release: list[migrations.Migration]) -> list[dict]:
    """Every node as its pointer's status read sees it (ahead.status_command: the same fields as
    current_pointer gives the Pointer), with the pin and its release's migrations (`release`: a
    database that applied none other needs no status read), for the head start (headstart.ahead);
    none when the migration gate is off (there is nothing to warn of)."""
    if not cfg.migrations.gate:
        return []
    mig = cfg.migrations
    return [{**read, "version": cfg.version, "healthCheck": {"url": cfg.health_url(node)},
             "gate": {"enabled": True, "database": mig.database, "envFile": env_file, "backupDir": mig.backup_dir,
                      "migrations": [m.version for m in release]}}
            for node, read in zip(cfg.nodes, node_reads(cfg, env_file))]


def check_local_nodes(cfg: StackConfig) -> None:
    """A local node run by a non-root sando: can it use `sudo -n`? Asked once here, before any
    resource exists, so that a preview already says it (a create is not diffed: no read would)."""
    from . import localnode, ssh

    for node in cfg.nodes:
        if node.local:
            localnode.check_sudo(ssh.Conn.local_node(node.name))


def private_key(cfg: StackConfig, node: NodeConfig) -> pulumi.Output[str] | None:
    """The node's key (sando:nodeKeys, else sando:sshPrivateKey) as a secret; None = SSH agent."""
    key = cfg.private_key(node)
    return None if key is None else pulumi.Output.secret(key.get_secret_value())


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


def source_outputs(cfg: StackConfig, source: Source) -> dict | None:
    """The outputs of the stack sando:verifyAgainst names (issue 22.1: a manual pin is checked against
    what that stack verified), read through the engine from the backend this stack is in (the
    builtin readStackOutputs a StackReference reads: no file of sando's, no second `pulumi` process;
    one in-engine call per run). None when not asked, or when a promote's verifiedBuild already
    names the pinned commit (it wins)."""
    name = cfg.verify_against
    v = cfg.verified_build
    if name is None or (v is not None and v.commit == source.commit):
        return None
    parts = name.split("/")
    if parts[-1] == pulumi.get_stack() and (len(parts) < 2 or parts[-2] == pulumi.get_project()):
        raise ConfigError(f"sando:verifyAgainst: names this stack ({name}); name the stack whose verified bytes "
                          "this one must run, e.g. testnot")
    full = "/".join([pulumi.get_organization(), pulumi.get_project()][:3 - len(parts)] + parts)
    try:
        said = pulumi.runtime.invoke("pulumi:pulumi:readStackOutputs", {"name": full}).value
    except Exception as exc:  # noqa: BLE001 - the engine's own words, e.g. unknown stack
        why = str(exc).rsplit("returned an error: ", 1)[-1]
        raise ConfigError(f"sando:verifyAgainst: cannot read the outputs of stack {name} ({why}); name a stack of "
                          "this backend (`pulumi stack ls`), or unset the key") from None
    return dict((said or {}).get("outputs") or {})


def _runs(outputs: dict) -> str:
    """What a stack's nodes run, from its outputs: "v2 (0123456789ab) on node1, node2"."""
    by: dict[str, list[str]] = {}
    for name, o in sorted((outputs.get("nodes") or {}).items()):
        live = f"{o.get('liveVersion')} ({str(o.get('liveCommit'))[:12]})" if o.get("liveVersion") else "nothing"
        by.setdefault(live, []).append(name)
    return "; ".join(f"{live} on {', '.join(names)}" for live, names in by.items()) or "nothing"


def expected_build(cfg: StackConfig, source: Source, against: dict | None = None,
                   stack: str = "") -> tuple[dict | None, dict | None]:
    """(the bytes the pinned commit must have, or None; a refusal for a node that does not hold it,
    or None) (issue 22.1). A promote's sando:verifiedBuild of this commit wins; else, with
    sando:verifyAgainst, the sums the source stack's outputs record for the nodes that run this
    commit; a commit the source does not run is refused, except on a node that holds it already
    (a rollback by pin: its bytes were checked when they shipped)."""
    v = cfg.verified_build
    if v is not None and v.commit == source.commit:
        return {"from": v.source, "version": v.version, "commit": v.commit, "files": dict(v.files)}, None
    name = cfg.verify_against
    if name is None or against is None:
        return None, None
    nodes = against.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise ConfigError(f"sando:verifyAgainst: stack {name} records no deploy (no nodes in its outputs): "
                          f"run `pulumi up -s {name}` first, or unset the key")
    running = {n: o for n, o in sorted(nodes.items()) if isinstance(o, dict) and o.get("liveCommit") == source.commit}
    if not running:
        return None, {"version": cfg.version, "commit": source.commit, "message": (
            f"sando:version {cfg.version} ({source.commit[:12]}) is not what {name} runs (sando:verifyAgainst: {name}; "
            f"{name} runs {_runs(against)}) and this node does not hold it; nothing was sent: deploy it to {name} "
            f"first, then `sando promote --from {name} --to {stack or 'this stack'}`")}
    builds: dict[str, list[str]] = {}
    for n, o in running.items():
        if not isinstance(o.get("liveFiles"), dict):
            raise ConfigError(f"sando:verifyAgainst: stack {name}'s outputs do not record the bytes {n} runs "
                              f"(deployed by an older sando): run `pulumi up -s {name}` once")
        builds.setdefault(json.dumps(o["liveFiles"], sort_keys=True), []).append(n)
    if len(builds) > 1:
        raise ConfigError(f"sando:verifyAgainst: {name}'s nodes run {source.commit[:12]} with different bytes "
                          f"({' / '.join(', '.join(ns) for ns in builds.values())}): redeploy {name} from one build first")
    first = next(iter(running.values()))
    return {"from": name, "to": stack, "version": first.get("liveVersion"), "commit": source.commit,
            "files": json.loads(next(iter(builds)))}, None


def env_file(cfg: StackConfig, sources: dict[str, str]) -> str:
    """The unit's EnvironmentFile (where the service reads DATABASE_PATH), else the default."""
    m = re.search(r"^EnvironmentFile=-?(\S+)", sources.get("unit", ""), re.M)
    return m.group(1) if m else paths.for_service(paths.DEFAULT_ENV_FILE, cfg.service)


def bytes_verdict(reference: dict | None, source: str, pin: str, live: str | None, files: dict | None) -> str:
    """Whether the node runs the pin's recorded build, byte for byte (issue 22.5)."""
    if live != pin:
        return f"not on the pin {pin} (runs {live or 'nothing'})"
    if not reference or files is None:
        return "unknown: no recorded build"
    differ = sorted(f for f in set(reference) | set(files) if reference.get(f) != files.get(f))
    return (f"differ from the pinned build ({source}): {', '.join(differ)}" if differ
            else f"match the pinned build ({source})")


def add_bytes(outputs: dict, nodes: list, pin: str, expect: dict | None) -> None:
    """Each node's `bytes` output (issue 22.5): its live release's sha256 (read from the node) against
    the pin's recorded build: the bytes promote verified on the source stack, else the build recorded
    by the first node (config order) whose release is the pin."""
    def verdicts(values: list) -> dict:
        rows = [values[i:i + 4] for i in range(0, len(values), 4)]  # (name, recorded, live, files)
        if expect:
            ref, source = expect["files"], f"verified on {expect['from']}"
        else:
            first = next(((name, rec) for name, rec, live, _ in rows if live == pin and rec), (None, None))
            ref, source = first[1], f"as recorded for {first[0]}"
        return {name: bytes_verdict(ref, source, pin, live, files) for name, _, live, files in rows}

    flat = [x for name, release, pointer in nodes
            for x in (name, release.build, pointer.pointer.liveVersion, pointer.pointer.liveFiles)]
    said = pulumi.Output.all(*flat).apply(verdicts)
    for name, _, _ in nodes:
        outputs[name]["bytes"] = said.apply(lambda d, n=name: d[n])


def node_outputs(node: NodeConfig, batch: int, release, pointer, bootstrap=None) -> dict:
    """What `pulumi stack output nodes` says about a node after this run."""
    p = pointer.pointer
    return {
        "host": node.host or "localhost", "local": node.local, "batch": batch, "liveVersion": p.liveVersion, "liveCommit": p.liveCommit,
        "previousVersion": p.previousVersion, "switchedAt": p.switchedAt, "health": p.health,
        "releases": p.releases, "foreign": p.foreign, "release": release.path, "sha256": release.sha256,
        "liveFiles": p.liveFiles,  # sha256 of every file it runs: what sando:verifyAgainst reads (issue 22.1)
        "lastTransfer": release.last_transfer, "restartWarning": p.restartWarning, "migrations": p.migrations,
        "lastDeploy": p.lastDeploy,  # who switched what, when, how (the node's .sando/history)
        **({"hostConfig": {"files": bootstrap.host_config.installed, "actions": bootstrap.host_config.actions}}
           if bootstrap is not None else {}),
    }


__all__ = ["ConfigError", "Source", "check_local_nodes", "connection", "add_bytes", "deployer", "env_file", "expected_build", "host_waits_for", "known_destructive",
           "load_config", "node_outputs", "source_outputs", "private_key", "reach",
           "release_migrations", "resolve_source", "service_token"]
