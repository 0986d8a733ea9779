"""Warm starts of the engine's Python processes (installed by `make setup` into .tools/bin, beside
the scripts that use it; standard library only, so that it costs nothing before the fork).

Python's start and the imports of every run (grpc, the Pulumi SDK; for a program, its own modules)
cost a few hundred ms of CPU at the start of every run, on its critical path. As a zygote does: a
process of this user that has loaded them (started by the first run, detached, gone after
SANDO_KEEP_WARM seconds unused, default 300; 0: none) forks, for each run, a child that takes the
launcher's stdin, stdout and stderr, its environment, directory, umask and arguments, and runs what
the launcher would have run. The launcher stays as the process the engine (or the language host)
started: it passes on the signals it gets to the child, the child ends when it goes, and it exits
with the child's status. The zygote holds no secret: its environment is PATH, LANG and the PYTHON*
variables; each side checks the other's uid (SO_PEERCRED). Any failure on the way: the launcher runs
the work itself, as before.

Two kinds (the zygote's name says which, and what it loaded):
- the dynamic-provider host (sando-provider-host.py): the SDK, grpc and dill; nothing of the project;
- a program (pulumi-language-python-exec, engine/python/exec.patch) whose __main__.py asks for it on
  a line of its own, `# sando-warm: MODULE ...`: the SDK and those modules, imported from the project
  directory. The zygote's name carries the size and mtime of every .py file of the project's
  packages named, so an edited module gets a new zygote (the old one goes when unused).
"""

import os
import sys

# What a zygote cannot give its child as the launcher would have it: tracing the SDK sets up at import
# from the environment, and a terminal's sudo credentials (`sudo -v`: a local node run by a user, whose
# `sudo -n` works only in the terminal's session). Then the launcher runs the work itself.
COLD_ENV = ("TRACEPARENT", "PULUMI_OTEL_EXPORTER_OTLP_ENDPOINT", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
PRAGMA = "# sando-warm:"
CHILD = "sando-child"  # a zygote's child's name (/proc/PID/comm): never taken for a zygote  # a program's request for a warm start, a line of its __main__.py


def warm_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SANDO_KEEP_WARM", "300")))
    except ValueError:
        return 300.0


def wants_cold() -> bool:
    if warm_seconds() <= 0 or any(os.environ.get(k) for k in COLD_ENV):
        return True
    if os.geteuid() != 0:
        try:
            os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
            return True  # a user at a terminal
        except OSError:
            pass
    return False


def python_env() -> dict:
    """The PYTHON* variables, which shape a Python's start (the zygote's is the child's)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("PYTHON")}


def name(kind: str, script: str, *more: str) -> str:
    """A zygote's abstract socket name: this user's, of this kind, of this script's and this module's
    text, this Python, this SDK and `more` (what else it loaded), and of this SANDO_KEEP_WARM."""
    import hashlib
    import importlib.machinery

    digest = hashlib.sha256()
    for path in (script, __file__):
        with open(path, "rb") as fh:
            digest.update(fh.read())
    digest.update(sys.executable.encode())
    digest.update(repr(python_env()).encode())
    top = importlib.machinery.PathFinder.find_spec("pulumi")
    if top is not None and top.origin:
        # the SDK, and the directory of the installed packages: a package installed, upgraded or
        # removed there (pip changes its entries) gets a new zygote
        for path in (top.origin, os.path.dirname(os.path.dirname(top.origin))):
            st = os.stat(path)
            digest.update(f"{path} {st.st_mtime_ns} {st.st_size}".encode())
    for item in more:
        digest.update(item.encode() + b"\0")
    return f"sando-{kind}-{os.geteuid()}-{digest.hexdigest()[:16]}-{warm_seconds():g}"  # abstract: NUL first


def peer_uid(sock) -> int:
    import socket
    import struct

    cred = struct.Struct("3i")
    return cred.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, cred.size))[1]


def exactly(conn, n: int) -> bytes:
    got = b""
    while len(got) < n:
        more = conn.recv(n - len(got))
        if not more:
            raise EOFError
        got += more
    return got


def _connect(zygote: str):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + zygote)
        if peer_uid(sock) != os.geteuid():
            raise OSError("the zygote's socket belongs to another user")
        return sock
    except OSError:
        sock.close()
        raise


def launch(zygote: str, spawn: list, argv: list, env: dict, before_spawn=None) -> None:
    """Run this process's work in a child of the zygote `zygote` (started with the command `spawn` if
    none runs, after `before_spawn()`) and exit with its status; returns only when that cannot be done
    (the caller then does the work itself). `argv`, `env`: the child's arguments and environment."""
    import json
    import signal
    import socket
    import subprocess
    import time

    try:
        sock = _connect(zygote)
    except OSError:
        try:
            if before_spawn is not None:
                before_spawn()
            subprocess.Popen(spawn, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True, cwd="/",
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **python_env()})
        except OSError:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                sock = _connect(zygote)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
    with sock:
        try:
            umask = os.umask(0o077)
            os.umask(umask)
            request = json.dumps({"argv": argv, "cwd": os.getcwd(), "umask": umask, "env": env}).encode()
            sock.sendall(len(request).to_bytes(4, "big") + request)
            socket.send_fds(sock, [b"F"], [0, 1, 2])
            child = int.from_bytes(exactly(sock, 4), "big")
        except (OSError, EOFError):
            return  # the zygote went away before it forked: the work is done here

        def forward(signum, _frame):
            try:
                os.kill(child, signum)
            except OSError:
                pass

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, forward)
        status = b""
        while True:  # until the child ends (its end of this socket closes), then its exit status
            try:
                more = sock.recv(16)
            except InterruptedError:
                continue
            except OSError:
                break
            if not more:
                break
            status += more
    os._exit(int(status or b"1") & 0xFF)


