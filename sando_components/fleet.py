"""What a stack's nodes run now, read for the operator commands (issue 20): `sando status`,
`promote` and `rollback` decide from the nodes, not from a previous run's outputs.

One exec per node (what the node holds, as the providers read it, plus sh/status.sh: the unit,
a health probe now, Caddy, the database's applied migrations, the switch history, the
pre-migration backups), every node at once, with the stack's own key and pinned host keys
from its config. The key is only ever in memory (the config comes from `pulumi config
--show-secrets --json` on a pipe); an unreachable node is a row saying why, not a gap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import config as config_model
from . import commands, history, paths, scripts, ssh, times
from .errors import OperatorError
from .transfer import NodeRelease

HISTORY_LINES = 200  # of the node's history, read by status/rollback


# --- the stack's config, as the program reads it -------------------------------------------------


def stack_config(entries: dict) -> config_model.StackConfig:
    """The validated config of `pulumi config --json --show-secrets` ({key: {value, secret}}):
    ConfigError names the key, as the program would."""
    raw = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in entries.items()}
    secret = frozenset(k for k, v in entries.items() if isinstance(v, dict) and v.get("secret"))
    return config_model.load({k: v for k, v in raw.items() if v is not None}, secret)


def conn(cfg: config_model.StackConfig, node: config_model.NodeConfig) -> ssh.Conn:
    """How the program's resources reach the node (the same connection): its pinned host key, its
    own key (sando:nodeKeys) or the stack's (or the agent), its proxyJump; a local shell for a local
    node."""
    from .stack import connection

    key = cfg.private_key(node)
    return ssh.Conn.from_props(connection(cfg, node), key.get_secret_value() if key else None, node.name)


# --- one node now ---------------------------------------------------------------------------


@dataclass
class Probe:
    code: int  # HTTP status, 0 = no answer
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def served(self) -> dict:
        """The app's JSON answer (version, commit), {} when it is not JSON."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def text(self) -> str:
        if self.code == 0:
            return f"no answer ({self.body.strip() or 'nothing listens'})"
        v = self.served.get("version")
        return ("ok" if self.ok else f"HTTP {self.code}") + (f" (serves {v})" if v else "")

    @classmethod
    def parse(cls, value: str | None) -> "Probe | None":
        if value is None:
            return None
        code, _, body = value.partition(" ")
        return cls(int(code) if code.isdigit() else 0, body)


@dataclass
class NodeNow:
    """One node as read now (error: why it could not be read; then nothing else is known)."""

    name: str
    host: str
    error: str | None = None
    live: str | None = None
    previous: str | None = None
    releases: dict[str, NodeRelease] = field(default_factory=dict)
    free_kib: int = 0
    unit: str = ""  # "active running", "failed failed", "inactive dead"
    unit_since: str = ""
    health: Probe | None = None
    caddy: str = ""
    caddy_health: Probe | None = None
    database: str = ""
    db: str = ""  # ok | missing | no migrations table | unreadable: ...
    applied: list[tuple[str, str]] = field(default_factory=list)  # (version, description) the database has
    history: list[dict] = field(default_factory=list)  # oldest first
    backups: list[str] = field(default_factory=list)  # newest first

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def live_commit(self) -> str | None:
        r = self.releases.get(self.live) if self.live else None
        return r.commit if r else None

    @property
    def active(self) -> bool:
        return self.unit.split()[:1] == ["active"]

    @property
    def last_deploy(self) -> dict | None:
        return self.history[-1] if self.history else None

    def problems(self) -> list[str]:
        """Why this node is not serving its live release healthily now ([] = it is)."""
        if self.error:
            return [f"{self.name} cannot be read ({self.error})"]
        out = []
        if not self.live:
            out.append(f"{self.name} has no live release")
        if not self.active:
            out.append(f"{self.name}'s service is {self.unit or 'unknown'}")
        if self.health is None or not self.health.ok:
            out.append(f"{self.name}'s health check says {self.health.text() if self.health else 'nothing'}")
        if self.caddy_health is not None and not self.caddy_health.ok:
            out.append(f"{self.name} through Caddy says {self.caddy_health.text()}")
        return out

    def as_json(self) -> dict:
        """For `sando status --json`: times ISO 8601 UTC."""
        if self.error:
            return {"node": self.name, "host": self.host, "reachable": False, "error": self.error}
        return {
            "node": self.name, "host": self.host, "reachable": True,
            "liveVersion": self.live, "liveCommit": self.live_commit, "previousVersion": self.previous,
            "unit": self.unit, "unitSince": self.unit_since,
            "health": _probe_json(self.health), "caddy": self.caddy, "caddyHealth": _probe_json(self.caddy_health),
            "database": self.database, "databaseState": self.db,
            "appliedMigrations": [f"{v} {d}" for v, d in self.applied],
            "freeKiB": self.free_kib,
            "releases": [{"version": r.version, "commit": r.commit, "createdAt": iso(r.created_at), "failed": r.failed}
                         for r in sorted(self.releases.values(), key=lambda r: r.created_at)],
            "lastDeploy": self.last_deploy, "backups": self.backups,
        }


