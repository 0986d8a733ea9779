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


_pool: dict[tuple, paramiko.SSHClient] = {}
_pool_lock = threading.Lock()


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


def client_for(conn: Conn) -> paramiko.SSHClient:
    key = (conn.host, conn.port, conn.user, conn.host_key, conn.private_key)
    with _pool_lock:
        client = _pool.get(key)
        if client is not None and client.get_transport() and client.get_transport().is_active():
            return client
        client = _connect(conn)
        _pool[key] = client
        return client


def drop(conn: Conn) -> None:
    """Forget a pooled connection (after a transport error), so the next call reconnects."""
    key = (conn.host, conn.port, conn.user, conn.host_key, conn.private_key)
    with _pool_lock:
        client = _pool.pop(key, None)
    if client is not None:
        client.close()


def run(conn: Conn, command: str, *, stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT,
        check: bool = True) -> tuple[int, str, str]:
    """Run one shell command on the node; returns (exit code, stdout, stderr)."""
    try:
        client = client_for(conn)
        chan = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = io.BytesIO(), io.BytesIO()
        while True:
            data = chan.recv(65536)
            if not data:
                break
            out.write(data)
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                break
            err.write(data)
        rc = chan.recv_exit_status()
        chan.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        drop(conn)
        raise RemoteError(f"{conn.label}: `{command}` failed: {exc or type(exc).__name__}") from None
    o, e = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
    if check and rc != 0:
        raise RemoteError(f"{conn.label}: `{command}` exited {rc}: {e.strip() or o.strip()}")
    return rc, o, e


def upload(conn: Conn, files: list[tuple[str, str, int]]) -> int:
    """Upload (local path, remote path, mode) triples over one SFTP session; returns bytes sent.

    Remote parent directories are created as needed.
    """
    sent = 0
    try:
        sftp = client_for(conn).open_sftp()
        made: set[str] = set()
        try:
            for local, remote, mode in files:
                parent = os.path.dirname(remote)
                _makedirs(sftp, parent, made)
                sftp.put(local, remote)
                sftp.chmod(remote, mode)
                sent += os.stat(local).st_size
        finally:
            sftp.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        drop(conn)
        raise RemoteError(f"{conn.label}: upload failed after {sent} bytes: {exc or type(exc).__name__}") from None
    return sent


def put_bytes(conn: Conn, data: bytes, remote: str) -> None:
    try:
        sftp = client_for(conn).open_sftp()
        try:
            _makedirs(sftp, os.path.dirname(remote), set())
            with sftp.open(remote, "wb") as fh:
                fh.write(data)
        finally:
            sftp.close()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        drop(conn)
        raise RemoteError(f"{conn.label}: writing {remote} failed: {exc or type(exc).__name__}") from None


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
