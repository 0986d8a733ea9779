"""What every sando provider shares: how a resource reaches its node, the secret outputs,
and what the node holds (read once per node and process, then kept up to date by the
providers' own changes, so a no-op `pulumi up` costs one round trip per node).

Every resource takes `connection` (host, port, user, hostKey, insecure) and the secret
`privateKey` (None = SSH agent); both are outputs too, because Pulumi hands a provider
only the old outputs on delete. `privateKey` and `token` are declared secret outputs, so
state holds them encrypted. `node` is the node's name, for messages.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import pulumi
from pulumi.dynamic import Resource, ResourceProvider

from .. import commands, paths, scripts, ssh
from ..errors import OperatorError
from ..transfer import NodeRelease

SECRET_OUTPUTS = ["privateKey", "token"]
# How a resource reaches its node. A change here (a rotated key, another user) is an update
# that only refreshes the outputs, so that a later delete uses the new credentials.
AUTH = ["connection", "privateKey"]


def conn_of(props: dict) -> ssh.Conn:
    return ssh.Conn.from_props(props["connection"], props.get("privateKey"), props.get("node"))


def target_of(props: dict) -> tuple[str, int]:
    c = props["connection"]
    return (c["host"], int(c["port"]))


def node_of(props: dict) -> str:
    return props.get("node") or props["connection"]["host"]


def changed(olds: dict, news: dict, keys: list[str]) -> list[str]:
    return [k for k in keys if olds.get(k) != news.get(k)]


def public(props: dict) -> dict[str, Any]:
    """Props minus the dynamic-provider bookkeeping key."""
    return {k: v for k, v in props.items() if k != "__provider"}


def refresh_auth(olds: dict, news: dict) -> dict:
    return {**public(olds), **{k: news.get(k) for k in AUTH}}


_said_auth: set[str] = set()


def say_auth_only(props: dict, keys: list[str]) -> None:
    """A diff of nothing but how sando connects (a rotated key, another user: issue 18.8): the
    node's resources update only to record the new credentials. Said once per node and run."""
    from .. import diagnostics

    node = node_of(props)
    with _guard:
        if node in _said_auth:
            return
        _said_auth.add(node)
    what = " and ".join(AUTH_WORDS.get(k, k) for k in keys)
    diagnostics.log("info", f"{node}: only how sando connects changed ({what}); nothing on the node changes: its "
                            "resources record the new credentials (for later refreshes and deletes)")


AUTH_WORDS = {"privateKey": "its SSH key", "connection": "its address, port, user or host key"}


class NodeResource(Resource):
    """A dynamic resource acting on a node: `outputs` start unknown; secrets stay secret outputs."""

    _provider_class: type[ResourceProvider]
    _output_names: tuple[str, ...] = ()

    def __init__(self, name: str, props: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            self._provider_class(), name, {**props, **dict.fromkeys(self._output_names)},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)),
        )


# --- what a node holds ------------------------------------------------------------------------


# host config (issue 18.5): the same read also takes the sums and modes of the managed host files
# and Caddy's state (sh/host-probe.sh, its JSON report lines beside the probe's own lines), so a
# plain preview sees a hand edit at no extra round trip


@dataclass(frozen=True)
class HostState:
    files: dict[str, tuple[str, int]]  # path -> (sha256, mode) of each managed file that exists
    caddy_active: str = "unknown"  # systemctl is-active caddy
    caddy_enabled: str = "unknown"  # systemctl is-enabled caddy


def host_probe(service: str) -> str:
    return scripts.command("host-probe", FILES="\n".join(paths.host_files(service)), CADDY=1)


def parse_host_state(out: str) -> HostState:
    report = scripts.Report.parse(out)
    files = {}
    for value in report.all("host-file"):
        digest, mode, path = value.split(" ", 2)
        files[path] = (digest, int(mode, 8))
    caddy = (report.one("host-caddy") or "").split() + ["unknown", "unknown"]
    return HostState(files, caddy[0], caddy[1])


