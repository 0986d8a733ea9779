"""The transport of a local node (`sando:nodes[i].local: true`): the machine sando runs on.

Every node-side step is the same shell text an SSH node gets, run here by `/bin/sh -c`: as
root directly, otherwise under `sudo -n` (never a password prompt: sando runs unattended).
Stdin is streamed as over SSH, and the Result and the messages naming the node are the same.
The command runs in a clean environment (the login-like one sshd gives, not the provider's,
which holds Pulumi's variables), from `/`, in its own process group, so a timeout ends all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

from .ssh import CHUNK, COMMAND_TIMEOUT, Conn, RemoteError, Result, Stdin, _tell

SH = "/bin/sh"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUDO = ("sudo", "-n", "--")

_checked: set[str] = set()  # users whose `sudo -n` was seen to work in this process
_check_lock = threading.Lock()
_runs = 0  # commands run (stats, as ssh.stats counts exec channels)


def as_root() -> bool:
    return os.geteuid() == 0


def argv(command: str) -> list[str]:
    """How a node-side command runs here: `/bin/sh -c`, under `sudo -n` unless sando is root."""
    return [SH, "-c", command] if as_root() else [*SUDO, SH, "-c", command]


def _env() -> dict[str, str]:
    """What sshd would give a root login: no variable of the provider's (PULUMI_*, secrets)."""
    return {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8", "SHELL": SH}


def sudo_refusal(conn: Conn) -> str:
    """The one line said when `sudo -n` would ask for a password (or refuses)."""
    return (f"{conn.label}: sudo would ask {conn.user} for a password, and sando never types one: run `sudo -v` "
            f"in this terminal first, or add the sudoers rule `{conn.user} ALL=(root) NOPASSWD: {SH}` "
            "(visudo -f /etc/sudoers.d/sando), or run sando as root")


def check_sudo(conn: Conn) -> None:
    """Before the first command of a non-root sando: can it run the node-side shell without a
    password? Once per user and process (the first read of a node, in a preview too)."""
    if as_root():
        return
    with _check_lock:
        if conn.user in _checked:
            return
        try:
            res = subprocess.run([*SUDO, SH, "-c", "true"], env=_env(), cwd="/", stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise RemoteError(f"{conn.label}: sando runs as {conn.user}, not root, and sudo is not installed: "
                              "install sudo (apt-get install sudo) or run sando as root") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(sudo_refusal(conn)) from None
        if res.returncode != 0:
            raise RemoteError(sudo_refusal(conn))
        _checked.add(conn.user)


def _start(conn: Conn, command: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """The node-side command in a local shell (argv: under `sudo -n` unless root), sudo checked
    first, in the clean environment (`env`: it plus these), from `/`; a shell that cannot start is
    the node's RemoteError."""
    global _runs
    check_sudo(conn)
    try:
        proc = subprocess.Popen(argv(command), env={**_env(), **(env or {})}, cwd="/", **popen)
    except OSError as exc:
        raise RemoteError(f"{conn.label}: cannot start a local shell ({exc.strerror or exc})") from None
    _runs += 1
    return proc


def run(conn: Conn, command: str, *, stdin: Stdin = None, timeout: float = COMMAND_TIMEOUT,
        check: bool = True, on_line=None, on_sent=None) -> Result:
    """ssh.run for a local node: the same command, stdin, Result and progress callbacks, through a
    local shell."""
    proc = _start(conn, command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  process_group=0)  # own group (for a timeout), same session (sudo's tty ticket)
    sent = 0
    outs: dict[str, bytes] = {}

    def drain(name: str, pipe) -> None:
        if name != "out" or on_line is None:
            outs[name] = pipe.read()
            return
        lines = []
        for line in iter(pipe.readline, b""):  # each line as it comes, for the console (ssh.run's on_line)
            lines.append(line)
            _tell(on_line, line.decode(errors="replace").rstrip("\n"))
        outs[name] = b"".join(lines)

    readers = [threading.Thread(target=drain, args=(n, p), daemon=True)
               for n, p in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    expired = threading.Event()
    timer = threading.Timer(timeout, _kill, args=(proc, expired))
    timer.start()
    try:
        if stdin is not None:  # the command reads stdin until EOF (or exits early: stop sending)
            chunks = [stdin] if isinstance(stdin, bytes) else stdin()
            try:
                for chunk in chunks:
                    for i in range(0, len(chunk), CHUNK):
                        proc.stdin.write(chunk[i:i + CHUNK])
                        sent += len(chunk[i:i + CHUNK])
                    _tell(on_sent, sent)
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass  # the command exited before reading all its input, as over SSH: its status says
        rc = proc.wait()
        for t in readers:
            t.join()
    except BaseException:  # the stdin source failed (e.g. a build error): end the command, then say why
        _kill(proc, threading.Event())
        raise
    finally:
        timer.cancel()
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
    if expired.is_set():
        raise RemoteError(f"{conn.label}: a command did not finish within {timeout:g}s and was stopped")
    if rc < 0:  # killed by a signal: as SSH reports a session that ended without an exit status
        raise RemoteError(f"{conn.label}: a command was killed by signal {-rc}")
    o, e = outs.get("out", b"").decode(errors="replace"), outs.get("err", b"").decode(errors="replace")
    if check and rc != 0:
        raise RemoteError(f"{conn.label}: a remote command exited {rc}: {(e.strip() or o.strip())[-500:]}")
    return Result(rc, o, e, sent)


_streams: set[subprocess.Popen] = set()  # local streams still running (end_streams)
_streams_lock = threading.Lock()


_prctl = None


def _ends_with_sando():
    """A preexec_fn: in the child, before exec, SIGTERM when sando's thread that started it ends
    (prctl PR_SET_PDEATHSIG), so a killed sando leaves no command behind, also one that writes
    nothing (journalctl -f ends by itself once its stdout's reader is gone, under sudo too: measured).
    (Cleared by the exec of a setuid sudo: for sando as a user, end_streams at sando's end, and the
    terminal's Ctrl-C reaching the command too.)
    prctl is looked up here, in sando: the child only calls it (no import after a fork of a
    process with threads)."""
    global _prctl
    if _prctl is None:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl, term = _prctl, int(signal.SIGTERM)
    return lambda: prctl(1, term, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def end_streams() -> None:
    """sando ends (cli.main's end, fleet.disconnect): every local stream still running is ended
    (SIGTERM; sudo passes it on to the command)."""
    with _streams_lock:
        live = list(_streams)
    for proc in live:
        if proc.poll() is None:
            try:
                proc.terminate()
            except (ProcessLookupError, PermissionError):
                pass


def stream(conn: Conn, command: str, on_out, on_err, *, stdin: bytes | None = None) -> int:
    """fleet.stream for a local node: the command's stdout and stderr handed to on_out and on_err
    (bytes) as they come; its exit status (negative: the signal that ended it). In sando's own
    process group, so a terminal's Ctrl-C reaches it as it reaches sando."""
    proc = _start(conn, command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ends_with_sando())
    with _streams_lock:
        _streams.add(proc)

    def pump(pipe, to) -> None:
        for data in iter(lambda: os.read(pipe.fileno(), CHUNK), b""):
            to(data)

    readers = [threading.Thread(target=pump, args=a, daemon=True) for a in ((proc.stdout, on_out), (proc.stderr, on_err))]
    for t in readers:
        t.start()
    try:
        if stdin is not None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = proc.wait()
        for t in readers:
            t.join()
    except BaseException:
        proc.terminate()  # its group is sando's: the command alone
        raise
    finally:
        with _streams_lock:
            _streams.discard(proc)
    return rc


def interactive(conn: Conn, command: str | None, stdin_fd: int | None, stdin_data: bytes, out_fd: int | None,
                err_fd: int | None) -> tuple[int, bytes, bytes]:
    """fleet.interactive for a local node: `command`, or root's login shell, here as root (under
    `sudo -n` unless sando is root), in the clean environment with the operator's TERM. On a
    terminal it is the terminal's (same process group: its Ctrl-C is the shell's, sando waits on);
    otherwise stdin_data is its input. Returns (exit status, stdout, stderr): what had no file
    descriptor to go to."""
    import pwd

    shell = command or f"exec {pwd.getpwuid(0).pw_shell or SH} -l"
    pipe = subprocess.PIPE
    proc = _start(conn, shell, {"TERM": os.environ["TERM"]} if os.environ.get("TERM") else None,
                  stdin=stdin_fd if stdin_fd is not None else pipe, stdout=out_fd if out_fd is not None else pipe,
                  stderr=err_fd if err_fd is not None else pipe)
    out = err = b""
    while True:
        try:
            out, err = proc.communicate(None if stdin_fd is not None else stdin_data)
            break
        except KeyboardInterrupt:  # the terminal's Ctrl-C reached the shell too: it is the shell's
            continue
    rc = proc.returncode
    return (128 - rc if rc < 0 else rc), out or b"", err or b""  # a signal: as a shell says it (130: Ctrl-C)


def _kill(proc: subprocess.Popen, expired: threading.Event) -> None:
    """A timeout: end the command's whole process group (sudo passes the signal on); what
    ignores SIGTERM for 5 s more gets SIGKILL."""
    expired.set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass


def stats() -> dict[str, int]:
    return {"execs": _runs}