def serve(zygote: str, run) -> None:
    """The zygote's loop (what every child needs is loaded by the caller): fork one child per
    connection, which calls `run()` as the launcher would have, then ends (see _child)."""
    import json
    import signal
    import socket

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + zygote)
    except OSError:
        return  # another one runs
    listener.listen(64)
    listener.settimeout(warm_seconds())
    while True:
        try:
            conn, _ = listener.accept()
        except (TimeoutError, socket.timeout):
            return  # unused for SANDO_KEEP_WARM seconds
        except OSError:
            continue
        try:
            conn.settimeout(10)
            if peer_uid(conn) != os.geteuid():
                raise OSError("another user")
            size = int.from_bytes(exactly(conn, 4), "big")
            request = json.loads(exactly(conn, size))
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            if len(fds) != 3:
                raise OSError("no fds")
        except (OSError, ValueError, EOFError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn, request, fds, run)  # never returns
        for fd in fds:
            os.close(fd)
        conn.close()


def _child(conn, request: dict, fds: list, run) -> None:
    """A zygote's child: become the launcher's process (its fds, directory, umask, environment,
    arguments), run, and end when the launcher does (killed included), its status sent to it."""
    import signal
    import threading

    def end(code: int) -> None:
        try:
            conn.sendall(str(code & 0xFF).encode())
        except OSError:
            pass
        real_exit(code & 0xFF)

    real_exit = os._exit
    code = 1
    try:
        with open("/proc/self/comm", "w") as fh:  # not a zygote (zygotes() tells them apart by it)
            fh.write(CHILD)
    except OSError:
        pass
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        import io

        sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115 - the process's own, for its life
        # unbuffered, as `python -u` (the engine reads a provider's port from its stdout at once)
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        conn.settimeout(None)
        conn.sendall(os.getpid().to_bytes(4, "big"))
        os._exit = end  # a run that ends itself at once (exec.patch does) still says its status

        def watch():  # the launcher gone (killed): so is this process
            try:
                while conn.recv(16):
                    pass
            except OSError:
                pass
            real_exit(1)

        threading.Thread(target=watch, daemon=True).start()
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - said on the launcher's stderr, as it would have
        import traceback

        traceback.print_exc()
    # the interpreter's own exit up to its last step: threads joined (grpc's, an executor's), atexit
    # calls made, streams flushed (an exit that skipped these let the engine stop its log service
    # before the program had said its last). Its last step, freeing every module and object, is
    # skipped: ~50 ms of CPU, after which the engine waits at the end of every run.
    threading._shutdown()  # noqa: SLF001 - what Py_FinalizeEx calls first
    import atexit

    atexit._run_exitfuncs()  # noqa: SLF001 - what it calls next
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    end(code)


