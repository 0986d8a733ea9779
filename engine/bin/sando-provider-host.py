"""sando's dynamic-provider host: the Pulumi SDK's own (`python -m pulumi.dynamic`), with three
changes made before it starts. Installed by `make setup` into .tools/bin and run by
pulumi-resource-pulumi-python; it imports nothing of sando, so any project's dynamic providers
run under it unchanged.

- more worker threads: the SDK serves 4 calls at once, so with more nodes than that nodes
  would wait for each other; sando works on every node at once;
- an error whose class is (or derives from) one named OperatorError (sando's errors for
  operators) is reported as its message alone, without a Python traceback, unless
  SANDO_DEBUG=1;
- the engine's address (a provider's first argument) is put in SANDO_ENGINE_ADDRESS, so a
  provider can send warnings to the operator's console (sando_components/diagnostics.py),
  which dynamic providers cannot otherwise do; the URN of the resource a worker thread serves is
  in pulumi.dynamic.current_call.urn, so a warning is shown on that resource's line;
- Cancel (the engine's call when the operator presses Ctrl-C) runs the callables a provider put in
  pulumi.dynamic.on_cancel (the SDK's own Cancel does nothing), so a provider can say what goes on
  on the nodes after the interrupt;
- an invoke of `pulumi-python:dynamic:start` (the SDK's own Invoke refuses every token) starts
  work in this process at once: its `hook` argument names a function (`module:function`, imported
  from the project directory, as the SDK imports a serialized provider) that gets the invoke's
  arguments in a thread of its own; the invoke answers at once, with nothing. A program sends it
  first thing, so that this process, which the engine otherwise starts only at the program's
  first registration, starts while the program still works, and can begin what its resources
  will need (sando: reading every node) before the engine asks for it.
"""

import importlib.machinery
import os
import runpy
import sys
import traceback
import types
from concurrent import futures

# --- a warm start: a process with the SDK loaded forks each run's provider --------------------------
#
# Python's start and the SDK's imports (grpc, pulumi) cost ~0.2 s of CPU at the start of every run,
# on its critical path (the nodes' reads wait for this process). As a zygote does: a process of
# this user that has loaded them (started by the first run, detached, gone after SANDO_KEEP_WARM
# seconds unused, default 300; 0: none) forks, for each run, a child that takes this launcher's
# stdin, stdout and stderr, its environment, directory and arguments, and runs main() below. This
# launcher stays as the engine's plugin process: it passes the signals the engine sends it on to the
# child, and the child ends when it goes. The zygote has loaded nothing of the project (the child
# imports sando_components from the project directory, as before) and holds no secret: its
# environment is PATH, LANG and the PYTHON* variables; each side checks the other's uid (SO_PEERCRED). Any failure on
# the way: this process runs the provider itself, as before.


def warm_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SANDO_KEEP_WARM", "300")))
    except ValueError:
        return 300.0


# What a zygote cannot give its child as this process would have it: tracing the SDK sets up at import
# from the environment, and a terminal's sudo credentials (`sudo -v`: a local node run by a user, whose
# `sudo -n` works only in the terminal's session). Then this process runs the provider itself.
COLD_ENV = ("TRACEPARENT", "PULUMI_OTEL_EXPORTER_OTLP_ENDPOINT", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")


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


def zygote_name() -> str:
    """The zygote's abstract socket: this user's, this host file's, this Python's and this SDK's."""
    import hashlib

    digest = hashlib.sha256()
    with open(__file__, "rb") as fh:
        digest.update(fh.read())
    digest.update(sys.executable.encode())
    digest.update(repr(python_env()).encode())
    top = importlib.machinery.PathFinder.find_spec("pulumi")
    if top is not None and top.origin:
        st = os.stat(top.origin)
        digest.update(f"{top.origin} {st.st_mtime_ns} {st.st_size}".encode())
    return f"sando-provider-{os.geteuid()}-{digest.hexdigest()[:16]}-{warm_seconds():g}"  # abstract: NUL first


def _peer_uid(sock) -> int:
    import socket
    import struct

    cred = struct.Struct("3i")
    return cred.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, cred.size))[1]


def _connect(name: str):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + name)
        if _peer_uid(sock) != os.geteuid():
            raise OSError("the zygote's socket belongs to another user")
        return sock
    except OSError:
        sock.close()
        raise


