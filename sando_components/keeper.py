"""SSH connections that outlive a run (issue 24): sando's connection keeper.

Every `pulumi up` used to open its own SSH connection to each node (a TCP connect, the key
exchange, the authentication: several round trips, and paramiko's import and crypto in the
provider), then dropped it at the end of the run. As OpenSSH's ControlPersist does, a keeper
process now holds each node's connection for `SANDO_SSH_PERSIST` seconds after its last use
(default 300; 0 = off: each run connects on its own, in its own process), and the runs of that
time send their commands through it.

- The keeper is this module run as a process of its own (started by the first run that needs
  it, detached, so the engine's end of the run does not stop it), listening on an abstract Unix
  socket named after the user and this code's digest: a new sando starts a keeper of its own.
- Each side checks the other's user id (SO_PEERCRED): nobody else can use it or pose as it.
- A connection opened with a private key serves only a request that brings the same key (the
  pool is keyed by its digest, as in ssh.py): another process of the same user without the key
  cannot use it. The key travels over the socket and lives in the keeper's memory only, as in the
  provider's: never on disk or a command line. The keeper's environment is reduced to PATH.
- Connections through the agent (sando:sshAgent) and local nodes do not go through the keeper.
- The same code as in-process runs the command (ssh.run_pooled): same retries, same messages. A
  request whose stdin must be replayed to be retried (an upload) is retried by the caller, as is
  an idempotent one whose keeper went away (a new one starts).
- If the keeper cannot be reached or started, the run connects on its own, as before.

The wire: frames of one type byte, a 4-byte length and the payload. The caller sends Q (the request,
JSON) and waits for A (taken: a keeper that ends meanwhile, idle, never took it, and the caller
goes to a new one); then it sends its stdin as I frames and E; the keeper answers L (a line of
stdout, when asked), then O (stdout), e (stderr) and R (JSON: rc, sent), or F (JSON: kind,
message) on a failure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

PERSIST_ENV = "SANDO_SSH_PERSIST"
DEFAULT_PERSIST = 300.0
START_WAIT = 5.0  # seconds a caller waits for a keeper it started to listen
_HEADER = struct.Struct(">cI")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def persist_seconds() -> float:
    """SANDO_SSH_PERSIST: seconds a node's connection is kept after its last use (0: no keeper)."""
    raw = os.environ.get(PERSIST_ENV, "").strip()
    if not raw:
        return DEFAULT_PERSIST
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 0.0  # not a number: no keeper (nothing is lost but the reuse)


@functools.cache
def _digest() -> str:
    """This code's digest: a keeper runs the code of the sando that started it."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in ("keeper.py", "ssh.py", "localnode.py", "errors.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def address(persist: float) -> str:
    """The keeper's abstract socket name (a leading NUL: no file, gone with the process)."""
    return f"\0sando-keeper-{os.geteuid()}-{_digest()}-{int(persist)}"


# --- framing --------------------------------------------------------------------------------------


def send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def _exactly(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        data = sock.recv(min(left, 1 << 20))
        if not data:
            raise EOFError("the keeper's socket closed")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def receive(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = _HEADER.unpack(_exactly(sock, _HEADER.size))
    return kind, _exactly(sock, size) if size else b""


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return uid


# --- the caller's side ----------------------------------------------------------------------------


class Unavailable(Exception):
    """No keeper to use: the caller connects on its own."""


_start_lock = threading.Lock()
_broken = False  # a keeper could not be started in this process: do not try again


def wanted(conn) -> bool:
    """Whether this node's commands go through the keeper: a key-authenticated SSH node, keeper on."""
    return not _broken and not conn.local and bool(conn.private_key) and persist_seconds() > 0


def _open(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(name)
        if peer_uid(sock) != os.geteuid():  # someone else holds the name: never send them a key
            raise Unavailable("the keeper's socket belongs to another user")
    except BaseException:
        sock.close()
        raise
    return sock


def _listening(name: str) -> socket.socket | None:
    """A connection to the keeper at `name`, or None when none listens there. Raises Unavailable."""
    try:
        return _open(name)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as exc:
        raise Unavailable(str(exc)) from None


def connect() -> socket.socket:
    """A connection to this user's keeper, started if none runs. Raises Unavailable."""
    global _broken
    persist = persist_seconds()
    name = address(persist)
    sock = _listening(name)
    if sock is not None:
        return sock
    with _start_lock:
        sock = _listening(name)  # another thread of this process may have started it meanwhile
        if sock is not None:
            return sock
        if _broken:
            raise Unavailable("no keeper")
        _broken = True  # until it answers
        try:
            _spawn(name, persist)
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"the keeper could not be started: {exc}") from None
        deadline = time.monotonic() + START_WAIT
        while (sock := _listening(name)) is None:
            if time.monotonic() > deadline:
                raise Unavailable("the keeper did not start")
            time.sleep(0.005)
        _broken = False
        return sock


def _spawn(name: str, persist: float) -> None:
    """Start the keeper, detached (it forks once more and this child exits at once), with no more
    of this process's environment than PATH: no config, no secrets."""
    package = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(package.parent)!r}); "
            f"from sando_components import keeper; keeper.serve({name!r}, {persist!r})")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True, close_fds=True,
                   check=False, timeout=START_WAIT)