def zygotes(kind: str | None = None, warm: float | None = None) -> list[int]:
    """This user's zygotes (of a kind, of a SANDO_KEEP_WARM setting, or all), not their children
    (which share their command line, not their name)."""
    found = {}
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            if os.stat(f"/proc/{proc}").st_uid != os.geteuid():
                continue
            with open(f"/proc/{proc}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{proc}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{proc}/comm") as fh:
                if fh.read().strip() == CHILD:
                    continue  # a run's process (a zygote's child, or one whose zygote ended)
        except (OSError, ValueError, IndexError):
            continue
        zygote = next((a.decode() for a in argv if a.startswith(b"sando-") and a.count(b"-") >= 4), "")
        if b"--zygote" in argv and zygote and (kind is None or zygote.startswith(f"sando-{kind}-")) \
                and (warm is None or zygote.endswith(f"-{warm:g}")):
            found[int(proc)] = ppid
    return sorted(pid for pid, ppid in found.items() if ppid not in found)


def stop_all(kind: str | None = None, warm: float | None = None) -> int:
    """End this user's zygotes (of a kind, of a SANDO_KEEP_WARM setting, or all) (tests: a CI job is
    done when its tests are); how many there were. What they forked runs on: each ends with its run."""
    import signal

    ended = 0
    for pid in zygotes(kind, warm):
        try:
            os.kill(pid, signal.SIGTERM)
            ended += 1
        except OSError:
            pass
    return ended


# --- a program's warm start (pulumi-language-python-exec calls program() first thing) -------------


def _wanted(program: str) -> list:
    """The modules a program's __main__.py asks a warm start to load (its `# sando-warm:` line)."""
    main = os.path.join(program, "__main__.py") if os.path.isdir(program) else program
    try:
        with open(main, encoding="utf-8") as fh:
            head = fh.read(4096)
    except OSError:
        return []
    for line in head.splitlines():
        if line.startswith(PRAGMA):
            return line[len(PRAGMA):].split()
    return []


def _sources(project: str, modules: list) -> list:
    """size and mtime of every file of the project's packages (or modules) named: what the zygote
    loaded of the project (and what its modules may have read at import), so that an edit gets a
    new zygote."""
    seen = []
    for top in sorted({m.split(".")[0] for m in modules}):
        base = os.path.join(project, top)
        paths = [base + ".py"] if os.path.isfile(base + ".py") else []
        for root, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            paths += [os.path.join(root, f) for f in sorted(files) if not f.endswith(".pyc")]
        for path in paths:
            st = os.stat(path)
            seen.append(f"{path} {st.st_mtime_ns} {st.st_size}")
    return seen


def program(exec_script: str) -> None:
    """In pulumi-language-python-exec, before anything is imported: run this program in a child of a
    zygote that has loaded the SDK and the modules its __main__.py names; returns (the program runs
    here, as before) when it names none, when a warm start is off or cannot be made."""
    if os.environ.get("SANDO_WARM_CHILD") == "1" or wants_cold() or len(sys.argv) < 2:
        return
    target = sys.argv[-1]  # the program (the language host passes it last, after the options)
    project = os.path.abspath(target if os.path.isdir(target) else os.path.dirname(target) or ".")
    modules = _wanted(os.path.abspath(target))
    if not modules:
        return
    zygote = name("program", exec_script, project, " ".join(modules), *_sources(project, modules))
    spawn = [sys.executable, "-u", __file__, "--zygote", zygote, exec_script, project, *modules]
    launch(zygote, spawn, [exec_script, *sys.argv[1:]], {**os.environ, "SANDO_WARM_CHILD": "1"},
           before_spawn=lambda: _trim("program", warm_seconds(), PROGRAMS - 1))


PROGRAMS = 4  # program zygotes kept per user (one per project directory and version of its modules)


def _trim(kind: str, warm: float, keep: int) -> None:
    """End all but the `keep` newest zygotes of this kind (and SANDO_KEEP_WARM setting) of this user:
    each project directory (a test makes hundreds) and each edit of its modules gets a zygote of its
    own, ~65 MB each; what they forked runs on."""
    import signal

    def started(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return int(fh.read().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            return 0

    for pid in sorted(zygotes(kind, warm), key=lambda p: (started(p), p), reverse=True)[keep:]:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def _program_zygote(zygote: str, exec_script: str, project: str, modules: list) -> None:
    import importlib
    import runpy

    import grpc  # noqa: F401
    import pulumi  # noqa: F401
    import pulumi.runtime  # noqa: F401

    sys.path.insert(0, project)
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a module that fails to load fails in the program, where it is said
        return
    finally:
        sys.path.remove(project)

    def run() -> None:
        runpy.run_path(exec_script, run_name="__main__")

    serve(zygote, run)


if __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]:
    _program_zygote(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
