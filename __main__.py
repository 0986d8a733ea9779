"""sando: deploy makenotwork. Wiring only: config -> Node -> Release -> CurrentPointer per node."""
# The modules a warm start loads before the run (engine/bin/sando_zygote.py, engine/python/exec.patch):
# sando-warm: sando_components.sdk sando_components.stack sando_components.headstart sando_components.current_pointer sando_components.node sando_components.release sando_components.target sqlglot

import os
import sys

import pulumi

from sando_components import sdk

sdk.lean()  # three costs of the Pulumi SDK that grow with the fleet, cut before any registration
os.environ["SANDO_EXIT_FAST"] = "1"  # this process ends without freeing its modules (engine/python/exec.patch)

from sando_components import headstart

headstart.provider()  # the engine starts the provider process now, not at the first registration (issue 24)

from sando_components import (ConfigError, CurrentPointer, CurrentPointerArgs, Node, NodeArgs, NodeTarget,
                              OperatorError, Release, ReleaseArgs, bootstrap_sources, stack, verdict)

try:
    cfg = stack.load_config()
    source = stack.resolve_source(cfg)
    sources = bootstrap_sources(cfg, source.repo)
    env_file = stack.env_file(cfg, sources.files)
    headstart.reads(stack.node_reads(cfg, env_file))  # every node's read starts now, in the provider process
    migrations = stack.release_migrations(cfg, source)
    headstart.ahead(stack.ahead_reads(cfg, env_file, migrations))  # the switching nodes' status reads, also at once
    stack.check_local_nodes(cfg)  # a local node's sudo
    # promoted or sando:verifyAgainst: the bytes the pin must have; a pin the source does not run: refused
    expect, refuse = stack.expected_build(cfg, source, stack.source_outputs(cfg, source), pulumi.get_stack())
except (ConfigError, OperatorError) as err:  # before any resource exists, so before any remote change
    pulumi.log.error(str(err))
    sys.exit(32)  # "error already shown" to the language host

token = stack.service_token(cfg)
deploy = {**stack.deployer(), "stack": pulumi.get_stack()}  # who runs this and how (SANDO_VIA): recorded with each switch
known = stack.known_destructive(cfg, source, migrations)
nodes, earlier, pointers, parity = {}, [], [], []
for number, batch in enumerate(cfg.batches()):
    for node in batch:
        target = NodeTarget(cfg, node, stack.connection(cfg, node), stack.private_key(cfg, node))
        after_reach = stack.reach(target, refuse, env_file)  # a node that cannot be reached fails here, once
        release = Release(f"{node.name}-release", ReleaseArgs(**vars(target), version=cfg.version,
                                                              commit=source.commit, repo=source.repo, expect=expect), after_reach)
        bootstrap = Node(node.name, NodeArgs(**vars(target), sources=sources, version=cfg.version, token=token,
                                             after=earlier, wait_for=stack.host_waits_for(expect, release)), after_reach)
        pointer = CurrentPointer(f"{node.name}-current", CurrentPointerArgs(
            **vars(target), version=cfg.version, commit=source.commit, release_path=release.path, release_outcome=release.outcome, token=token,
            bootstrap=bootstrap, migrations=migrations, env_file=env_file, batch=number,
            after=earlier, deploy=deploy, known_destructive=known), after_reach)
        pointers.append(pointer.pointer)
        nodes[node.name] = stack.node_outputs(node, number, release, pointer, bootstrap)
        parity.append((node.name, release, pointer))
    earlier = pointers[-len(batch):]
stack.add_bytes(nodes, parity, cfg.version, expect)  # each node's bytes vs the pin's recorded build

pulumi.export("version", cfg.version)
pulumi.export("commit", source.commit)
pulumi.export("hostConfig", {"ref": sources.ref, "commit": sources.commit})  # sando promote carries it
pulumi.export("nodes", nodes)
verdict(pointers)  # last: the engine has the outputs before a failed node's verdict ends the run