def _probe_json(p: Probe | None) -> dict | None:
    return None if p is None else {"ok": p.ok, "status": p.code, "says": p.text()}


iso = times.iso  # the one time format (issue 20.9)


# --- the read (one exec per node) ------------------------------------------------------------------
# The first part is the providers' own read of what a node holds (sh/probe.sh, decoded by
# providers/base.py), then sh/status.sh, in the same exec.


def _holdings_command(cfg: config_model.StackConfig) -> str:
    return commands.probe(cfg.release_root, cfg.service)


def _holdings(out: str, node: str = "a node", root: str = ""):
    from .providers.base import parse_state

    return parse_state(out, 0, node, root)


def caddy_url(cfg: config_model.StackConfig) -> str | None:
    """The site through Caddy on the node: sando:healthCheck.caddyUrl (what the switch checks), else
    the health check's path on port 80 when sando manages Caddy."""
    if cfg.health_check.caddy_url:
        return cfg.health_check.caddy_url
    if "caddyfile" not in cfg.bootstrap.manage:
        return None
    return "http://127.0.0.1:80" + (re.sub(r"^https?://[^/]+", "", cfg.health_check.url) or "/")


def status_command(cfg: config_model.StackConfig, node: config_model.NodeConfig) -> str:
    """The one command run on the node: what it holds, then sh/status.sh."""
    status = scripts.command(
        "status", SERVICE=cfg.service, RELEASE_ROOT=cfg.release_root, HEALTH_URL=cfg.health_url(node),
        CADDY_URL=caddy_url(cfg) or "", **commands.db_params(cfg.service, cfg.migrations.database, None),
        BACKUP_DIR=cfg.migrations.backup_dir or paths.for_service(paths.DEFAULT_BACKUP_DIR, cfg.service),
        HISTORY=paths.HISTORY, HISTORY_LINES=HISTORY_LINES)
    return f"{{ {_holdings_command(cfg)}\n}}\n{status}"


def parse(name: str, host: str, out: str) -> NodeNow:
    state = _holdings(out, name)
    report = scripts.Report.parse(out, name)
    applied = []
    for row in report.all("applied"):
        v, _, d = row.partition(" ")
        applied.append((v, d))
    return NodeNow(
        name=name, host=host, live=state.live, previous=state.previous, releases=dict(state.releases),
        free_kib=state.free_kib, unit=(report.one("unit") or "").strip(),
        unit_since=times.from_systemd(report.one("unit-since") or ""),
        health=Probe.parse(report.one("health")), caddy=report.one("caddy") or "",
        caddy_health=Probe.parse(report.one("caddy-health")), database=report.one("database") or "",
        db=report.one("db") or "", applied=applied,
        history=[r for r in map(history.parse, report.all("history")) if r], backups=report.all("backup"))


def read_node(cfg: config_model.StackConfig, node: config_model.NodeConfig) -> NodeNow:
    try:
        res = ssh.run(conn(cfg, node), status_command(cfg, node), timeout=60, check=False)
        if res.rc != 0 and not scripts.Report.parse(res.out, node.name).has("current"):
            return NodeNow(node.name, node.host, error=f"the status read exited {res.rc}: "
                                                       f"{(res.err or res.out).strip()[-200:]}")
        return parse(node.name, node.host, res.out)
    except OperatorError as exc:
        return NodeNow(node.name, node.host, error=_reason(str(exc), node.name))


def _reason(text: str, name: str) -> str:
    """The error without the node's label in front (the row names the node)."""
    text = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return re.sub(rf"^{re.escape(name)} \([^)]*\): ", "", text)


def disconnect() -> None:
    """Close the connections this process opened (a command ends; a test's next command starts
    afresh, as an operator's next `sando` does; connections kept by sando's keeper stay there), and
    end the local node's streams still running (a `sando logs -f` ended by Ctrl-C)."""
    from . import localnode

    ssh.close_all()
    localnode.end_streams()


