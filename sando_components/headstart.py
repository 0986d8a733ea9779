"""A head start for the provider process (issue 24: the fixed cost of every run).

The engine starts the dynamic-provider process only at the program's first registration, and
registrations leave the program only once its main body has run: so the program's own work, the
provider's start (Python, the SDK) and the first read of each node came one after another. The
program sends an invoke of `pulumi-python:dynamic:start` (engine/bin/sando-provider-host.py) first
thing, from a thread of its own, which makes the engine start the provider at once; and, once the
config is read, a second one that starts reading every node (providers/base.read_nodes), and a third
that starts the status reads of the nodes that will switch (ahead.read_early). The
resources' own checks then find the reads done or under way. An invoke is recorded nowhere (not in
the state); the key goes in it marked secret, as a resource input would. A provider host without
the hook refuses the invoke: nothing is lost but the head start.

Nothing here imports more than the SDK already has loaded: it runs before the program's imports.
"""

from __future__ import annotations

import threading

START = "pulumi-python:dynamic:start"  # the token sando-provider-host.py answers
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # the engine's marker of a secret value (Pulumi's wire format)
SECRET = "1b47061264138c4ac30d75fd1eb44270"


def secret(value: str) -> dict:
    return {SECRET_SIG: SECRET, "value": value}


def send(hook: str, args: dict | None = None) -> threading.Thread:
    """Invoke START with `hook` (`module:function` of the provider side) and `args`, in a thread:
    the program does not wait for the provider to start. A failure is silent (a head start only)."""

    from pulumi.runtime import settings

    monitor = settings.get_monitor()  # here: the SDK's settings are the program thread's (context variables)

    def call() -> None:
        try:
            from google.protobuf import struct_pb2
            from pulumi.runtime.proto import resource_pb2

            if monitor is None:  # not under the engine
                return
            struct = struct_pb2.Struct()
            struct.update({**(args or {}), "hook": hook})
            monitor.Invoke(resource_pb2.ResourceInvokeRequest(tok=START, args=struct, acceptResources=False))
        except Exception:  # noqa: BLE001 - the resources' own calls do the work and report
            pass

    thread = threading.Thread(target=call, name=f"headstart {hook}", daemon=True)
    thread.start()
    return thread


def provider() -> threading.Thread:
    """Start the provider process now; it loads what the nodes' reads need meanwhile."""
    return send("sando_components.providers.base:warm")


def reads(nodes: list[dict]) -> threading.Thread:
    """Start reading every node (props as the Reach resource has them: node, connection, privateKey,
    releaseRoot, service), all at once, in the provider process."""
    return send(READS, read_args(nodes))


READS = "sando_components.providers.base:read_nodes"
AHEAD = "sando_components.ahead:read_early"


def ahead(nodes: list[dict]) -> threading.Thread | None:
    """Start, after each node's read, the status read a pointer's diff needs when the node will
    switch and its migration gate is on (ahead.read_early); nodes as stack.ahead_reads gives them."""
    return send(AHEAD, read_args(nodes)) if nodes else None


def read_args(nodes: list[dict]) -> dict:
    """The invoke's arguments: the nodes, each key marked secret."""
    return {"nodes": [{**n, "privateKey": secret(n["privateKey"])} if n.get("privateKey") else n for n in nodes]}
