"""sando_components/sdk.py: the three SDK costs cut in the program process (issue 24)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sando_components import sdk

REPO = Path(__file__).resolve().parents[2]


def test_the_cuts_apply_to_the_pinned_sdk_only():
    """lean() on the SDK requirements.txt pins (a bump fails here: read the three again, then move
    PINNED); in a process of its own, as the program: the linear wait, an empty stack trace, the
    resource module's debug messages dropped and pulumi.log.debug left as it was."""
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert pins["pulumi"] == sdk.PINNED
    code = (
        "import pulumi.log\n"
        "from pulumi.runtime import resource, stack\n"
        "from sando_components import sdk\n"
        "debug = pulumi.log.debug\n"
        "assert sdk.lean()\n"
        "assert stack.wait_for_rpcs is sdk._wait_for_rpcs\n"
        "assert len(resource._get_stack_trace().frames) == 0\n"
        "assert resource.log.debug('registering') is None and pulumi.log.debug is debug\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr
    # another SDK: nothing is changed
    code = ("import importlib.metadata as m\nm.version = lambda name: '0.0.1'\n"
            "from pulumi.runtime import stack\nfrom sando_components import sdk\n"
            "before = stack.wait_for_rpcs\nassert not sdk.lean() and stack.wait_for_rpcs is before\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr


class Settings:
    """What the wait reads of the SDK's settings: its lock and its set of outstanding outputs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.outputs: set = set()


class Counted(asyncio.Future):
    """An output that counts the done callbacks put on it."""

    callbacks = 0

    def add_done_callback(self, fn, *, context=None):
        Counted.callbacks += 1
        super().add_done_callback(fn, context=context)


def test_the_outputs_wait_puts_one_callback_on_each_output_and_takes_new_ones():
    """500 outputs finishing one after another, each of the first ten starting another as it
    finishes (as a resolved output starts its derived ones): all awaited, one callback each (the
    SDK's loop puts one on every pending output at every round: 51,486 here)."""

    async def main():
        loop = asyncio.get_running_loop()
        settings = Settings()
        Counted.callbacks = 0
        made = []

        def output(delay: float):
            fut = Counted(loop=loop)
            made.append(fut)
            with settings.lock:
                settings.outputs.add(fut)

            def done():
                fut.set_result(None)
                if len(made) < 510:
                    output(0.001)

            loop.call_later(delay, done)

        for i in range(500):
            output(i * 0.0001)
        await asyncio.wait_for(sdk._wait_for_outputs(settings), timeout=30)
        return made

    made = asyncio.run(main())
    assert len(made) == 510 and all(f.done() for f in made)
    assert Counted.callbacks == 510


def test_the_first_output_to_fail_is_raised_at_once():
    """An output that fails while another never finishes: its error is raised (the wait does not
    hang on the pending one), as the SDK's own wait does."""

    async def main():
        loop = asyncio.get_running_loop()
        settings = Settings()
        pending, failing = loop.create_future(), loop.create_future()
        settings.outputs |= {pending, failing}
        loop.call_later(0.01, failing.set_exception, RuntimeError("node1: no such release"))
        try:
            await asyncio.wait_for(sdk._wait_for_outputs(settings), timeout=10)
        finally:
            pending.cancel()

    with pytest.raises(RuntimeError, match="node1: no such release"):
        asyncio.run(main())
