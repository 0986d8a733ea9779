"""CurrentPointer: the `current` symlink of a node, with the restart-warning hook.

Children: an optional RestartWarning (prod: sando:restartWarningSeconds > 0),
which does not depend on the release upload so the notice period runs while
bytes are moving, and the Pointer that switches `current` atomically, restarts
the service, health-checks it and switches back when it is not healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .providers import Pointer, RestartWarning
from .target import NodeTarget


@dataclass
class CurrentPointerArgs(NodeTarget):
    version: str
    commit: str
    release_path: pulumi.Input[str]  # the Release's path: the pointer waits for the upload
    token: pulumi.Input[str] | None = None
    bootstrap: pulumi.Resource | None = None  # the Node: the unit must be installed before a restart


class CurrentPointer(pulumi.ComponentResource):
    def __init__(self, name: str, args: CurrentPointerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:CurrentPointer", name, None, opts)
        cfg, node = args.cfg, args.node
        conn = {"connection": args.connection, "privateKey": args.private_key}
        sent_at: pulumi.Input[float | None] = None
        self.warning_status: pulumi.Output[str] = pulumi.Output.from_input("disabled")
        if cfg.restart_warning_seconds > 0:
            warning = RestartWarning(
                f"{name}-warning",
                {**conn, "url": cfg.restart_warning_url(node), "seconds": cfg.restart_warning_seconds,
                 "token": args.token, "onFailure": cfg.restart_warning_on_failure, "version": args.version},
                pulumi.ResourceOptions(parent=self),
            )
            sent_at, self.warning_status = warning.sentAt, warning.status
        hc = cfg.health_check
        pointer = Pointer(
            f"{name}-switch",
            {**conn, "root": node.root, "releaseRoot": cfg.release_root, "service": cfg.service,
             "version": args.version, "commit": args.commit, "release": args.release_path,
             "healthUrl": cfg.health_url(node), "healthTimeout": hc.timeout_seconds,
             "healthInterval": hc.interval_seconds, "expectVersion": hc.expect_version,
             "warningSentAt": sent_at, "warningSeconds": cfg.restart_warning_seconds, "switchedAt": None},
            pulumi.ResourceOptions(parent=self, depends_on=[args.bootstrap] if args.bootstrap else None),
        )
        self.live_version = pointer.liveVersion
        self.previous_version = pointer.previousVersion
        self.switched_at = pointer.switchedAt
        self.health = pointer.health
        self.register_outputs({"liveVersion": self.live_version, "previousVersion": self.previous_version,
                               "switchedAt": self.switched_at, "health": self.health,
                               "restartWarning": self.warning_status})