def via_zygote() -> None:
    """Run this run's provider in a child of the zygote (started if none runs) and end with it; returns
    only when that cannot be done (then this process runs the provider itself)."""
    import json
    import signal
    import subprocess
    import time

    if wants_cold():
        return
    name = zygote_name()
    try:
        sock = _connect(name)
    except OSError:
        try:
            subprocess.Popen([sys.executable, "-u", __file__, "--zygote", name], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             close_fds=True, cwd="/",
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                                  **python_env()})
        except OSError:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                sock = _connect(name)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
    with sock:
        try:
            umask = os.umask(0o077)
            os.umask(umask)
            request = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "umask": umask,
                                  "env": {**os.environ, "SANDO_PLUGIN_PID": str(os.getpid())}}).encode()
            sock.sendall(len(request).to_bytes(4, "big") + request)
            import socket

            socket.send_fds(sock, [b"F"], [0, 1, 2])
            got = b""
            while len(got) < 4:
                more = sock.recv(4 - len(got))
                if not more:
                    return  # the zygote went away before it forked: run it here
                got += more
        except OSError:
            return
        child = int.from_bytes(got, "big")

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


def zygote(name: str) -> None:
    """The zygote: load what every provider process loads, then fork one child per connection."""
    import json
    import signal
    import socket

    import dill  # noqa: F401
    import grpc  # noqa: F401
    import pulumi.dynamic  # noqa: F401
    import pulumi.runtime  # noqa: F401
    from google.protobuf import empty_pb2, json_format, struct_pb2  # noqa: F401
    from pulumi.runtime import rpc  # noqa: F401
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
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
            if _peer_uid(conn) != os.geteuid():
                raise OSError("another user")
            size = int.from_bytes(_exactly(conn, 4), "big")
            request = json.loads(_exactly(conn, size))
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            if len(fds) != 3:
                raise OSError("no fds")
        except (OSError, ValueError, EOFError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        conn.close()


def zygotes(warm: float | None = None) -> list[int]:
    """This user's zygotes (of a SANDO_KEEP_WARM setting, or all), not their children (which share
    their command line)."""
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
        except (OSError, ValueError, IndexError):
            continue
        if len(argv) > 3 and argv[-3] == b"--zygote" and os.path.basename(argv[-4]) == b"sando-provider-host.py" \
                and (warm is None or argv[-2].endswith(f"-{warm:g}".encode())):
            found[int(proc)] = ppid
    return sorted(pid for pid, ppid in found.items() if ppid not in found)


def stop_all(warm: float | None = None) -> int:
    """End this user's zygotes (of a SANDO_KEEP_WARM setting, or all) (tests: a CI job is done when
    its tests are); how many there were. The providers they forked run on: each ends with its run."""
    import signal

    ended = 0
    for pid in zygotes(warm):
        try:
            os.kill(pid, signal.SIGTERM)
            ended += 1
        except OSError:
            pass
    return ended


def _exactly(conn, n: int) -> bytes:
    got = b""
    while len(got) < n:
        more = conn.recv(n - len(got))
        if not more:
            raise EOFError
        got += more
    return got


def _child(conn, request: dict, fds: list) -> None:
    """A zygote's child: become the launcher's provider process, and end when the launcher does."""
    import signal
    import threading

    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        import io

        sys.stdin = open(0, "r", closefd=False)  # noqa: SIM115 - the process's own, for its life
        # unbuffered, as `python -u` (the engine reads the provider's port from stdout at once)
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [__file__, *request["argv"]]
        conn.settimeout(None)
        conn.sendall(os.getpid().to_bytes(4, "big"))

        def watch():  # the launcher gone (killed): so is this provider
            try:
                while conn.recv(16):
                    pass
            except OSError:
                pass
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - said on the engine's stderr, as the provider would
        traceback.print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(str(code).encode())
    except (OSError, ValueError):
        pass
    # the interpreter's own exit, as the provider's cold start ends, up to its last step: its
    # threads joined (grpc's, the executor's), its atexit calls made, its streams flushed (an exit
    # that skipped these let the engine stop its log service before the program had said its
    # last). Its last step, freeing every module and object, is skipped: ~50 ms of CPU, after
    # which the engine waits at the end of every run.
    threading._shutdown()  # noqa: SLF001 - what Py_FinalizeEx calls first
    import atexit

    atexit._run_exitfuncs()  # noqa: SLF001 - what it calls next
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code & 0xFF)


