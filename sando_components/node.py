"""Node: the host config of one node (seed items 1, 4, 5, 6) as ONE resource, from a committed ref.

The Caddyfile, the systemd unit, the sshd drop-in, the fail2ban jail, the firewall and backup
scripts, the backup cron entry and the release root layout are one `HostConfig` resource
(providers/host.py), applied by one node-side script (sh/host.sh): each changed file is checked
by its own tool before it replaces the live one, installed atomically, and what reads it is
reloaded (a changed unit restarts the service, with its health check); a failed reload puts the
previous file back. Identical files change nothing.

Host files come from the server repo at `sando:bootstrap.ref` (a tag, branch or commit), read
with git: never from the working tree (an uncommitted edit never ships), never from outside the
repo (a symlink or a path leaving it fails at preview), and not per release: pinning an older
version never rolls host config back. In a rolling rollout a node's host config waits for the
previous batch like its switch does; with bytes to verify (sando:verifyAgainst, a promote) it waits
for the node's release too: a node refused there changes nothing (stack.host_waits_for).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import pulumi

from . import paths
from .providers import bluegreen
from .config import ConfigError, StackConfig
from .providers.host import HostConfig
from .target import NodeTarget

# item -> (config attribute of the source file, destination (service -> path), mode)
ITEMS: dict[str, tuple[str, object, int]] = {
    "caddyfile": ("caddyfile", lambda s: paths.CADDYFILE, 0o644),
    "unit": ("unit", paths.unit, 0o644),
    "sshdGit": ("sshd_git", lambda s: paths.for_service(paths.SSHD_GIT, s), 0o644),
    "fail2ban": ("fail2ban", lambda s: paths.for_service(paths.FAIL2BAN_JAIL, s), 0o644),
    "firewall": ("firewall", lambda s: paths.FIREWALL_SCRIPT, 0o755),
    "backup": ("backup_script", lambda s: paths.BACKUP_SCRIPT, 0o755),
}
SOURCE_ATTR = {item: attr for item, (attr, _, _) in ITEMS.items()}
CRON_SOURCE = "sando:bootstrap.backupSchedule"  # the cron entry is made by sando, not read from the repo


@dataclass(frozen=True)
class HostSources:
    """The host files of sando:bootstrap.ref: what every node gets."""

    ref: str | None
    commit: str | None
    files: dict[str, str] = field(default_factory=dict)  # item -> text
    sources: dict[str, str] = field(default_factory=dict)  # item -> path in the repo


@dataclass
class NodeArgs(NodeTarget):
    sources: HostSources
    version: str = ""  # the pinned version: a unit change is left to the switch when it restarts anyway
    token: pulumi.Input[str] | None = None  # the restart warning's bearer (a unit change restarts)
    after: list = field(default_factory=list)  # pointers of the previous rollout batch
    wait_for: list = field(default_factory=list)  # resources the host step waits for (stack.host_waits_for)


def _git(repo: str, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], input=data, capture_output=True)


def _blobs(repo: str, ids: list[str]) -> list[bytes]:
    out = _git(repo, "cat-file", "--batch", data=("\n".join(ids) + "\n").encode()).stdout
    blobs, pos = [], 0
    for _ in ids:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        blobs.append(out[end + 1:end + 1 + size])
        pos = end + 1 + size + 1
    return blobs


def _explain_missing(repo: str, commit: str, rel: str) -> str:
    """Why a path is not a plain file at the commit: a symlink on the way, or nothing there."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        entry = _git(repo, "ls-tree", "-z", commit, "--", "/".join(parts[:i])).stdout.decode(errors="replace")
        if not entry:
            break
        mode = entry.split()[0]
        if mode == "120000":
            return (f"{'/'.join(parts[:i])!r} is a symlink in the repo; host files are read as committed and a "
                    "symlink could point anywhere: commit the file itself")
        if i == len(parts) and mode == "040000":
            return f"{rel!r} is a directory"
    return f"{rel!r} is not a file"


