"""Warnings and notes for the operator's console from inside a provider.

Dynamic providers cannot log through the SDK; sando's provider host
(engine/bin/sando-provider-host.py) puts the engine's address it is started with in
SANDO_ENGINE_ADDRESS, and this module connects to it on first use.
"""

from __future__ import annotations

import os
import threading

_engine = None
_lock = threading.Lock()


def _connect():
    global _engine
    address = os.environ.get("SANDO_ENGINE_ADDRESS")
    if _engine is None and address:
        import grpc
        from pulumi.runtime.proto import engine_pb2_grpc

        _engine = engine_pb2_grpc.EngineStub(grpc.insecure_channel(address))
    return _engine


def _current_urn() -> str:
    """The resource whose call this thread serves (set by sando's provider host), else ""."""
    import sys

    call = getattr(sys.modules.get("pulumi.dynamic"), "current_call", None)
    return getattr(call, "urn", "") or ""


def log(severity: str, message: str) -> bool:
    """Show a diagnostic ('info' or 'warning') on the line of the resource being served (the whole
    run's when unknown); False when there is no engine to tell (an upstream provider host, or a
    unit test)."""
    with _lock:
        engine = _connect()
    if engine is None:
        return False
    from pulumi.runtime.proto import engine_pb2

    level = {"info": engine_pb2.INFO, "warning": engine_pb2.WARNING}[severity]
    try:
        with _lock:
            engine.Log(engine_pb2.LogRequest(severity=level, message=message, urn=_current_urn(), streamId=0,
                                             ephemeral=False))
        return True
    except Exception:  # a diagnostic must never fail a deploy
        return False
