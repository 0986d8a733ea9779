"""Release: the pinned version's binaries plus its error-pages directory on one node (seed items
2, 3, 8), built natively at the pinned commit and sent as a delta against what the node holds.

One Release per node, following the pin: a rollback to a release the node still holds sends
nothing; a release the node lacks (pruned, or removed by hand) is sent again. Old releases are
pruned by the node's CurrentPointer after a switch, from what the node really holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .providers import ReleaseFiles
from .target import NodeTarget


@dataclass
class ReleaseArgs(NodeTarget):
    version: str
    commit: str
    repo: str  # absolute path of the server repo (for the lazy build)
    expect: dict | None = None  # the bytes the release must have (stack.expected_build, issue 22.1)


class Release(pulumi.ComponentResource):
    def __init__(self, name: str, args: ReleaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:Release", name, None, opts)
        src = args.cfg.source
        files = ReleaseFiles(
            f"{name}-files",
            {
                "node": args.node.name, "connection": args.connection, "privateKey": args.private_key,
                "releaseRoot": args.cfg.release_root, "service": args.cfg.service, "version": args.version, "commit": args.commit,
                "binNames": list(args.cfg.bin_names),
                "build": {"repo": args.repo, "command": src.build_command, "binDir": src.bin_dir,
                          "errorPagesDir": src.error_pages_dir},
                "expect": args.expect,
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.files = files  # the step a verified node's host config waits for (stack.host_waits_for)
        self.version = pulumi.Output.from_input(args.version)
        self.sha256 = files.sha256
        self.path = files.path
        self.last_transfer = files.lastTransfer
        self.outcome = files.outcome  # this node's upload failed: the pointer does not switch, the verdict says why
        self.build = files.recordedBuild  # the pin's recorded build (issue 22.5)
        self.register_outputs({"version": self.version, "sha256": self.sha256, "path": self.path,
                               "lastTransfer": self.last_transfer})
