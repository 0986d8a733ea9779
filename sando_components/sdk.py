"""Three costs of the Pulumi Python SDK that grow with the fleet, cut in the program process (issue 24).

Measured on a 16-node bump (the program's whole run profiled; `make bench`'s rig): the program used
~45 ms of CPU per node on a machine whose 16-node run is CPU-bound, and three SDK habits were most of
it. None of them is something sando or its operators use:

- After the program body, `pulumi.runtime.stack.wait_for_rpcs` waits for the outstanding outputs
  with `asyncio.wait(all of them, FIRST_COMPLETED)` in a loop: every round adds and removes a done
  callback on every pending output, so the wait is quadratic in the outputs (16 nodes: ~71,000
  callbacks, ~0.5 s of CPU; 64 nodes: 16 times that). `_wait_for_rpcs` below lets the SDK's own
  wait for the RPCs and waits for the outputs itself, linearly: one callback per output, the same
  order of errors (the first output to fail is re-raised as soon as it fails).
- Every resource registration collects the Python stack and a source position for each frame
  (`_get_stack_trace`, ~0.8 ms a resource): the engine keeps it for Pulumi Cloud's "source"
  view. sando registers an empty trace.
- Every registration sends three debug messages to the engine, each a blocking gRPC call (~0.6
  ms): the engine drops them unless it logs at debug level. Those of the SDK's resource module
  are dropped here; `pulumi.log.debug` (sando's own) is unchanged.

`lean()` applies these only to the SDK version they were written against (requirements.txt pins
it); with any other version it changes nothing, and tests/unit/test_sdk.py fails, so a bump is
noticed and the three looked at again.
"""

from __future__ import annotations

import asyncio
import types

PINNED = "3.272.0"  # the pulumi package these were read from (requirements.txt)


_sdk_wait_for_rpcs = None  # the SDK's own, set by lean(): it still waits for the RPCs


async def _wait_for_rpcs(await_all_outstanding_tasks: bool = True) -> None:
    """pulumi.runtime.stack.wait_for_rpcs with its outputs' wait linear (see above): the SDK's own
    waits for the RPCs, this for the outputs, again while either brings more RPCs."""
    from pulumi.runtime.settings import SETTINGS, _get_rpc_manager

    while True:
        await _sdk_wait_for_rpcs(await_all_outstanding_tasks=False)
        if await_all_outstanding_tasks:
            await _wait_for_outputs(SETTINGS)
        if len(_get_rpc_manager().rpcs) == 0:
            return


async def _wait_for_outputs(settings) -> None:
    """Until no output is outstanding (new ones are taken as they appear): each output gets one done
    callback, and each that finishes is awaited as it finishes, so a failed one is re-raised at once."""
    finished: asyncio.Queue = asyncio.Queue()
    watched: set = set()
    while True:
        with settings.lock:
            # the SDK's own: a finished output removes itself from the set, a failed one stays
            new = [t for t in settings.outputs if t not in watched]
            settings.outputs.difference_update(new)
        for task in new:
            watched.add(task)
            task.add_done_callback(finished.put_nowait)
        if not watched:
            return
        task = await finished.get()
        watched.discard(task)
        await task  # re-raises its exception, as the SDK's loop does


def _no_debug(*_args, **_kwargs) -> None:
    return None


def lean() -> bool:
    """Apply the three cuts in this process (before any resource is registered); False, changing
    nothing, when the installed SDK is not the one they were read from."""
    from importlib.metadata import version

    if version("pulumi") != PINNED:
        return False
    from pulumi.runtime import resource, stack
    from pulumi.runtime.proto import source_pb2

    global _sdk_wait_for_rpcs
    if _sdk_wait_for_rpcs is None:
        _sdk_wait_for_rpcs = stack.wait_for_rpcs
    stack.wait_for_rpcs = _wait_for_rpcs
    resource._get_stack_trace = source_pb2.StackTrace  # an empty trace: no source position
    sdk_log = resource.log
    resource.log = types.SimpleNamespace(debug=_no_debug, info=sdk_log.info, warn=sdk_log.warn, error=sdk_log.error)
    return True
