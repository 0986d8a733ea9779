"""SSH transport of sando's resource providers (paramiko), with pinned host keys.

One connection per (host, port, user) is kept open for the life of the provider
process and shared by every resource on that node, so a deploy pays the SSH
handshake once per node. Everything sando does on a node is one `exec` channel
(a command, its stdin streamed in, its output read back): no SFTP, so each step
costs one round trip. The private key stays in memory: it is never written to
disk or passed on a command line.

A local node (`sando:nodes[i].local: true`: the machine sando runs on) takes the same
commands through a local `/bin/sh -c` instead of an SSH exec (localnode.py): as root
directly, otherwise under `sudo -n`; same stdin streaming, same Result, same messages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .errors import OperatorError

# paramiko is imported where it is used: the program process only declares resources and
# never connects, so it does not pay for loading it.

CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 600.0
CHUNK = 256 * 1024


class RemoteError(OperatorError):
    pass


class LostSession(EOFError):
    """A command's session ended without an exit status: its connection is not to be trusted."""


class TransportError(RemoteError):
    """The connection failed during a remote command (it may have run in part)."""


class _Unstarted(EOFError):
    """A session could not be opened on a pooled connection: nothing ran, so any command may be
    sent again on a fresh connection (a connection kept from an earlier run may have died since)."""


@dataclass(frozen=True)
class Conn:
    host: str
    port: int
    user: str
    host_key: str | None  # "ssh-ed25519 AAAA..." (None only with insecure)
    insecure: bool
    # PEM/OpenSSH text; None = use the SSH agent. Never in a repr (a log line or a traceback
    # away from a leak), nor compared in clear (see _key).
    private_key: str | None = field(repr=False)
    node: str | None = None  # the node's name in sando:nodes, for messages
    jump: "Conn | None" = None  # the bastion the node is reached through (sando:nodes[].proxyJump)
    pinned_in: str = "sando:nodes[].hostKey"  # the config key of host_key, for messages
    local: bool = False  # the machine sando runs on: a local shell, no SSH (user = who runs sando)

    @classmethod
    def from_props(cls, connection: dict, private_key: str | None, node: str | None = None) -> "Conn":
        if connection.get("local"):
            return cls.local_node(node)
        jump = connection.get("proxyJump")
        return cls(
            host=connection["host"],
            port=int(connection["port"]),
            user=connection["user"],
            host_key=connection.get("hostKey") or None,
            insecure=bool(connection.get("insecure", False)),
            private_key=private_key or None,
            node=node,
            jump=(replace(cls.from_props(jump, private_key, f"{node or connection['host']}'s proxyJump"),
                          pinned_in="sando:nodes[].proxyJump.hostKey") if jump else None),
        )

    @classmethod
    def local_node(cls, node: str | None) -> "Conn":
        """The machine sando runs on, as the user running it (root, or a user with sudo)."""
        import pwd

        return cls(host="localhost", port=0, user=pwd.getpwuid(os.geteuid()).pw_name, host_key=None, insecure=False,
                   private_key=None, node=node, local=True)

    @property
    def label(self) -> str:
        if self.local:
            where = "local" if self.user == "root" else f"local, as {self.user}"
            return f"{self.node} ({where})" if self.node else where
        where = f"{self.user}@{self.host}:{self.port}"
        if self.jump is not None:
            where += f" via {self.jump.user}@{self.jump.host}:{self.jump.port}"
        return f"{self.node} ({where})" if self.node else where


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str
    sent: int  # bytes of stdin sent (payload, before SSH framing)


def _load_private_key(text: str) -> paramiko.PKey:
    import paramiko

    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            pass  # the library's text is not shown: it may quote the key's bytes
    raise RemoteError("sando:sshPrivateKey is not a private key sando can read (ed25519, ECDSA or RSA in "
                      "OpenSSH/PEM form without a passphrase)")


def _host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _cannot_connect(conn: Conn, why) -> str:
    return (f"{conn.label}: cannot connect: {why} (check the node's host and port in sando:nodes "
            "and that sshd runs there)")


