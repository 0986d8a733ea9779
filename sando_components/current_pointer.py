"""CurrentPointer: the `current` symlink of a node, with the restart-warning hook.

Its Pointer child moves `current` in one script on the node: the migration gate, the restart
warning (prod: sando:restartWarningSeconds > 0) sent right before the restart it announces, the
atomic switch, `systemctl reload-or-restart`, the health check, the switch back when it fails,
then pruning old releases. In a rolling rollout (sando:rollout) it waits for the pointers of
the previous batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pulumi

from .migrations import Migration
from .providers import Pointer, Verdict
from .target import NodeTarget


@dataclass
class CurrentPointerArgs(NodeTarget):
    version: str
    commit: str
    release_path: pulumi.Input[str]  # the Release's path: the pointer waits for the upload
    release_outcome: pulumi.Input[dict] | None = None  # the upload's outcome: a failed one is not switched to
    token: pulumi.Input[str] | None = None
    bootstrap: pulumi.Resource | None = None  # the Node: the unit must be installed before a restart
    migrations: list[Migration] = field(default_factory=list)
    env_file: str | None = None  # the unit's EnvironmentFile (where DATABASE_PATH is)
    batch: int = 0
    after: list[Pointer] = field(default_factory=list)  # pointers of the previous batch
    deploy: dict | None = None  # who/how (history.deployer): recorded on the node, not a diff by itself
    known_destructive: list[str] = field(default_factory=list)  # every destructive migration sando knows


class CurrentPointer(pulumi.ComponentResource):
    def __init__(self, name: str, args: CurrentPointerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:CurrentPointer", name, None, opts)
        cfg, node, hc, mig = args.cfg, args.node, args.cfg.health_check, args.cfg.migrations
        warning = None
        if cfg.restart_warning_seconds > 0:
            warning = {"url": cfg.restart_warning_url(node), "seconds": cfg.restart_warning_seconds,
                       "onFailure": cfg.restart_warning_on_failure}
        pointer = Pointer(
            f"{name}-switch",
            {"node": node.name, "connection": args.connection, "privateKey": args.private_key,
             "releaseRoot": cfg.release_root, "service": cfg.service, "version": args.version, "commit": args.commit,
             "release": args.release_path, "releaseOutcome": args.release_outcome, "keepReleases": cfg.keep_releases,
             # its node's host config step: a failed one is not switched over (the verdict says why)
             "hostOutcome": args.bootstrap.host_config.outcome if args.bootstrap else None,
             "healthCheck": {"url": cfg.health_url(node), "timeoutSeconds": hc.timeout_seconds,
                        "intervalSeconds": hc.interval_seconds, "expectVersion": hc.expect_version,
                        # the site through Caddy too (health.sh); only when set: no diff for stacks without it
                        **({"caddyUrl": hc.caddy_url} if hc.caddy_url else {})},
             "warning": warning, "token": args.token if warning else None,
             "gate": {"enabled": mig.gate, "migrations": [m.version for m in args.migrations],
                      "destructive": [m.version for m in args.migrations if m.destructive],
                      "names": {m.version: m.description for m in args.migrations},
                      "dryRunCommand": mig.dry_run_command, "database": mig.database, "envFile": args.env_file,
                      "backupDir": mig.backup_dir,
                      "allowDestructive": not mig.refuse_destructive or args.version in mig.allow_destructive},
             "switch": {"strategy": cfg.switch.strategy, "ports": list(cfg.switch.ports),
                        "bindEnv": cfg.switch.bind_env, "bindHost": cfg.switch.bind_host,
                        "drainSeconds": cfg.switch.drain_seconds, "healthPath": cfg.health_path(),
                        "warnPath": "/api/internal/restart-warning"},
             "rollout": {"batch": args.batch, "pauseSeconds": cfg.rollout.pause_seconds},
             "after": [p.outcome for p in args.after],
             "deploy": args.deploy,  # issue 20.2 hook: not in pointer.INPUTS, so never a diff by itself
             "knownDestructive": args.known_destructive},  # issue 20.5: for the preview's warning, no diff  # held back when an earlier batch failed
            pulumi.ResourceOptions(parent=self, depends_on=[args.bootstrap] if args.bootstrap else None),
        )
        self.pointer = pointer
        self.live_version = pointer.liveVersion
        self.register_outputs({"liveVersion": pointer.liveVersion, "previousVersion": pointer.previousVersion,
                               "switchedAt": pointer.switchedAt, "health": pointer.health,
                               "restartWarning": pointer.restartWarning, "migrations": pointer.migrations})


def verdict(pointers: list[Pointer]) -> Verdict:
    """The run fails, naming each node whose switch failed and those a rollout held back, after every
    pointer recorded where its node stands and after the engine has the stack's outputs: call it
    after the last `pulumi.export`."""
    outcomes = [p.outcome for p in pointers]
    return Verdict("verdict", after_stack_outputs(outcomes), pulumi.ResourceOptions(depends_on=pointers))


def after_stack_outputs(value):
    """`value`, once the engine has recorded the stack's outputs (all exported by now).

    The SDK sends the stack's outputs only after the program's body, when every output has
    resolved: at the same moment as the pointers' outcomes reach the verdict. A verdict that fails
    first ends the run before the engine takes the outputs, and a failed run's outputs then look
    deleted and keep saying the run before (the health of a node that just failed: "ok"). So they
    are sent here, in the SDK's own way, and the verdict is registered only once the engine has
    acknowledged them; the SDK's own send at the end is then skipped (one registration only)."""
    from pulumi.runtime import rpc, settings
    from pulumi.runtime._context import wrap_with_context
    from pulumi.runtime.proto import resource_pb2
    from pulumi.runtime.stack import massage

    root = settings.get_root_resource()
    if root is None or getattr(root, "_outputs_registered", True):  # not the SDK's run_in_stack (mocks)
        return value
    outputs = massage(root.outputs, [])
    root._outputs_registered = True  # the SDK's Stack._finish: its own send would be a second one

    async def send():
        urn = await root.urn.future()
        props = await rpc.serialize_properties(outputs, {})
        monitor = settings.get_monitor()
        if monitor is not None:
            request = resource_pb2.RegisterResourceOutputsRequest(urn=urn, outputs=props)
            await asyncio.get_running_loop().run_in_executor(
                None, wrap_with_context(lambda: monitor.RegisterResourceOutputs(request)))
        return value

    return asyncio.ensure_future(send())
