"""Every remote location sando touches, named once (like Capistrano's paths.rb).

Nodes are real hosts (the test nodes too: real systemd machines in namespaces),
so every path here is the real one on the node.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

# Under the release root (node scripts run there, so they use these relative names):
RELEASES = "releases"  # releases/<version>/, one per retained version
CURRENT = "current"  # -> releases/<live version>
PREVIOUS = "previous"  # -> releases/<rollback target>
STAGING_PREFIX = ".staging-"
MANIFEST_DIR = ".sando"
MANIFEST = f"{MANIFEST_DIR}/manifest.json"
SUMS = f"{MANIFEST_DIR}/SHA256SUMS"
FAILED = f"{MANIFEST_DIR}/failed"  # written into a release that failed its start or health check
ERROR_PAGES = "error-pages"
HISTORY = f"{MANIFEST_DIR}/history"  # <release root>/.sando/history: one JSON line per switch (who, what, how)
INSTANCE = f"{MANIFEST_DIR}/instance"  # blueGreen: the port of the live instance (<release root>/.sando/instance)
INSTANCES = f"{MANIFEST_DIR}/instances"  # blueGreen: <port> -> ../../releases/<v>, the release each instance runs
SWITCH_LOCK = f"{MANIFEST_DIR}/switch.lock"  # blueGreen: one switch at a time on a node
FRONT_NFT = f"{MANIFEST_DIR}/front.nft"  # blueGreen: the nft ruleset pointing Caddy's upstream port at the live instance
FRONT_UNIT = "/etc/systemd/system/sando-front.service"  # blueGreen: loads FRONT_NFT at boot, before Caddy

# What the node-side scripts (sh/*.sh) call these: scripts.py sets them before every step.
SCRIPT_PATHS = {
    "P_RELEASES": RELEASES, "P_CURRENT": CURRENT, "P_PREVIOUS": PREVIOUS, "P_STAGING_PREFIX": STAGING_PREFIX,
    "P_MANIFEST_DIR": MANIFEST_DIR, "P_MANIFEST": MANIFEST, "P_SUMS": SUMS, "P_FAILED": FAILED,
    "P_ERROR_PAGES": ERROR_PAGES, "P_INSTANCE": INSTANCE, "P_INSTANCES": INSTANCES, "P_SWITCH_LOCK": SWITCH_LOCK,
    "P_FRONT_NFT": FRONT_NFT, "P_FRONT_UNIT": FRONT_UNIT,
}
# Pre-migration backups kept in the backup directory (the newest; older ones are removed).
BACKUPS_KEPT = 10

# Bootstrap destinations of the design doc's node-bootstrap items.
CADDYFILE = "/etc/caddy/Caddyfile"
UNIT_DIR = "/etc/systemd/system"
# the sshd drop-in and the fail2ban jail go where their own headers say (e.g. "# /etc/fail2ban/jail.d/
# makenotwork-sshd.conf"); earlier sando versions put them at the LEGACY paths (removed when identical)
SSHD_GIT = "/etc/ssh/sshd_config.d/{service}-git.conf"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/{service}-sshd.conf"
LEGACY = {"sshdGit": "/etc/ssh/sshd_config.d/sshd-git.conf", "fail2ban": "/etc/fail2ban/jail.d/sshd.conf"}
FIREWALL_SCRIPT = "/usr/local/sbin/setup-firewall.sh"
BACKUP_SCRIPT = "/usr/local/sbin/backup-db.sh"
CRON_DIR = "/etc/cron.d"
HOST_PREV_DIR = "/var/lib/sando/host-prev"  # the previous copy of each host file sando replaced

# Where the service keeps its data (defaults; the migration gate reads the unit's env file).
DEFAULT_DATABASE = "/var/lib/{service}/{service}.db"
DEFAULT_ENV_FILE = "/etc/{service}/{service}.env"
DEFAULT_BACKUP_DIR = "/var/backups/{service}"


@dataclass(frozen=True)
class NodePaths:
    release_root: str  # e.g. /opt/makenotwork

    @property
    def releases(self) -> str:
        return posixpath.join(self.release_root, RELEASES)

    def release(self, version: str) -> str:
        return posixpath.join(self.releases, version)

    @staticmethod
    def link_target(version: str) -> str:
        """Target of `current`/`previous`, relative to the release root (releases/<v>)."""
        return posixpath.join(RELEASES, version)

    @staticmethod
    def version_of_target(target: str) -> str | None:
        """Inverse of link_target, tolerant of absolute targets written by hand."""
        target = target.rstrip("/")
        parent, name = posixpath.split(target)
        return name if name and posixpath.basename(parent) == RELEASES else None


def unit(service: str) -> str:
    return posixpath.join(UNIT_DIR, f"{service}.service")


def cron(service: str) -> str:
    return posixpath.join(CRON_DIR, f"{service}-backup")


def host_files(service: str) -> list[str]:
    """Every host file sando may manage on a node (the node probe reads their sums and modes)."""
    return [CADDYFILE, unit(service), for_service(SSHD_GIT, service), for_service(FAIL2BAN_JAIL, service),
            FIREWALL_SCRIPT, BACKUP_SCRIPT, cron(service), *LEGACY.values()]


def for_service(template: str, service: str) -> str:
    return template.format(service=service)


# blueGreen (sando:switch.strategy, issue 23): the one Caddy file sando owns, imported by the
# operator's Caddyfile (`import /etc/caddy/sando-upstream.caddy` where its reverse_proxy was);
# the template unit `<service>@.service` derived from the installed unit; each instance's port
# in an env file read after the unit's own (so it wins), by instance name.
UPSTREAM_FILE = "/etc/caddy/sando-upstream.caddy"
INSTANCE_ENV_DIR = "/var/lib/sando/instances"


def unit_template(service: str) -> str:
    return posixpath.join(UNIT_DIR, f"{service}@.service")
