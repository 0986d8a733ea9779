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
# on its critical path (the nodes' reads wait for this process): a zygote that has loaded them forks
# each run's provider process (sando_zygote.py, beside this file, says how). It has loaded nothing
# of the project (the child imports sando_components from the project directory, as before).

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import sando_zygote as zy
finally:
    del sys.path[0]


def via_zygote() -> None:
    """Run this run's provider in a child of the zygote (started if none runs) and end with it; returns
    only when that cannot be done (then this process runs the provider itself)."""
    if zy.wants_cold():
        return
    name = zy.name("provider", __file__)
    zy.launch(name, [sys.executable, "-u", __file__, "--zygote", name], [__file__, *sys.argv[1:]],
              {**os.environ, "SANDO_PLUGIN_PID": str(os.getpid())})


def zygote(name: str) -> None:
    """The zygote: load what every provider process loads, then fork one child per run (main())."""
    import dill  # noqa: F401
    import pulumi.dynamic  # noqa: F401
    import pulumi.runtime  # noqa: F401
    from google.protobuf import empty_pb2, json_format, struct_pb2  # noqa: F401
    from pulumi.runtime import rpc  # noqa: F401
    from pulumi.runtime.proto import provider_pb2  # noqa: F401

    zy.serve(name, main)


def zygotes(warm: float | None = None) -> list[int]:
    """This user's provider zygotes (of a SANDO_KEEP_WARM setting, or all)."""
    return zy.zygotes("provider", warm)


def stop_all(warm: float | None = None) -> int:
    """End this user's zygotes, of both kinds (of a SANDO_KEEP_WARM setting, or all): a test session
    ends its own; how many there were."""
    return zy.stop_all(None, warm)


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