def bootstrap_sources(cfg: StackConfig, repo: str) -> HostSources:
    """Resolve sando:bootstrap.ref and read every managed host file at that commit with git, before
    any resource is declared; ConfigError names the key."""
    b = cfg.bootstrap
    if not b.manage:
        return HostSources(None, None)
    res = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{b.ref}^{{commit}}")
    if res.returncode != 0:
        raise ConfigError(f"sando:bootstrap.ref: {b.ref!r} is not a branch, tag or commit of {repo} "
                          "(host files come from a committed ref: commit and tag the change first)")
    commit = res.stdout.decode().strip()
    at = f"at sando:bootstrap.ref {b.ref} ({commit[:12]}) in {repo}"
    items = [i for i in b.manage if i in ITEMS]
    rels = {i: getattr(b, SOURCE_ATTR[i]) for i in items}
    listing = _git(repo, "ls-tree", "-z", commit, "--", *rels.values()).stdout.decode(errors="replace") \
        if items else ""
    found = {}
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, oid = meta.split()
        found[path] = (mode, kind, oid)
    files, sources = {}, {}
    for item, rel in rels.items():
        mode, kind, oid = found.get(rel, ("", "", ""))
        if kind != "blob" or mode not in ("100644", "100755"):
            raise ConfigError(f"sando:bootstrap.{item}: {_explain_missing(repo, commit, rel)} {at}")
        sources[item] = rel
        files[item] = oid
    texts = dict(zip(files, _blobs(repo, list(files.values())))) if files else {}
    for item, data in texts.items():
        try:
            files[item] = data.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"sando:bootstrap.{item}: {rels[item]!r} is not UTF-8 text {at}") from None
    expected = f"{cfg.release_root}/current/"
    if "unit" in files and expected not in files["unit"]:
        raise ConfigError(f"sando:bootstrap.unit: {b.unit} does not run a binary under "
                          f"{expected} (sando:releaseRoot)")
    if "backup" in b.manage:
        files["cron"], sources["cron"] = cron_entry(cfg), CRON_SOURCE
    if cfg.switch.blue_green:  # issue 23: Caddy must read the upstream sando moves
        problem = bluegreen.caddyfile_problem(files.get("caddyfile"))
        if problem:
            raise ConfigError(f"sando:switch.strategy: blueGreen, but {b.caddyfile} {at}: {problem}")
    return HostSources(b.ref, commit, files, sources)


def cron_entry(cfg: StackConfig) -> str:
    """The backup's cron line; every value in it was checked to its grammar by config.py."""
    b = cfg.bootstrap
    return (f"# managed by sando: nightly database backup of {cfg.service}\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"{b.backup_schedule} {b.backup_user} {paths.BACKUP_SCRIPT}\n")


def host_files(cfg: StackConfig, sources: HostSources) -> dict[str, dict]:
    """{item: {path, mode, source, content}} in the order host.sh applies them."""
    out = {}
    for item, text in sources.files.items():
        if item == "cron":
            dest, mode = paths.cron(cfg.service), 0o644
        else:
            dest, mode = ITEMS[item][1](cfg.service), ITEMS[item][2]
        out[item] = {"path": dest, "mode": mode, "source": sources.sources[item], "content": text}
        if item in paths.LEGACY:
            out[item]["legacy"] = paths.LEGACY[item]
    return out


class Node(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("sando:index:Node", name, None, opts)
        cfg, hc = args.cfg, args.cfg.health_check
        warning = None
        if cfg.restart_warning_seconds > 0:
            warning = {"url": cfg.restart_warning_url(args.node), "seconds": cfg.restart_warning_seconds,
                       "onFailure": cfg.restart_warning_on_failure}
        files = host_files(cfg, args.sources)
        self.host_config = HostConfig(
            f"{name}-host",
            {"node": args.node.name, "connection": args.connection, "privateKey": args.private_key,
             "releaseRoot": cfg.release_root, "service": cfg.service,
             "ref": args.sources.ref, "commit": args.sources.commit, **files,  # one input per file
             "owner": cfg.bootstrap.owner, "version": args.version,
             "healthCheck": {"url": cfg.health_url(args.node), "caddyUrl": hc.caddy_url,
                             "timeoutSeconds": hc.timeout_seconds, "intervalSeconds": hc.interval_seconds},
             "warning": warning, "token": args.token if warning else None,
             "after": [p.outcome for p in args.after],
             # blueGreen: the upstream file the Caddyfile imports, made when missing (issue 23)
             "upstream": {"file": paths.UPSTREAM_FILE, "default": cfg.front(args.node)}
             if cfg.switch.blue_green else None},
            pulumi.ResourceOptions(parent=self, depends_on=list(args.wait_for) or None),
        )
        self.host = pulumi.Output.from_input(args.node.host)
        self.files = pulumi.Output.from_input({item: f["path"] for item, f in files.items()})
        self.register_outputs({"host": self.host, "files": self.files, "hostConfig": self.host_config.installed})
