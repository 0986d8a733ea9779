"""Every remote location sando touches, named once (like Capistrano's paths.rb).

A node may carry a root prefix: test nodes keep their "/etc", "/opt", ... under
a per-node directory; real hosts use root "" and so the real paths. Logical
paths (what a unit file or Caddyfile refers to) never include the prefix;
`NodePaths.at` adds it for the file operations sando performs.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

STAGING_PREFIX = ".staging-"
MANIFEST_DIR = ".sando"
MANIFEST = f"{MANIFEST_DIR}/manifest.json"
SUMS = f"{MANIFEST_DIR}/SHA256SUMS"
ERROR_PAGES = "error-pages"

# Bootstrap destinations (logical paths) of the design doc's node-bootstrap items.
CADDYFILE = "/etc/caddy/Caddyfile"
UNIT_DIR = "/etc/systemd/system"
SSHD_GIT = "/etc/ssh/sshd_config.d/sshd-git.conf"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/sshd.conf"
FIREWALL_SCRIPT = "/usr/local/sbin/setup-firewall.sh"
BACKUP_SCRIPT = "/usr/local/sbin/backup-db.sh"
CRON_DIR = "/etc/cron.d"


@dataclass(frozen=True)
class NodePaths:
    root: str  # node's path prefix, "" on real hosts
    release_root: str  # logical, e.g. /opt/makenotwork

    def at(self, logical: str) -> str:
        """The real path on the node of a logical absolute path."""
        return self.root.rstrip("/") + logical if self.root else logical

    @property
    def releases(self) -> str:
        return self.at(posixpath.join(self.release_root, "releases"))

    def release(self, version: str) -> str:
        return posixpath.join(self.releases, version)

    def staging(self, version: str, token: str) -> str:
        return posixpath.join(self.releases, f"{STAGING_PREFIX}{version}-{token}")

    def manifest(self, version: str) -> str:
        return posixpath.join(self.release(version), MANIFEST)

    @property
    def current(self) -> str:
        return self.at(posixpath.join(self.release_root, "current"))

    @property
    def previous(self) -> str:
        """Symlink to the release that was live before `current` (the rollback target)."""
        return self.at(posixpath.join(self.release_root, "previous"))

    @property
    def error_pages(self) -> str:
        """What Caddy serves: a link to current/error-pages."""
        return self.at(posixpath.join(self.release_root, ERROR_PAGES))

    @staticmethod
    def link_target(version: str) -> str:
        """Relative target of `current`/`previous`, so a root prefix needs no rewriting."""
        return posixpath.join("releases", version)

    @staticmethod
    def version_of_target(target: str) -> str | None:
        """Inverse of link_target, tolerant of absolute targets written by hand."""
        target = target.rstrip("/")
        parent, name = posixpath.split(target)
        return name if name and posixpath.basename(parent) == "releases" else None

    def unit(self, service: str) -> str:
        return self.at(posixpath.join(UNIT_DIR, f"{service}.service"))

    def cron(self, service: str) -> str:
        return self.at(posixpath.join(CRON_DIR, f"{service}-backup"))