def ensure() -> None:
    """Start the keeper now if it is wanted and not running (the provider's head start)."""
    if persist_seconds() > 0:
        try:
            connect().close()
        except Unavailable:
            pass


@dataclass
class Outcome:
    rc: int
    out: bytes
    err: bytes
    sent: int


def run(conn, command: str, *, stdin, timeout: float, retry: bool,
        on_line: Callable[[str], None] | None, on_sent: Callable[[int], None] | None) -> Outcome:
    """ssh.run's command through the keeper. Raises Unavailable (then the caller runs it itself),
    or ssh.RemoteError / ssh.TransportError as the command would in-process. An upload (stdin)
    with `retry` is sent once more after a transport failure, with its stdin replayed; without
    stdin the keeper retries on its own."""
    from .ssh import TransportError

    try:
        return _request(conn, command, stdin=stdin, timeout=timeout, retry=retry and stdin is None,
                        on_line=on_line, on_sent=on_sent)
    except TransportError:  # an idempotent command, once more (a new keeper if this one went away)
        if not retry:
            raise
    return _request(conn, command, stdin=stdin, timeout=timeout, retry=False, on_line=on_line, on_sent=on_sent)


def _request(conn, command: str, *, stdin, timeout: float, retry: bool, on_line, on_sent) -> Outcome:
    from .ssh import CHUNK, RemoteError, TransportError, _tell

    request = {"conn": asdict(conn), "command": command, "timeout": timeout, "retry": retry,
               "stdin": stdin is not None, "lines": on_line is not None}
    for attempt in (1, 2):
        sock = connect()
        try:  # the keeper takes the request (A) before anything runs: a keeper ending (idle) never took it
            send(sock, b"Q", json.dumps(request).encode())
            if receive(sock)[0] == b"A":
                break
        except (OSError, EOFError):
            pass
        sock.close()
        if attempt == 2:
            raise Unavailable("the keeper did not take the request")
    with sock:
        try:
            if stdin is not None:
                sent = 0
                for chunk in [stdin] if isinstance(stdin, bytes) else stdin():
                    for i in range(0, len(chunk), CHUNK):
                        send(sock, b"I", chunk[i:i + CHUNK])
                        sent += len(chunk[i:i + CHUNK])
                    _tell(on_sent, sent)
                send(sock, b"E")
            out = err = b""
            while True:
                kind, payload = receive(sock)
                if kind == b"L":
                    _tell(on_line, payload.decode(errors="replace"))
                elif kind == b"O":
                    out = payload
                elif kind == b"e":
                    err = payload
                elif kind == b"R":
                    result = json.loads(payload)
                    return Outcome(int(result["rc"]), out, err, int(result["sent"]))
                elif kind == b"F":
                    failure = json.loads(payload)
                    raise (TransportError if failure["kind"] == "transport" else RemoteError)(failure["message"])
        except (OSError, EOFError) as exc:
            # the keeper itself went away mid-request (killed, or its host ended it)
            raise TransportError(f"{conn.label}: sando's connection keeper went away during a remote command "
                                 f"({exc or type(exc).__name__})") from None