def lazy_automation() -> None:
    """The SDK's `pulumi/__init__` imports pulumi.automation (~30 ms of CPU, YAML and all), which a
    provider never uses: a stand-in takes its place, which loads it on first use. (The standard
    library's LazyLoader cannot: the import system reads a module's __spec__, which loads it.)"""
    top = importlib.machinery.PathFinder.find_spec("pulumi")
    if top is None or not top.submodule_search_locations:
        return
    spec = importlib.machinery.PathFinder.find_spec("pulumi.automation", list(top.submodule_search_locations))
    if spec is None:
        return

    class Later(types.ModuleType):
        def __getattr__(self, name: str):
            if sys.modules.get(spec.name) is self:
                del sys.modules[spec.name]
            real = importlib.import_module(spec.name)
            self.__dict__.update({k: v for k, v in vars(real).items() if k not in ("__spec__", "__loader__")})
            return getattr(real, name)

    later = Later(spec.name)
    later.__spec__, later.__file__, later.__path__ = spec, spec.origin, spec.submodule_search_locations
    sys.modules[spec.name] = later


if __name__ == "__main__" and sys.argv[1:2] != ["--zygote"]:
    try:
        via_zygote()  # returns only when there is no warm start
    except Exception:  # noqa: BLE001 - then this process runs the provider itself
        pass
lazy_automation()

import grpc  # noqa: E402 - after via_zygote and lazy_automation
from pulumi.runtime.proto import provider_pb2_grpc as servicers  # noqa: E402

WORKERS = 64


def _operator_error(exc: BaseException | None) -> bool:
    return exc is not None and any(c.__name__ == "OperatorError" for c in type(exc).__mro__)


# The URN of the resource whose call a worker thread is serving, so that a provider's diagnostics
# (sando_components/diagnostics.py) are shown on that resource's line: pulumi.dynamic.current_call.urn
CALLS = ("Check", "Diff", "Create", "Update", "Delete", "Read")


def with_urn(add):
    import threading

    import pulumi.dynamic

    current = pulumi.dynamic.current_call = threading.local()
    hooks = pulumi.dynamic.on_cancel = []

    def cancel(method):
        def call(request, context):
            for hook in list(hooks):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - a hook must never break the cancel
                    traceback.print_exc()
            return method(request, context)
        return call

    def wrap(method):
        def call(request, context):
            current.urn = getattr(request, "urn", "")
            try:
                return method(request, context)
            finally:
                current.urn = ""
        return call

    def add_servicer(servicer, server):
        for name in CALLS:
            setattr(servicer, name, wrap(getattr(servicer, name)))
        servicer.Cancel = cancel(servicer.Cancel)
        servicer.Invoke = start(servicer.Invoke)
        return add(servicer, server)
    return add_servicer


START = "pulumi-python:dynamic:start"


def start(invoke):
    """`pulumi-python:dynamic:start`: run the named hook in a thread of its own, answer at once."""
    import importlib
    import threading

    from google.protobuf import json_format
    from pulumi.runtime.proto import provider_pb2

    def quietly(fn, *args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - a head start only: the resources' own calls do the work and report
            if os.environ.get("SANDO_DEBUG", "") not in ("", "0", "false"):
                traceback.print_exc()
            return None

    def hook(name: str):
        # imported under the lock the SDK holds while it deserializes a provider (which imports the
        # same modules): two threads importing a package's modules in different orders can each be
        # handed the other's half-initialised module (seen: KeyError 'sando_components.providers')
        module, _, attr = name.partition(":")
        with getattr(sys.modules.get("__main__"), "_PROVIDER_LOCK", None) or threading.Lock():
            return getattr(importlib.import_module(module), attr)

    def call(request, context):
        if request.tok != START:
            return invoke(request, context)
        args = json_format.MessageToDict(request.args)
        fn = quietly(hook, str(args.get("hook", "")))
        if fn is not None:
            threading.Thread(target=quietly, args=(fn, args), daemon=True).start()
        return provider_pb2.InvokeResponse()
    return call


def main() -> None:
    # as `python -m pulumi.dynamic` would: the project directory (the cwd) first on the path, so
    # the providers serialized by the program (e.g. sando_components.providers.*) import from it
    sys.path[0] = os.getcwd()
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        os.environ["SANDO_ENGINE_ADDRESS"] = sys.argv[1]
    debug = os.environ.get("SANDO_DEBUG", "") not in ("", "0", "false")
    make_server, full_traceback = grpc.server, traceback.format_exc

    def server(_pool, *args, **kwargs):
        return make_server(futures.ThreadPoolExecutor(max_workers=WORKERS), *args, **kwargs)

    def format_exc(*args, **kwargs) -> str:
        exc = sys.exc_info()[1]
        return str(exc) if _operator_error(exc) and not debug else full_traceback(*args, **kwargs)

    grpc.server = server
    traceback.format_exc = format_exc
    servicers.add_ResourceProviderServicer_to_server = with_urn(servicers.add_ResourceProviderServicer_to_server)
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote(sys.argv[2])
    else:
        main()
