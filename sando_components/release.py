"""Release: one version's binaries plus its error-pages directory on one node (seed items 2, 3, 8).

A node holds one Release per retained version (`retained_versions` decides
which), so rolling back to a retained version changes no Release at all, and a
version that falls out of the keepReleases window is deleted by Pulumi's own
diff (its provider refuses to delete the live or the previous release).
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
    cache_dir: str | None = None


class Release(pulumi.ComponentResource):
    def __init__(self, name: str, args: ReleaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:Release", name, None, opts)
        src = args.cfg.source
        files = ReleaseFiles(
            f"{name}-files",
            {
                "connection": args.connection, "privateKey": args.private_key, "root": args.node.root,
                "releaseRoot": args.cfg.release_root, "version": args.version, "commit": args.commit,
                "binNames": list(args.cfg.bin_names),
                "build": {"repo": args.repo, "command": src.build_command, "binDir": src.bin_dir,
                          "errorPagesDir": src.error_pages_dir, "cacheDir": args.cache_dir},
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.version = pulumi.Output.from_input(args.version)
        self.commit = files.commit
        self.sha256 = files.sha256
        self.path = files.path
        self.uploaded_bytes = files.uploadedBytes
        self.register_outputs({"version": self.version, "commit": self.commit, "sha256": self.sha256,
                               "path": self.path, "uploadedBytes": self.uploaded_bytes})


def retained_versions(history: list[dict], pinned: dict, live_before: str | None,
                      previous_before: str | None, keep: int) -> list[dict]:
    """Which releases ({version, commit}) a node keeps after deploying `pinned`, oldest first.

    The newest `keep` by first deployment, plus always the pinned one and the one
    that will be the rollback target (the release live before, or the previous
    one when the pin does not move). Never anything that was not deployed by sando.
    """
    order = [pinned if r["version"] == pinned["version"] else r for r in history]
    if pinned not in order:
        order.append(pinned)
    rollback_target = live_before if live_before != pinned["version"] else previous_before
    newest = {r["version"] for r in order[-keep:]}
    must = {pinned["version"], rollback_target}
    return [r for r in order if r["version"] in newest or r["version"] in must]