def fetch_command(path: str) -> str:
    """Read one release file off a node as base64 text (one exec per file, read-only)."""
    return f"base64 -w0 -- {shlex.quote(path)}"


def fetch_release(cfg: config_model.StackConfig, node: config_model.NodeConfig, version: str,
                  files: dict[str, str]) -> int:
    """Copy into the local object store (build.object_path) each file of release `version` on the
    node whose bytes it does not hold yet, each checked against its sha256: `sando promote` ships the
    source's bytes, not a local build (issue 22.1). Returns the bytes fetched."""
    import base64
    import hashlib

    from . import build

    got = 0
    for rel, digest in sorted(files.items()):
        obj = build.object_path(digest)
        if obj.exists():
            continue
        path = f"{cfg.release_root}/{paths.RELEASES}/{version}/{rel}"
        res = ssh.run(conn(cfg, node), fetch_command(path), timeout=600, check=False)
        if res.rc != 0:
            raise OperatorError(f"{node.name}: cannot read {path} ({(res.err or res.out).strip()[-200:]})")
        data = base64.b64decode(res.out)
        if hashlib.sha256(data).hexdigest() != digest:
            raise OperatorError(f"{node.name}: {path} does not match its manifest's sha256 {digest}; "
                                "its release changed on the node: redeploy it before promoting")
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_name(f"{obj.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, obj)
        got += len(data)
    return got


def read(cfg: config_model.StackConfig) -> list[NodeNow]:
    """Every node of the stack now, all at once, in config order."""
    with ThreadPoolExecutor(max_workers=min(64, len(cfg.nodes))) as pool:
        return list(pool.map(lambda n: read_node(cfg, n), cfg.nodes))


# --- logs, a shell, a restart (issue 20.8) ----------------------------------------------------------
# Over paramiko, as the providers connect: the stack's key stays in this process's memory and the
# host key is the pinned one; nothing is written to disk and no key is on any command line. A local
# node: a local shell, as its deploy steps run (localnode).


def logs_command(service: str, release_root: str, lines: int | None = None, since: str | None = None,
                 follow: bool = False) -> str:
    """sh/logs.sh: journalctl of the service (the last `lines` entries, --since, then follow); of
    its blueGreen instances when the node records a live one."""
    return scripts.command("logs", SERVICE=service, RELEASE_ROOT=release_root,
                           N_LINES="" if lines is None else int(lines), SINCE=since or "", FOLLOW=1 if follow else 0)


RESTART_LOCK_WAIT = scripts.RESTART_LOCK_WAIT  # seconds `sando restart` waits for a switch or restart at work on its node


def restart_command(cfg: config_model.StackConfig, node: config_model.NodeConfig, commit: str | None,
                    deploy: dict, warn: bool) -> str:
    """sh/restart.sh (with sh/history.sh) for one node: warning, restart, health check, history."""
    seconds = cfg.restart_warning_seconds if warn else 0
    text = scripts.render_inline(
        scripts.params(SERVICE=cfg.service, RELEASE_ROOT=cfg.release_root, HEALTH_URL=cfg.health_url(node),
                       TIMEOUT=int(cfg.health_check.timeout_seconds + 0.999), WARN_URL=cfg.restart_warning_url(node),
                       WARN_SECONDS=seconds, H_FILE=paths.HISTORY, H_VERSION="", H_COMMIT=commit or "",
                       H_BY=deploy["by"], H_VIA=deploy["via"],
                       H_NOW="1" if deploy.get("now") and cfg.restart_warning_seconds > 0 else "",
                       H_WARN_SECONDS=seconds, H_KEEP=history.KEEP, LOCK_WAIT=RESTART_LOCK_WAIT),
        scripts.source("history.sh") + "\n" + scripts.source("restart.sh"))
    return shlex.join(["sh", "-c", text, "sando-restart"])


def restart_stdin(cfg: config_model.StackConfig, warn: bool) -> bytes:
    """The bearer header line restart.sh reads first (an empty line: no warning)."""
    token = cfg.cli_service_token.get_secret_value() if cfg.cli_service_token else ""
    return (f"Authorization: Bearer {token}\n" if warn and token and cfg.restart_warning_seconds > 0 else "\n").encode()


def _client(c: ssh.Conn):
    """A connection of its own (not the pool's): it may stay open as long as a shell or a follow."""
    return ssh._connect(c)


class _Lines:
    """Bytes as they come, written to `out` a whole line at a time, each after `prefix`."""

    def __init__(self, out, prefix: str, lock: threading.Lock | None):
        self.out, self.prefix, self.lock, self.pending = out, prefix, lock, b""

    def feed(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        if lines:
            self._write("".join(f"{self.prefix}{line.decode(errors='replace')}\n" for line in lines))

    def close(self) -> None:
        if self.pending:
            self._write(f"{self.prefix}{self.pending.decode(errors='replace')}\n")
            self.pending = b""

    def _write(self, text: str) -> None:
        with self.lock or contextlib.nullcontext():
            self.out.write(text)
            self.out.flush()


def stream(c: ssh.Conn, command: str, out, err=None, prefix: str = "", stdin: bytes | None = None,
           lock: threading.Lock | None = None) -> int:
    """Run a command, writing its stdout to `out` and its stderr to `err` (`out` when None) line by
    line as they come, each line after `prefix`; returns its exit status. The two are read apart:
    sshd forwards them as two streams, so no order between them survives the trip (a line the node
    wrote to stderr first may arrive after stdout's). Ctrl-C closes the channel. A local node: the
    same command in a local shell (localnode.stream)."""
    import select

    to_out, to_err = _Lines(out, prefix, lock), _Lines(out if err is None else err, prefix, lock)
    if c.local:
        from . import localnode

        try:
            return localnode.stream(c, command, to_out.feed, to_err.feed, stdin=stdin)
        finally:
            to_out.close()
            to_err.close()
    client = _client(c)
    try:
        chan = client.get_transport().open_session(timeout=ssh.CONNECT_TIMEOUT)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
        while True:
            select.select([chan], [], [], 1.0)  # wakes on stdout, stderr or the close
            moved = False
            while chan.recv_stderr_ready():
                to_err.feed(chan.recv_stderr(65536))
                moved = True
            while chan.recv_ready():
                to_out.feed(chan.recv(65536))
                moved = True
            # the exit status comes after the last data (SSH keeps a channel's messages in order)
            if not moved and chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if not moved and chan.eof_received:  # the pipe stays readable from the EOF to the exit status
                time.sleep(0.01)
        to_out.close()
        to_err.close()
        return chan.recv_exit_status()
    finally:
        client.close()


def _fileno(stream) -> int | None:
    """The stream's file descriptor, None for an in-memory one (tests)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def _write(stream, fd: int | None, data: bytes) -> None:
    if fd is not None:
        os.write(fd, data)
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def interactive(c: ssh.Conn, command: str | None, stdin, stdout, stderr=None) -> int:
    """A shell (or `command`) on the node. On a terminal: a pty of the terminal's size, the local
    terminal in raw mode until the session ends. Otherwise stdin is sent as it is read, the output
    copied to stdout and the errors to stderr (stdout when None); the exit status is the remote one.
    A local node: the same in a local shell as root (localnode.interactive), on the terminal itself."""
    import select
    import shutil
    import termios
    import tty

    fd_in = _fileno(stdin)
    is_tty = fd_in is not None and os.isatty(fd_in)
    stderr = stdout if stderr is None else stderr
    if c.local:
        from . import localnode

        out_fd, err_fd = _fileno(stdout), _fileno(stderr)
        rc, out, err = localnode.interactive(c, command, fd_in, b"" if fd_in is not None else stdin.read().encode(),
                                             out_fd, err_fd)
        if out:
            _write(stdout, None, out)
        if err:
            _write(stderr, None, err)
        return rc
    client = _client(c)
    saved = None
    try:
        chan = client.get_transport().open_session(timeout=ssh.CONNECT_TIMEOUT)
        if is_tty:
            size = shutil.get_terminal_size()
            chan.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns, height=size.lines)
        if command:
            chan.exec_command(command)
        else:
            chan.invoke_shell()
        out_fd, err_fd = _fileno(stdout), _fileno(stderr)
        if is_tty:
            saved = termios.tcgetattr(fd_in)
            tty.setraw(fd_in, termios.TCSADRAIN)  # keeps what was typed ahead
        sources = [chan] + ([fd_in] if fd_in is not None else [])
        while True:
            ready, _, _ = select.select(sources, [], [], 1.0)
            while chan.recv_stderr_ready():  # without a pty the command's errors come apart
                _write(stderr, err_fd, chan.recv_stderr(65536))
            if chan.recv_ready():
                _write(stdout, out_fd, chan.recv(65536))
            elif chan.eof_received or chan.closed:  # the command's output ended (its errors with it)
                break
            if fd_in is not None and fd_in in ready:
                data = os.read(fd_in, 4096)
                if data:
                    chan.sendall(data)
                else:
                    chan.shutdown_write()
                    sources.remove(fd_in)
            if fd_in is None and chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
        return chan.recv_exit_status()
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        client.close()