@dataclass(frozen=True)
class NodeState:
    live: str | None  # version `current` points at
    previous: str | None
    free_kib: int
    zstd: bool
    active: bool  # the service runs
    releases: dict[str, NodeRelease] = field(default_factory=dict)  # sando's, by version
    foreign: tuple[str, ...] = ()  # directories under releases/ that sando did not make
    host: HostState | None = None  # the host files as the node has them (host config, issue 18.5)
    root_missing: bool = False  # no release root yet: nothing deployed here
    instance: str | None = None  # blueGreen: the live instance's port (<release root>/.sando/instance)
    instance_active: bool = False  # blueGreen: that instance runs
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)  # failed release -> (when, why)
    arch: str = ""  # `uname -m` ("" = not read: nothing is checked)
    glibc: str = ""  # `getconf GNU_LIBC_VERSION` ("glibc 2.36"), "none" without glibc ("" = not read)
    nft: bool | None = None  # nft is installed (blueGreen's front); None = not read
    # the migrations the database has applied (versions), read with the gate on (sh/db.sh: none
    # when the database or its table does not exist yet); None = not read, or unreadable
    applied: tuple[str, ...] | None = None

    def held(self) -> list[NodeRelease]:
        """The node's releases, best delta base first: live, previous, then newest."""
        rank = {self.live: 0, self.previous: 1}
        return sorted(self.releases.values(), key=lambda r: (rank.get(r.version, 2), -r.created_at))

    def with_release(self, r: NodeRelease) -> "NodeState":
        return replace(self, releases={**self.releases, r.version: r})


def _version(target: str | None) -> str | None:
    return paths.NodePaths.version_of_target(target) if target and target != "-" else None


def releases_of(report: scripts.Report, tag: str = "", node: str = "a node",
                root: str = "") -> tuple[dict[str, NodeRelease], tuple[str, ...]]:
    """The releases (by version) and foreign directories of a list_releases listing (lib.sh).
    A release whose manifest cannot be read or makes no sense is an error naming it: it must
    not pass for a release of another commit, nor be skipped as if absent."""
    failed = set(report.all(f"{tag}failed"))
    releases = {}
    where = f"{root}/{paths.RELEASES}" if root else paths.RELEASES
    for v, why in report.named(f"{tag}unreadable").items():
        raise OperatorError(f"{node}: cannot read {where}/{v}/{paths.MANIFEST} ({why.strip()}); fix its "
                            f"permissions or move releases/{v} away on the node")
    for v, text in report.named(f"{tag}release").items():
        try:
            releases[v] = NodeRelease.from_manifest(v, text, v in failed)
        except ValueError as exc:
            raise OperatorError(f"{node}: {where}/{v}/{paths.MANIFEST} is broken ({exc}); sando cannot tell which "
                                f"commit releases/{v} holds: move it away on the node and run pulumi up again") from None
    return releases, tuple(sorted(report.all(f"{tag}foreign")))


def failures_of(report: scripts.Report, tag: str = "") -> dict[str, tuple[float, str]]:
    """When and why each release marked failed on the node failed there (lib.sh's TAGfailed-why)."""
    out = {}
    for v, value in report.named(f"{tag}failed-why").items():
        epoch, _, why = value.partition(" ")
        out[v] = (float(epoch) if epoch.isdigit() else 0.0, why.strip())
    return out


def parse_state(out: str, rc: int = 0, node: str = "a node", root: str = "", err: str = "") -> NodeState:
    """What sh/probe.sh reported; an OperatorError naming the node and what could not be read."""
    report = scripts.Report.parse(out, node)
    if rc == scripts.code("EX_UNREADABLE"):
        raise OperatorError(f"{node}: cannot read {report.one('unreadable') or '?'}; "
                            "fix it on the node and run pulumi up again")
    if rc != 0:
        raise OperatorError(f"{node}: reading what the node holds failed (exit {rc}: {err.strip()[-300:]}); "
                            "fix it on the node and run pulumi up again")
    free = report.one("free") or ""
    if not free.isdigit():
        raise OperatorError(f"{node}: cannot read the free space under {root or 'the release root'} ({free!r})")
    if report.one("root") not in ("ok", "missing"):
        raise OperatorError(f"{node}: the node read did not say whether {root or 'the release root'} exists")
    releases, foreign = releases_of(report, "", node, root)
    inst = report.one("instance")
    return NodeState(live=_version(report.one("current")), previous=_version(report.one("previous")),
                     free_kib=int(free), zstd=report.one("zstd") == "yes",
                     active=(report.one("active") or "").strip() in ("active", "reloading", "activating"),
                     releases=releases, foreign=foreign, root_missing=report.one("root") == "missing",
                     host=parse_host_state(out), instance=(inst or "").split(" ")[0] or None,
                     instance_active=(inst or "").split(" ")[-1] in ("active", "reloading", "activating"),
                     failures=failures_of(report),
                     arch=(report.one("arch") or "").strip(),
                     glibc=(report.one("glibc") or "").strip(),
                     nft={"yes": True, "no": False}.get(report.one("nft") or ""),
                     applied=applied_of(report))


def applied_of(report: scripts.Report) -> tuple[str, ...] | None:
    """The versions of the migrations the database has applied, as sh/db.sh reported them (none for
    a database or table not there yet); None when it was not read or could not be."""
    db = report.one("db")
    if db == "ok":
        return tuple(row.partition(" ")[0] for row in report.all("applied"))
    return () if db in ("missing", "no migrations table") else None


