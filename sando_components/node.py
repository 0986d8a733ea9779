"""Node: one-time bootstrap of a host (seed items 1, 4, 5, 6), diffed by Pulumi.

Installs the Caddyfile, the systemd unit, the security configs, the backup
script with its cron entry and the release root layout. Hooks run only when
their file changed: `systemctl reload caddy` after the Caddyfile,
`systemctl daemon-reload` after the unit. sshd-git.conf and the fail2ban jail
are installed without reloading sshd/fail2ban: host hardening changes are
applied by the operator (design doc item 5), sando only keeps the files right.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi

from . import commands, paths
from .config import ConfigError, StackConfig
from .providers import RemoteCommand, RemoteFile
from .target import NodeTarget

# item -> (config attribute of the source file, logical destination, mode)
FILES = {
    "sshdGit": ("sshd_git", paths.SSHD_GIT, 0o644),
    "fail2ban": ("fail2ban", paths.FAIL2BAN_JAIL, 0o644),
    "firewall": ("firewall", paths.FIREWALL_SCRIPT, 0o755),
    "backup": ("backup_script", paths.BACKUP_SCRIPT, 0o755),
}


@dataclass
class NodeArgs(NodeTarget):
    sources: dict[str, str]  # managed item -> file content, from bootstrap_sources()


def _read(repo: str, rel: str, key: str) -> str:
    path = Path(repo) / rel
    if not path.is_file():
        raise ConfigError(f"sando:bootstrap.{key}: {rel!r} is not a file in {repo}")
    return path.read_text()


SOURCE_ATTR = {"caddyfile": "caddyfile", "unit": "unit", **{item: attr for item, (attr, _, _) in FILES.items()}}


def bootstrap_sources(cfg: StackConfig, repo: str) -> dict[str, str]:
    """Read and check every managed bootstrap file (from the server repo's working tree)
    before any resource is declared; ConfigError names the key."""
    sources = {item: _read(repo, getattr(cfg.bootstrap, SOURCE_ATTR[item]), item)
               for item in cfg.bootstrap.manage}
    expected = f"{cfg.release_root}/current/"
    if "unit" in sources and expected not in sources["unit"]:
        raise ConfigError(f"sando:bootstrap.unit: {cfg.bootstrap.unit} does not run a binary under "
                          f"{expected} (sando:releaseRoot)")
    return sources


def cron_entry(cfg: StackConfig) -> str:
    b = cfg.bootstrap
    return (f"# managed by sando: nightly database backup of {cfg.service}\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"{b.backup_schedule} {b.backup_user} {paths.BACKUP_SCRIPT}\n")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Node(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:Node", name, None, opts)
        cfg, np = args.cfg, paths.NodePaths(args.cfg.release_root)
        manage = cfg.bootstrap.manage
        conn = dict(node=args.node.name, connection=args.connection, private_key=args.private_key,
                    release_root=cfg.release_root, service=cfg.service)
        child = pulumi.ResourceOptions(parent=self)

        layout = [commands.mkdir_p(np.releases)]
        if cfg.bootstrap.owner:
            layout.append(commands.chown_r(cfg.bootstrap.owner, cfg.release_root))
        self.layout = RemoteCommand(f"{name}-layout", **conn, create=" && ".join(layout), opts=child)

        files: dict[str, pulumi.Output[str]] = {}
        if "caddyfile" in manage:
            text = args.sources["caddyfile"]
            f = RemoteFile(f"{name}-caddyfile", **conn, path=paths.CADDYFILE, content=text, mode=0o644,
                           opts=child)
            RemoteCommand(f"{name}-caddy-reload", **conn, create=commands.reload_caddy(),
                          triggers=[_sha(text)], opts=pulumi.ResourceOptions(parent=self, depends_on=[f]))
            files["caddyfile"] = f.path
        if "unit" in manage:
            text = args.sources["unit"]
            f = RemoteFile(f"{name}-unit", **conn, path=paths.unit(cfg.service), content=text, mode=0o644, opts=child)
            RemoteCommand(f"{name}-daemon-reload", **conn, create=commands.install_unit(cfg.service),
                          triggers=[_sha(text)], opts=pulumi.ResourceOptions(parent=self, depends_on=[f]))
            files["unit"] = f.path
        for item, (_, dest, mode) in FILES.items():
            if item in manage:
                files[item] = RemoteFile(f"{name}-{item}", **conn, path=dest, content=args.sources[item],
                                         mode=mode, opts=child).path
        if "backup" in manage:
            files["cron"] = RemoteFile(f"{name}-cron", **conn, path=paths.cron(cfg.service), content=cron_entry(cfg),
                                       mode=0o644, opts=child).path

        self.host = pulumi.Output.from_input(args.node.host)
        self.files = pulumi.Output.all(**files) if files else pulumi.Output.from_input({})
        self.register_outputs({"host": self.host, "files": self.files})