def _socket(conn: Conn):
    """The TCP connection to the node, with Nagle's algorithm off. sando's exchanges are small
    request/response messages (channel open, exec, EOF, exit status): with Nagle on, each one
    sent while the previous is not yet acknowledged waits for the peer's delayed ACK, 40 ms
    on Linux, so every step after the first paid 40 ms more (measured on loopback).

    Through a proxyJump: a `direct-tcpip` channel of the (pooled) connection to the bastion,
    as OpenSSH's ProxyJump does; the node's own SSH session runs inside it, end to end, with
    the node's pinned host key."""
    if conn.jump is not None:
        import paramiko

        bastion = _pooled(conn.jump)
        try:
            return bastion.client.get_transport().open_channel(
                "direct-tcpip", (conn.host, conn.port), ("127.0.0.1", 0), timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(_cannot_connect(conn, f"the proxyJump {conn.jump.user}@{conn.jump.host}:"
                                                    f"{conn.jump.port} could not reach it: {exc or type(exc).__name__}"
                                              )) from None
    try:
        sock = socket.create_connection((conn.host, conn.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise RemoteError(_cannot_connect(conn, exc.strerror or exc)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _QuickAck(sock)


class _QuickAck:
    """The node's socket, acknowledging what it reads at once. sshd leaves Nagle's algorithm on for
    a session without a terminal, so a reply it writes in two parts (the session's confirmation,
    after the hostkeys note it sends once logged in) waits with its second part until the first is
    acknowledged, and the kernel delays that ACK by 40 ms: every connection's first session paid
    40 ms (seen in tcpdump). TCP_QUICKACK after each read sends the pending ACK now (Linux resets
    the flag on its own, hence after every read)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._quickack = getattr(socket, "TCP_QUICKACK", None)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        if self._quickack is not None and data:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                pass  # closed meanwhile: the next read says so
        return data

    @property
    def _closed(self) -> bool:  # paramiko's Transport.is_active() asks the socket
        return self._sock._closed  # type: ignore[attr-defined]

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _connect(conn: Conn) -> paramiko.SSHClient:
    import paramiko

    client = paramiko.SSHClient()
    if conn.host_key:
        kind, data = conn.host_key.split()[:2]
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(data))
        client.get_host_keys().add(_host_key_name(conn.host, conn.port), kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    elif conn.insecure:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:  # the config model refuses this; keep the provider safe on its own too
        raise RemoteError(f"{conn.label}: no host key to verify against (sando:nodes[].hostKey)")
    kwargs = dict(
        hostname=conn.host, port=conn.port, username=conn.user, timeout=CONNECT_TIMEOUT,
        banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT, look_for_keys=False,
    )
    if conn.private_key:
        kwargs.update(pkey=_load_private_key(conn.private_key), allow_agent=False)
    elif not os.environ.get("SSH_AUTH_SOCK"):  # paramiko would blame the connection
        raise RemoteError(f"{conn.label}: sando:sshAgent is true but SSH_AUTH_SOCK is not set: no SSH agent to ask "
                          "for the key (start one and ssh-add the key, or set sando:sshPrivateKey)")
    else:
        kwargs.update(allow_agent=True)
    try:
        client.connect(sock=_socket(conn), **kwargs)
    except paramiko.BadHostKeyException:
        raise RemoteError(f"{conn.label}: the host key does not match the one pinned in {conn.pinned_in} "
                          "(if the host was reinstalled, pin its new key: ssh-keyscan -t ed25519 HOST)") from None
    except paramiko.AuthenticationException:
        raise RemoteError(f"{conn.label}: the SSH key was refused (sando:sshPrivateKey or sando:sshAgent)") from None
    except paramiko.SSHException as exc:
        if "No authentication methods available" not in str(exc):
            raise RemoteError(_cannot_connect(conn, exc or type(exc).__name__)) from None
        raise RemoteError(f"{conn.label}: the SSH agent (sando:sshAgent) holds no key: ssh-add the key, or set "
                          "sando:sshPrivateKey") from None
    except (paramiko.SSHException, OSError) as exc:
        raise RemoteError(_cannot_connect(conn, exc or type(exc).__name__)) from None
    transport = client.get_transport()
    transport.set_keepalive(15)
    return client


# sshd's default MaxSessions is 10 channels per connection; the resources of one node run
# in parallel, so each pooled connection lets at most this many channels be open at once.
MAX_CHANNELS = 6
OPEN_RETRIES = 8  # a refused channel open (the server still counts a just-closed one) is retried


@dataclass
class _Pooled:
    client: paramiko.SSHClient
    slots: threading.BoundedSemaphore

    @property
    def alive(self) -> bool:
        t = self.client.get_transport()
        return bool(t and t.is_active())


_pool: dict[tuple, _Pooled] = {}
_pool_lock = threading.Lock()
_connecting: dict[tuple, threading.Lock] = {}  # per node: held while its connection is being opened
_connects: dict[tuple, int] = {}  # connections opened per node (tests and stats)
_execs: dict[tuple, int] = {}  # exec channels run per node


def _key(conn: Conn) -> tuple:
    """The pool's key: the private key by its digest (the pool never holds a second copy of it)."""
    digest = hashlib.sha256(conn.private_key.encode()).hexdigest() if conn.private_key else None
    return (conn.host, conn.port, conn.user, conn.host_key, digest, conn.jump and _key(conn.jump))


def _pooled(conn: Conn) -> _Pooled:
    """The node's pooled connection, opened on first use. Handshakes of different nodes run at
    once (one lock per node while it connects, not the pool's lock: that made a fleet's
    handshakes wait for each other)."""
    key = _key(conn)
    with _pool_lock:
        entry = _pool.get(key)
        if entry is not None and entry.alive:
            return entry
        connecting = _connecting.setdefault(key, threading.Lock())
    with connecting:
        with _pool_lock:
            entry = _pool.get(key)
            if entry is not None and entry.alive:
                return entry  # another thread connected meanwhile
        entry = _Pooled(_connect(conn), threading.BoundedSemaphore(MAX_CHANNELS))
        with _pool_lock:
            _pool[key] = entry
            _connects[(conn.host, conn.port)] = _connects.get((conn.host, conn.port), 0) + 1
        return entry


def _forget_if_dead(conn: Conn) -> bool:
    """After a failure: forget the pooled connection only when its transport is gone (other
    threads may be using a healthy one). True when it was dead."""
    with _pool_lock:
        entry = _pool.get(_key(conn))
        if entry is None or entry.alive:
            return False
        del _pool[_key(conn)]
    entry.client.close()
    return True


def _forget(conn: Conn, entry: _Pooled) -> None:
    """Drop this pooled connection (the next call opens a new one)."""
    with _pool_lock:
        if _pool.get(_key(conn)) is entry:
            del _pool[_key(conn)]
    entry.client.close()


def _refused_open(exc: Exception) -> bool:
    """The server refused a channel open (paramiko reports it as ChannelException, or, when
    several threads open at once, as a bare "Unable to open channel.")."""
    import paramiko

    return isinstance(exc, paramiko.ChannelException) or str(exc) == "Unable to open channel."


def _with_channel(conn: Conn, fn, *, retry: bool):
    """Run fn(client) holding one of the connection's channel slots.

    A refused channel open (nothing started yet) is retried with backoff. A dead connection
    is forgotten (the next call reopens it); idempotent work (retry=True) is tried once more
    after any transport failure."""
    import paramiko

    reconnected, refused = False, 0  # reconnected: the one extra try of idempotent work is used
    while True:
        entry = _pooled(conn)
        with entry.slots:
            try:
                if entry.client.get_transport() is None:  # closed by another thread meanwhile
                    raise paramiko.SSHException("connection closed")
                return fn(entry.client)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if _refused_open(exc) and entry.alive:
                    refused += 1
                    if refused > OPEN_RETRIES:
                        raise
                else:
                    if isinstance(exc, (LostSession, _Unstarted)):
                        _forget(conn, entry)
                    else:
                        _forget_if_dead(conn)
                    if not (retry or isinstance(exc, _Unstarted)) or reconnected:
                        raise
                    reconnected = True
                    continue
        time.sleep(0.02 * 2 ** refused)


Stdin = bytes | Callable[[], Iterable[bytes]] | None


def _tell(callback, value) -> None:
    """A progress callback: what it does must never fail the command."""
    if callback is not None:
        try:
            callback(value)
        except Exception:  # noqa: BLE001 - progress only
            pass


def _read_lines(chan, on_line) -> bytes:
    """All of stdout, each complete line also given to on_line as it arrives."""
    out, pending = [], b""
    for data in iter(lambda: chan.recv(65536), b""):
        out.append(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _tell(on_line, line.decode(errors="replace"))
    return b"".join(out)


def _exec(chan, command: str) -> None:
    """paramiko's Channel.exec_command without waiting for the server's answer: its stdin follows at
    once, as OpenSSH's client sends it (one round trip less per command: 40 ms on the bench's WAN
    profile). A refused exec still closes the channel (paramiko's _request_failed), which ends the
    command without an exit status: a LostSession, as a session that died."""
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.message import Message

    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)
    m.add_string(command)
    chan.transport._send_user_message(m)


def run(conn: Conn, command: str, *, stdin: Stdin = None, timeout: float = COMMAND_TIMEOUT,
        check: bool = True, retry: bool = False, on_line: "Callable[[str], None] | None" = None,
        on_sent: "Callable[[int], None] | None" = None) -> Result:
    """Run one shell command on the node: one exec channel, one round trip.

    `stdin` is bytes, or a callable returning an iterable of chunks (streamed, so a release
    never sits in memory whole; a callable can be replayed when `retry` is set). Only
    idempotent work may set `retry`: it is then run once more on a fresh connection after a
    transport failure. Otherwise a connection lost mid-command is an error.
    A local node runs it in a local shell (localnode.run), same Result, same messages.
    `on_line` sees each line of stdout as it arrives and `on_sent` the bytes of stdin sent so far
    (progress for the console, issue 19.5); neither may fail the command."""
    if conn.local:
        from . import localnode

        return localnode.run(conn, command, stdin=stdin, timeout=timeout, check=check, on_line=on_line, on_sent=on_sent)
    from . import keeper

    done = None
    if keeper.wanted(conn):
        try:
            got = keeper.run(conn, command, stdin=stdin, timeout=timeout, retry=retry, on_line=on_line, on_sent=on_sent)
            done = (got.rc, got.out, got.err, got.sent)
        except keeper.Unavailable:
            pass  # no keeper: this process connects on its own
    rc, out, err, sent = done or run_pooled(conn, command, stdin=stdin, timeout=timeout, retry=retry,
                                            on_line=on_line, on_sent=on_sent)
    o, e = out.decode(errors="replace"), err.decode(errors="replace")
    if check and rc != 0:
        raise RemoteError(f"{conn.label}: a remote command exited {rc}: {(e.strip() or o.strip())[-500:]}")
    return Result(rc, o, e, sent)


def run_pooled(conn: Conn, command: str, *, stdin: Stdin, timeout: float, retry: bool,
               on_line: "Callable[[str], None] | None", on_sent: "Callable[[int], None] | None"
               ) -> tuple[int, bytes, bytes, int]:
    """ssh.run's command on this process's pooled connection to the node: (rc, stdout, stderr,
    bytes of stdin sent). Raises RemoteError (cannot connect) or TransportError."""
    import paramiko

    sent = 0

    def execute(client: paramiko.SSHClient) -> tuple[int, bytes, bytes]:
        nonlocal sent
        sent = 0
        try:
            chan = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if _refused_open(exc):
                raise
            raise _Unstarted(str(exc) or type(exc).__name__) from None
        with _pool_lock:
            _execs[(conn.host, conn.port)] = _execs.get((conn.host, conn.port), 0) + 1
        try:
            chan.settimeout(timeout)
            _exec(chan, command)
            if stdin is not None:  # the command reads stdin until EOF (or exits early: stop sending)
                chunks = [stdin] if isinstance(stdin, bytes) else stdin()
                try:
                    for chunk in chunks:
                        for i in range(0, len(chunk), CHUNK):
                            if chan.exit_status_ready():
                                raise EOFError("the remote command exited before reading all its input")
                            chan.sendall(chunk[i:i + CHUNK])
                            sent += len(chunk[i:i + CHUNK])
                        _tell(on_sent, sent)
                    chan.shutdown_write()
                except (OSError, EOFError):
                    if not chan.exit_status_ready() and not chan.closed:
                        raise
            # No EOF otherwise: paramiko sends it outside its channel lock, so for a command that
            # exits at once it can reach the server after our CLOSE, and OpenSSH then drops the
            # whole connection ("ieof packet referred to nonexistent channel").
            out = _read_lines(chan, on_line) if on_line else b"".join(iter(lambda: chan.recv(65536), b""))
            err = b"".join(iter(lambda: chan.recv_stderr(65536), b""))
            status = chan.recv_exit_status()
            if status == -1:  # closed without an exit status: the session (or the connection) died
                raise LostSession("the session ended before the command finished")
            return status, out, err
        finally:
            chan.close()

    try:
        rc, out, err = _with_channel(conn, execute, retry=retry)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise TransportError(f"{conn.label}: the connection failed during a remote command "
                             f"({exc or type(exc).__name__})") from None
    return rc, out, err, sent


def close_all() -> None:
    """Close every pooled connection of this process."""
    with _pool_lock:
        entries = list(_pool.values())
        _pool.clear()
    for entry in entries:
        entry.client.close()


def stats() -> dict[str, dict[str, int]]:
    """Connections and exec channels per node so far in this process."""
    with _pool_lock:
        return {f"{h}:{p}": {"connections": _connects.get((h, p), 0), "execs": _execs.get((h, p), 0)}
                for h, p in set(_connects) | set(_execs)}
