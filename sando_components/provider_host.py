"""sando's dynamic-provider host: the Pulumi SDK's own (`python -m pulumi.dynamic`), with
three changes, made before it starts:

- more worker threads (the SDK serves 4 calls at once: with more nodes than that, nodes
  would wait for each other; sando works on every node at once);
- an OperatorError (sando's errors for operators) is reported as its message alone,
  without a Python traceback, unless SANDO_DEBUG=1;
- the engine's address (the provider's first argument) is kept, so providers can send
  warnings to the operator's console (diagnostics.py), which dynamic providers cannot otherwise do.

`.tools/bin/pulumi-resource-pulumi-python` (installed by `make setup`) runs this module.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from concurrent import futures

WORKERS = 64


def debug() -> bool:
    return os.environ.get("SANDO_DEBUG", "") not in ("", "0", "false")


def main() -> None:
    import grpc

    from sando_components import diagnostics
    from sando_components.errors import OperatorError

    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        diagnostics.connect(sys.argv[1])
    make_server = grpc.server

    def server(_pool, *args, **kwargs):
        return make_server(futures.ThreadPoolExecutor(max_workers=WORKERS), *args, **kwargs)

    full_traceback = traceback.format_exc

    def format_exc(*args, **kwargs) -> str:
        exc = sys.exc_info()[1]
        if isinstance(exc, OperatorError) and not debug():
            return str(exc)
        return full_traceback(*args, **kwargs)

    grpc.server = server
    traceback.format_exc = format_exc
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
