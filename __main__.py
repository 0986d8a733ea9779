"""sando: deploy makenotwork. Wiring only: config -> Node -> Release(s) -> CurrentPointer per node."""

import sys

import pulumi

from sando_components import (ConfigError, CurrentPointer, CurrentPointerArgs, Node, NodeArgs, Release,
                              ReleaseArgs, bootstrap_sources, retained_versions, stack)

try:
    cfg = stack.load_config()
    source = stack.resolve_source(cfg)
    sources = bootstrap_sources(cfg, source.repo)
except ConfigError as err:  # before any resource exists, so before any remote change
    print(f"sando: {err}", file=sys.stderr)
    sys.exit(32)  # "error already shown" to the language host

last = stack.previous_outputs().get("nodes") or {}
key, token = stack.private_key(cfg), stack.service_token(cfg)
pinned = {"version": cfg.version, "commit": source.commit}
nodes = {}
for node in cfg.nodes:
    conn, before = stack.connection(cfg, node), last.get(node.name) or {}
    bootstrap = Node(node.name, NodeArgs(cfg, node, conn, key, sources))
    keep = retained_versions(before.get("releases") or [], pinned, before.get("liveVersion"),
                             before.get("previousVersion"), cfg.keep_releases)
    releases = {r["version"]: Release(f"{node.name}-release-{r['version']}",
                                      ReleaseArgs(cfg, node, conn, key, r["version"], r["commit"], source.repo))
                for r in keep}
    live = releases[cfg.version]
    pointer = CurrentPointer(f"{node.name}-current", CurrentPointerArgs(cfg, node, conn, key, cfg.version,
                                                                        source.commit, live.path, token, bootstrap))
    nodes[node.name] = {
        "host": node.host, "releases": keep, "release": live.path, "sha256": live.sha256,
        "uploadedBytes": live.uploaded_bytes, "liveVersion": pointer.live_version,
        "previousVersion": pointer.previous_version, "switchedAt": pointer.switched_at, "health": pointer.health,
        "restartWarning": pointer.warning_status,
    }

pulumi.export("version", cfg.version)
pulumi.export("commit", source.commit)
pulumi.export("nodes", nodes)