def stats() -> dict:
    """The running keeper's connections and exec channels per node (tests, `make bench`)."""
    sock = connect()
    with sock:
        send(sock, b"S")
        kind, payload = receive(sock)
        return json.loads(payload) if kind == b"R" else {}


def stop_all(digest: str | None = None, persist: float | None = None) -> int:
    """End this user's keepers of this sando (`digest`: of another code), each persist setting's or
    only `persist`'s; how many there were."""
    import signal

    mark = (digest or _digest()).encode() + (b"" if persist is None else f"-{int(persist)}'".encode())
    ended = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != os.geteuid():
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and b"keeper.serve(" in argv[2] and mark in argv[2]:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
                ended += 1
            except OSError:
                pass
    return ended


# --- the keeper's side ----------------------------------------------------------------------------


class _Server:
    def __init__(self, listener: socket.socket, persist: float):
        self.listener = listener
        self.persist = persist
        self.lock = threading.Lock()
        self.active = 0
        self.last = time.monotonic()

    def loop(self) -> None:
        threading.Thread(target=self._idle_watch, daemon=True).start()
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: this keeper is ending
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _idle_watch(self) -> None:
        from . import ssh

        while True:
            time.sleep(min(1.0, max(self.persist / 4, 0.05)))
            with self.lock:
                idle = self.active == 0 and time.monotonic() - self.last > self.persist
            if idle:
                self.listener.close()  # no new caller finds this keeper any more
                ssh.close_all()
                os._exit(0)

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.active += 1
        try:
            with client:
                if peer_uid(client) != os.geteuid():
                    return
                kind, payload = receive(client)
                if kind == b"S":
                    from . import ssh

                    send(client, b"R", json.dumps(ssh.stats()).encode())
                elif kind == b"Q":
                    request = json.loads(payload)
                    send(client, b"A")
                    _handle(client, request)
        except (OSError, EOFError, ValueError):
            pass  # the caller went away: its own side says so
        finally:
            with self.lock:
                self.active -= 1
                self.last = time.monotonic()


def _conn(data: dict):
    from .ssh import Conn

    jump = data.get("jump")
    return Conn(**{**data, "jump": _conn(jump) if jump else None})


def _handle(client: socket.socket, request: dict) -> None:
    from . import ssh

    conn = _conn(request["conn"])
    drained = not request["stdin"]

    def stdin() -> Iterator[bytes]:
        nonlocal drained
        while not drained:
            kind, payload = receive(client)
            if kind == b"E":
                drained = True
            else:
                yield payload

    def drain() -> None:
        for _ in stdin():
            pass

    def on_line(line: str) -> None:
        drain()  # the caller sends all its stdin before it reads: never write while it still does
        send(client, b"L", line.encode())

    try:
        rc, out, err, sent = ssh.run_pooled(conn, request["command"], stdin=stdin if request["stdin"] else None,
                                            timeout=float(request["timeout"]), retry=bool(request["retry"]),
                                            on_line=on_line if request["lines"] else None, on_sent=None)
    except ssh.TransportError as exc:
        drain()
        send(client, b"F", json.dumps({"kind": "transport", "message": str(exc)}).encode())
        return
    except ssh.RemoteError as exc:
        drain()
        send(client, b"F", json.dumps({"kind": "remote", "message": str(exc)}).encode())
        return
    except Exception as exc:  # noqa: BLE001 - said to the caller, which fails its step with it
        drain()
        message = f"{conn.label}: sando's connection keeper failed ({type(exc).__name__}: {exc})"
        send(client, b"F", json.dumps({"kind": "remote", "message": message}).encode())
        return
    drain()
    send(client, b"O", out)
    send(client, b"e", err)
    send(client, b"R", json.dumps({"rc": rc, "sent": sent}).encode())


def serve(name: str, persist: float) -> None:
    """The keeper's process: detach, listen on `name`, serve until idle for `persist` seconds."""
    if os.fork():
        os._exit(0)  # the caller's child ends at once; the keeper goes on, adopted by init
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(name)
    except OSError:
        os._exit(0)  # another keeper took the name first: it serves
    listener.listen(64)
    import paramiko  # noqa: F401 - all it runs loaded now: nothing from the tree it came from later
    from . import ssh  # noqa: F401

    _Server(listener, persist).loop()
