"""SSH transport of sando's resource providers (paramiko), with pinned host keys.

One connection per (host, port, user) is kept open for the life of the provider
process and shared by every resource on that node, so a deploy pays the SSH
handshake once per node. The private key stays in memory: it is never written
to disk or passed on a command line.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import threading
import time
from dataclasses import dataclass

import paramiko

CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 600.0


class RemoteError(Exception):
    pass


@dataclass(frozen=True)
class Conn:
    host: str
    port: int
    user: str
    host_key: str | None  # "ssh-ed25519 AAAA..." (None only with insecure)
    insecure: bool
    private_key: str | None  # PEM/OpenSSH text; None = use the SSH agent

    @classmethod
    def from_props(cls, connection: dict, private_key: str | None) -> "Conn":
        return cls(
            host=connection["host"],
            port=int(connection["port"]),
            user=connection["user"],
            host_key=connection.get("hostKey") or None,
            insecure=bool(connection.get("insecure", False)),
            private_key=private_key or None,
        )

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _load_private_key(text: str) -> paramiko.PKey:
    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{kind.__name__}: {exc}")
    raise RemoteError("sando:sshPrivateKey is not a private key paramiko can read (" + "; ".join(errors) + ")")


def _host_key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _connect(conn: Conn) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if conn.host_key:
        kind, data = conn.host_key.split()[:2]
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(data))
        client.get_host_keys().add(_host_key_name(conn.host, conn.port), kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    elif conn.insecure:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:  # the config model refuses this; keep the provider safe on its own too
        raise RemoteError(f"{conn.label}: no host key to verify against")
    kwargs = dict(
        hostname=conn.host, port=conn.port, username=conn.user, timeout=CONNECT_TIMEOUT,
        banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT, look_for_keys=False,
    )
    if conn.private_key:
        kwargs.update(pkey=_load_private_key(conn.private_key), allow_agent=False)
    else:
        kwargs.update(allow_agent=True)
    try:
        client.connect(**kwargs)
    except paramiko.BadHostKeyException as exc:
        raise RemoteError(f"{conn.label}: host key mismatch (pinned key in sando:nodes[].hostKey): {exc}") from None
    except (paramiko.SSHException, OSError) as exc:
        raise RemoteError(f"{conn.label}: cannot connect: {exc}") from None
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


def _key(conn: Conn) -> tuple:
    return (conn.host, conn.port, conn.user, conn.host_key, conn.private_key)


def _pooled(conn: Conn) -> _Pooled:
    with _pool_lock:
        entry = _pool.get(_key(conn))
        if entry is None or not entry.alive:
            entry = _Pooled(_connect(conn), threading.BoundedSemaphore(MAX_CHANNELS))
            _pool[_key(conn)] = entry
        return entry


def client_for(conn: Conn) -> paramiko.SSHClient:
    return _pooled(conn).client


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


def _refused_open(exc: Exception) -> bool:
    """The server refused a channel open (paramiko reports it as ChannelException, or, when
    several threads open at once, as a bare "Unable to open channel.")."""
    return isinstance(exc, paramiko.ChannelException) or str(exc) == "Unable to open channel."


def _with_channel(conn: Conn, fn, *, retry: bool):
    """Run fn(client) holding one of the connection's channel slots.

    A refused channel open (nothing started yet) is retried with backoff. A dead connection
    is forgotten (the next call reopens it); idempotent work (retry=True) is tried once more
    after any transport failure."""
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
                    _forget_if_dead(conn)
                    if not retry or reconnected:
                        raise
                    reconnected = True
                    continue
        time.sleep(0.02 * 2 ** refused)


def run(conn: Conn, command: str, *, stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT,
        check: bool = True) -> tuple[int, str, str]:
    """Run one shell command on the node; returns (exit code, stdout, stderr).

    Not retried once started: a connection lost mid-command is an error."""

    def open_channel(client: paramiko.SSHClient) -> paramiko.Channel:
        return client.get_transport().open_session(timeout=CONNECT_TIMEOUT)

    def execute(client: paramiko.SSHClient) -> tuple[int, bytes, bytes]:
        chan = open_channel(client)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin is not None:  # the command reads stdin until EOF, so it cannot close first
                chan.sendall(stdin)
                chan.shutdown_write()
            # No EOF otherwise: paramiko sends it outside its channel lock, so for a command that
            # exits at once it can reach the server after our CLOSE, and OpenSSH then drops the
            # whole connection ("ieof packet referred to nonexistent channel").
            out = b"".join(iter(lambda: chan.recv(65536), b""))
            err = b"".join(iter(lambda: chan.recv_stderr(65536), b""))
            return chan.recv_exit_status(), out, err
        finally:
            chan.close()

    try:
        rc, out, err = _with_channel(conn, execute, retry=False)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise RemoteError(f"{conn.label}: `{command}` failed: {exc or type(exc).__name__}") from None
    o, e = out.decode(errors="replace"), err.decode(errors="replace")
    if check and rc != 0:
        raise RemoteError(f"{conn.label}: `{command}` exited {rc}: {e.strip() or o.strip()}")
    return rc, o, e


def upload(conn: Conn, files: list[tuple[str | bytes, str, int]]) -> int:
    """Upload (source, remote path, mode) triples over one SFTP session; returns bytes sent.

    A source is a local file path, or the content itself as bytes. Remote parent
    directories are created as needed. Idempotent (fresh names), so a connection lost on
    the way is reopened and the upload starts over once."""
    sent = 0

    def put_all(client: paramiko.SSHClient) -> int:
        nonlocal sent
        sent = 0
        sftp = client.open_sftp()
        try:
            made: set[str] = set()
            for source, remote, mode in files:
                _makedirs(sftp, os.path.dirname(remote), made)
                if isinstance(source, bytes):
                    with sftp.open(remote, "wb") as fh:
                        fh.write(source)
                    sent += len(source)
                else:
                    sftp.put(source, remote)
                    sent += os.stat(source).st_size
                sftp.chmod(remote, mode)
        finally:
            sftp.close()
        return sent

    try:
        return _with_channel(conn, put_all, retry=True)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise RemoteError(f"{conn.label}: upload failed after {sent} bytes: {exc or type(exc).__name__}") from None


def _makedirs(sftp: paramiko.SFTPClient, path: str, made: set[str]) -> None:
    if not path or path == "/" or path in made:
        return
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode):
            made.add(path)
            return
    except FileNotFoundError:
        pass
    _makedirs(sftp, os.path.dirname(path), made)
    try:
        sftp.mkdir(path)
    except OSError:
        if not stat.S_ISDIR(sftp.stat(path).st_mode):
            raise
    made.add(path)
