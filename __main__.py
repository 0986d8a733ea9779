"""sando: deploy makenotwork. Wiring only: config -> Node -> Release -> CurrentPointer per node."""

import sys

import pulumi

from sando_components import (ConfigError, CurrentPointer, CurrentPointerArgs, Node, NodeArgs, NodeTarget, Release,
                              ReleaseArgs, bootstrap_sources, stack, verdict)

try:
    cfg = stack.load_config()
    source = stack.resolve_source(cfg)
    sources = bootstrap_sources(cfg, source.repo)
    migrations = stack.release_migrations(cfg, source)
except ConfigError as err:  # before any resource exists, so before any remote change
    pulumi.log.error(str(err))
    sys.exit(32)  # "error already shown" to the language host

key, token = stack.private_key(cfg), stack.service_token(cfg)
deploy = {**stack.deployer(), "stack": pulumi.get_stack()}  # who runs this and how (SANDO_VIA): recorded with each switch
known = stack.known_destructive(cfg, source, migrations)
nodes, earlier, pointers = {}, [], []
for number, batch in enumerate(cfg.batches()):
    for node in batch:
        target = NodeTarget(cfg, node, stack.connection(cfg, node), key)
        bootstrap = Node(node.name, NodeArgs(**vars(target), sources=sources))
        release = Release(f"{node.name}-release", ReleaseArgs(**vars(target), version=cfg.version,
                                                              commit=source.commit, repo=source.repo))
        pointer = CurrentPointer(f"{node.name}-current", CurrentPointerArgs(
            **vars(target), version=cfg.version, commit=source.commit, release_path=release.path, token=token,
            bootstrap=bootstrap, migrations=migrations, env_file=stack.env_file(cfg, sources), batch=number,
            after=earlier, deploy=deploy, known_destructive=known))
        pointers.append(pointer.pointer)
        nodes[node.name] = stack.node_outputs(node, number, release, pointer)
    earlier = pointers[-len(batch):]
verdict(pointers)

pulumi.export("version", cfg.version)
pulumi.export("commit", source.commit)
pulumi.export("nodes", nodes)
