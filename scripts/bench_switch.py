#!/usr/bin/env python3
"""The switch strategies side by side (issue 23), part of `make bench`; alone:
`.venv/bin/python scripts/bench_switch.py [N]`.

One real-systemd test node per strategy (sando:switch.strategy restart | blueGreen), the stand-in
app through the real engine, a bounded poller through Caddy every 10 ms during each deploy:
failed requests and the longest gap between two good answers, across N plain bumps, a version
that takes 3 s to start, and one that crashes at start (that deploy fails: the last good
release stays live). Counted, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import AppRepo, Deploy, TestNodes, engine_env, run_up, tmpdir  # noqa: E402

IMPORT_LINE = "import /etc/caddy/sando-upstream.caddy"
PLAIN_LINE = "reverse_proxy {$MNW_UPSTREAM:127.0.0.1:3000}"
HEALTH = {"timeoutSeconds": 15, "intervalSeconds": 0.2, "expectVersion": True}
STRATEGIES = {"restart": {"strategy": "restart"},
              "blueGreen": {"strategy": "blueGreen", "ports": [3001, 3002], "drainSeconds": 1}}


class Poller(threading.Thread):
    """GET through Caddy every 10 ms, at most `limit` requests: failed ones and the longest time
    between two good answers (or from the start / to the end when there were none)."""

    def __init__(self, url: str, limit: int = 30000):
        super().__init__(daemon=True)
        self.url, self.limit, self.done = url, limit, threading.Event()
        self.requests, self.failed, self.gap = 0, 0, 0.0

    def run(self):
        last_ok = time.monotonic()
        while not self.done.is_set() and self.requests < self.limit:
            self.requests += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    json.loads(resp.read())
                now = time.monotonic()
                self.gap, last_ok = max(self.gap, now - last_ok), now
            except Exception:  # noqa: BLE001 - any failure counts
                self.failed += 1
            time.sleep(0.01)
        self.gap = max(self.gap, time.monotonic() - last_ok)

    def stop(self) -> "Poller":
        self.done.set()
        self.join(timeout=30)
        return self


def _repo(path: Path, blue_green: bool, n: int) -> tuple[AppRepo, list[str]]:
    r = AppRepo(path)
    if blue_green:
        caddyfile = r.path / "server" / "deploy" / "Caddyfile"
        caddyfile.write_text(caddyfile.read_text().replace(PLAIN_LINE, IMPORT_LINE))
        r.commit_tag("v1")
    bumps = [f"v{i}" for i in range(2, 2 + n)]
    for v in bumps:
        r.version(v)
    r.version("slow", ("slow-start", "3000"))
    r.version("crash", ("fix",), ("crash-at-start",))
    return r, bumps


def _deploy(d: Deploy, node, version: str) -> tuple[int, float, bool]:
    poller = Poller(node.caddyUrl)
    poller.start()
    time.sleep(0.3)
    d.set(version=version)
    try:
        run_up(d)
        ok = True
    except Exception:  # noqa: BLE001 - the crash at start fails the run, as it must
        ok = False
    time.sleep(0.3)
    poller.stop()
    return poller.failed, poller.gap, ok


def compare(work: Path, env: dict, n: int, say=print) -> dict:
    """{strategy: {bumps: {failed, longestGap}, slowStart: {...}, crashAtStart: {...}}}"""
    nodes = TestNodes(2, work / "nodes-switch")
    stacks: list[Deploy] = []
    out: dict = {}
    try:
        for (name, switch), node in zip(STRATEGIES.items(), nodes.nodes):
            repo, bumps = _repo(work / f"switch-{name}" / "makenotwork", name == "blueGreen", n)
            d = Deploy(work, env, [node], repo)
            d.set(switch=switch, healthCheck=HEALTH)
            stacks.append(d)
            run_up(d)  # v1, untimed
            failed, gap = 0, 0.0
            for v in bumps:
                f, g, _ = _deploy(d, node, v)
                failed, gap = failed + f, max(gap, g)
            slow = _deploy(d, node, "slow")
            crash = _deploy(d, node, "crash")
            out[name] = {"bumps": {"n": n, "failed": failed, "longestGap": round(gap, 3)},
                         "slowStart3s": {"failed": slow[0], "longestGap": round(slow[1], 3)},
                         "crashAtStart": {"failed": crash[0], "longestGap": round(crash[1], 3),
                                          "runFailed": not crash[2]}}
            say(f"   {name:<10} {n} bumps: {failed} failed, longest gap {gap:.2f}s; 3 s start: {slow[0]} failed, "
                f"gap {slow[1]:.2f}s; crash at start: {crash[0]} failed, gap {crash[1]:.2f}s")
    finally:
        for d in stacks:
            with contextlib.suppress(Exception):
                d.destroy()
        nodes.stop()
    return out


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    base = tmpdir("sando-bench-switch-")
    try:
        print(json.dumps(compare(base, engine_env(base / "engine"), runs), indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