_states: dict[tuple, NodeState] = {}
_state_locks: dict[tuple, threading.Lock] = {}
_guard = threading.Lock()


def _state_key(props: dict) -> tuple:
    host, port = target_of(props)
    return (host, port, props["releaseRoot"], props["service"])


def node_state(props: dict, *, fresh: bool = False) -> NodeState:
    """What the node holds: read once per process (one round trip), then the cached copy."""
    key = _state_key(props)
    with _guard:
        lock = _state_locks.setdefault(key, threading.Lock())
    with lock:
        if not fresh and key in _read_failed:
            raise _read_failed[key]  # this run's read failed (the head start's, say): said, not tried again
        if fresh or key not in _states:
            # one exec: the host files' state (sh/host-probe.sh, host config: issue 18.5), then the
            # release-path read (sh/probe.sh, last: its exit code is the read's)
            # (with the gate on, the head start's read also reads the database's migrations: dbRead)
            command = host_probe(props["service"]) + "\n" + commands.probe(props["releaseRoot"], props["service"],
                                                                           props.get("dbRead"))
            try:
                res = ssh.run(conn_of(props), command, check=False)
                _states[key] = parse_state(res.out, res.rc, node_of(props), props["releaseRoot"], res.err)
            except OperatorError as exc:  # the node's own error: a second try would only wait as long again
                _read_failed[key] = exc
                raise
            _read_failed.pop(key, None)
        return _states[key]


_read_failed: dict[tuple, OperatorError] = {}


# Nodes this run could not reach (their Reach resource's check found it in a run that skips its
# preview, diagnostics.skips_preview): the node's other resources change nothing there, and its
# pointer carries the message to the verdict, which says it once at the end (issue 19.3).
_unreachable: dict[tuple, str] = {}


def node_key(props: dict) -> tuple:
    """One node of this run, as the providers' caches know it."""
    return _state_key(props)


def unreachable(props: dict) -> str | None:
    """Why this run cannot reach the node (its Reach found so), else None."""
    with _guard:
        return _unreachable.get(_state_key(props))


def mark_unreachable(props: dict, message: str, why: str = "not reached") -> None:
    """Hold the node out of this run: `message` for the verdict, `why` for its resources' warnings
    (not reached, a pin sando:verifyAgainst refuses there, or its release refused for other bytes
    than the source stack verified: issue 22.1)."""
    with _guard:
        _unreachable[_state_key(props)] = message
        _held_why[_state_key(props)] = why


def held_why(props: dict) -> str:
    """In the node's own warnings, why it is held out of this run (mark_unreachable)."""
    with _guard:
        return _held_why.get(_state_key(props), "not reached")


_held_why: dict[tuple, str] = {}


def prefetch(props: dict) -> None:
    """Start reading what the node holds in the background (the first resource of a node to be
    checked does this), so the connection and the read are done by the time a diff needs them.
    A failure here is forgotten: node_state() then tries again and reports it."""
    if not isinstance(props.get("releaseRoot"), str) or not isinstance(props.get("service"), str) \
            or not isinstance(props.get("connection"), dict):
        return  # unknown in a preview: nothing to read yet
    key = _state_key(props)
    with _guard:
        if key in _states or key in _prefetching:
            return
        _prefetching.add(key)

    def read():
        try:
            node_state(props)
        except Exception:  # noqa: BLE001 - reported by the diff that needs it
            pass

    threading.Thread(target=read, daemon=True).start()


_prefetching: set[tuple] = set()


def warm(_args: dict) -> None:
    """The program's head start (headstart.provider): load what reading a node needs while the
    program still works (this module's import has loaded the providers already), and start the
    connection keeper if none runs (keeper.py)."""
    from .. import keeper

    if keeper.persist_seconds() > 0:
        keeper.ensure()
    else:
        import paramiko  # noqa: F401


def read_nodes(args: dict) -> None:
    """The program's head start (headstart.reads): start reading every node, all at once, before the
    engine gets to the nodes' Reach checks, which it makes one at a time."""
    for props in args.get("nodes") or []:
        if isinstance(props, dict):
            prefetch(with_plain_key(props))


def with_plain_key(props: dict) -> dict:
    """A head start's node props with its key as the resources have it (the invoke marks it secret)."""
    key = props.get("privateKey")
    return {**props, "privateKey": key.get("value") if isinstance(key, dict) else key}


class NodeProvider(ResourceProvider):
    """A provider of node resources: its check() starts reading the node early (see prefetch)."""

    def check(self, _olds, news):
        prefetch(news)
        return super().check(_olds, news)


def remember(props: dict, state: NodeState) -> None:
    """Record what a provider just changed on the node (so nobody reads it again)."""
    with _guard:
        _states[_state_key(props)] = state
