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


def log(severity: str, message: str, urn: str | None = None, ephemeral: bool = False) -> bool:
    """Show a diagnostic ('info' or 'warning') on the line of the resource being served (or `urn`;
    the whole run's when unknown); False when there is no engine to tell (an upstream provider
    host, or a unit test). An ephemeral one is the resource's latest status: shown on its line
    while it works, not in the Diagnostics at the end."""
    with _lock:
        engine = _connect()
    if engine is None:
        return False
    from pulumi.runtime.proto import engine_pb2

    level = {"info": engine_pb2.INFO, "warning": engine_pb2.WARNING}[severity]
    try:
        with _lock:
            engine.Log(engine_pb2.LogRequest(severity=level, message=message, urn=_current_urn() if urn is None else urn,
                                             streamId=0, ephemeral=ephemeral))
        return True
    except Exception:  # a diagnostic must never fail a deploy
        return False


# --- progress: a resource's latest status (issue 19.5) ---------------------------------------------------

_interactive: bool | None = None


def interactive() -> bool:
    """Whether the operator watches pulumi's interactive display (a terminal, no --non-interactive, not
    CI), which redraws a resource's line in place. Otherwise every status would print a line of its
    own, so a step says at most one. Read from the pulumi process that started this provider."""
    global _interactive
    if _interactive is None:
        _interactive = _pulumi_on_a_terminal()
    return _interactive


def _pulumi_on_a_terminal() -> bool:
    if os.environ.get("CI", "") not in ("", "0", "false") or os.environ.get("PULUMI_NON_INTERACTIVE") == "true":
        return False
    found = _pulumi_process()
    if found is None or b"--non-interactive" in found[1]:
        return False
    try:
        return os.readlink(f"/proc/{found[0]}/fd/1").startswith(("/dev/pts/", "/dev/tty"))
    except OSError:
        return False


def _pulumi_process() -> tuple[int, list[bytes]] | None:
    """(pid, argv) of the pulumi CLI that started this provider, else None. A provider forked by the
    warm start's zygote (engine/bin/sando-provider-host.py) starts from its launcher's pid."""
    pid = int(os.environ.get("SANDO_PLUGIN_PID") or 0) or os.getppid()
    for _ in range(5):  # the provider host, its launcher, the CLI
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if os.path.basename(argv[0].decode(errors="replace")) == "pulumi":
                return pid, argv
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def skips_preview(argv: list[bytes] | None = None) -> bool:
    """Whether this run is a `pulumi up --skip-preview` (as the Automation API runs it): its diffs are
    the update's own, so a node's failure found there is recorded for the verdict, not raised (a raise
    there ends the run before the program's outputs are recorded: they would show as deleted). In a
    preview, or a plain `pulumi up` (which previews first), a diff's failure stops the run at once."""
    if argv is None:
        found = _pulumi_process()
        argv = found[1] if found else []
    short = [a for a in argv if a.startswith(b"-") and not a.startswith(b"--")]
    return any(a in (b"up", b"update") for a in argv) and \
        (any(a in (b"--skip-preview", b"--skip-preview=true") for a in argv) or any(b"f" in a for a in short))


class Progress:
    """One resource's progress, said as its latest status (Pulumi's ephemeral diagnostic): in the
    interactive display as it changes (a step's first status at once, then at most once a second
    unless it matters), in a log only the first status of each step."""

    def __init__(self, urn: str | None = None):
        self.urn = _current_urn() if urn is None else urn
        self._steps: set[str] = set()
        self._last = 0.0

    def say(self, step: str, message: str, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if interactive():
            if not force and step in self._steps and now - self._last < 1.0:
                return  # a new step's first status always shows: the upload right after the build's last
        elif step in self._steps:
            return
        self._steps.add(step)
        self._last = now
        log("info", message, urn=self.urn, ephemeral=True)
