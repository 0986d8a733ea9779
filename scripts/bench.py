#!/usr/bin/env python3
"""make bench: deploy timings measured side by side in one run; ratios are printed, never asserted.

Real sshd test nodes on loopback (scripts/testnodes) and the real engine (the pulumi
built by `make setup`), all in a temp dir; everything started here (stacks, nodes) is
cleaned up in `finally`, also on Ctrl-C. HEADER below (printed too) says what is timed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sando_components import build  # noqa: E402
from sando_components.config import SourceConfig  # noqa: E402
from tests.support import AppRepo, Deploy, Node, TestNodes, engine_env, run_up, tmpdir  # noqa: E402

BIN_NAMES = ["makenotwork", "mnw-admin"]  # what tests.support.Deploy configures (testnot/prod)
RELEASE_ROOT = "/opt/makenotwork"
NEW_VERSIONS = ["v2", "v3", "v4"]
ROLLBACKS = ["v3", "v4", "v3"]  # B is at v4 by then: v4->v3, v3->v4, v4->v3, all retained releases


HEADER = """\
   What runs: 7 real sshd test nodes on loopback, started once, in three sets:
     A: 3 nodes, "deploy.sh style": per node, one after the other, OpenSSH client with
        pinned host keys, 5 connections per node: ssh mkdir releases/<v>; scp makenotwork,
        mnw-admin, error-pages; ssh ln -sfn releases/<v> current; ssh systemctl restart
        makenotwork; ssh curl <appUrl> until it answers (one loop in one session)
     B: 3 nodes, one sando stack (`pulumi up`: the engine works on the nodes in parallel)
     C: 1 node,  one sando stack
   A, B and C all start from v1 live (untimed; A is bootstrapped by a sando stack of its
   own, since deploy.sh never installed the unit file either). Then the same new versions
   v2, v3, v4 go to A, B and C, one round per version, alternating whether A or B goes
   first; every one is a version the nodes do not have yet, so all really upload and
   restart. After each new version B also runs a no-op `pulumi up` (same pin); at the end
   B rolls back by pin v4->v3->v4->v3 (retained releases: no upload).
   All versions are built before anything is timed (the build cache is keyed by commit
   and shared by every stack), so no timed deploy compiles anything. Checks (not
   timings): nodes serve the deployed version; a new version created one Release per
   node, a no-op changed nothing, a rollback changed only the `current` pointers, and no
   deploy rebuilt anything."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def in_parallel(*fns):
    """Run untimed setup/cleanup work concurrently; re-raise the first error."""
    with ThreadPoolExecutor(max_workers=len(fns) or 1) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def authorize(nodes: list[Node]) -> None:
    """A sando stack has one sshPrivateKey (tests.support.Deploy uses the first node's), but
    each test node accepts only its own key: let the stack's key in on its other nodes too."""
    pub = Path(nodes[0].privateKeyPath + ".pub").read_text()
    for n in nodes[1:]:
        with open(Path(n.privateKeyPath).with_name("authorized_keys"), "a") as fh:
            fh.write(pub)


# --- "deploy.sh style": what the old script did, per node, one node after the other --------------


class Baseline:
    """OpenSSH client, one connection per step, host keys pinned in a known_hosts file."""

    def __init__(self, nodes: list[Node], work: Path, artifacts: dict[str, list[Path]]):
        self.nodes, self.artifacts = nodes, artifacts
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text("".join(f"[{n.host}]:{n.port} {n.hostKey}\n" for n in nodes))

    def _opts(self, n: Node) -> list[str]:
        return ["-F", "/dev/null", "-i", n.privateKeyPath, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15"]

    def ssh(self, n: Node, command: str) -> None:
        subprocess.run(["ssh", *self._opts(n), "-p", str(n.port), f"{n.user}@{n.host}", command],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)

    def scp(self, n: Node, sources: list[str], dest: str) -> None:
        subprocess.run(["scp", "-q", "-r", *self._opts(n), "-P", str(n.port), *sources, f"{n.user}@{n.host}:{dest}"],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)

    def deploy(self, version: str) -> None:
        sources = [str(p) for p in self.artifacts[version]]
        for n in self.nodes:
            rr = n.root + RELEASE_ROOT
            dest = f"{rr}/releases/{version}"
            self.ssh(n, shlex.join(["mkdir", "-p", dest]))
            self.scp(n, sources, dest + "/")
            self.ssh(n, shlex.join(["ln", "-sfn", f"releases/{version}", f"{rr}/current"]))
            self.ssh(n, "systemctl restart makenotwork")
            url = shlex.quote(n.appUrl)
            self.ssh(n, f"for i in $(seq 1 100); do curl -fsS --max-time 3 {url} >/dev/null && exit 0; "
                        "sleep 0.2; done; exit 1")


# --- helpers ----------------------------------------------------------------------------------


def check_serving(nodes: list[Node], version: str, what: str) -> None:
    for n in nodes:
        served = n.served().get("version")
        if served != version:
            raise RuntimeError(f"{what}: {n.name} serves {served!r}, expected {version!r}")


def check_steps(what: str, changed: dict[str, str], nodes: list[Node], kind: str, version: str) -> None:
    names = [n.name for n in nodes]
    if kind == "new":
        missing = [nm for nm in names if changed.get(f"{nm}-release-{version}-files") != "create"]
        if missing:
            raise RuntimeError(f"{what}: expected an upload (Release create) on {missing}; steps: {changed}")
    elif kind == "noop":
        if changed:
            raise RuntimeError(f"{what}: a no-op up changed {changed}")
    elif kind == "rollback":
        if changed != {f"{nm}-current-switch": "update" for nm in names}:
            raise RuntimeError(f"{what}: a rollback should switch only the pointers; steps: {changed}")


class Timings:
    def __init__(self):
        self.runs: dict[str, list[float]] = {}

    def timed(self, label: str, fn):
        t0 = time.monotonic()
        result = fn()
        took = time.monotonic() - t0
        self.runs.setdefault(label, []).append(took)
        say(f"   {label:<44} {took:6.2f}s")
        return result

    def median(self, label: str) -> float:
        return statistics.median(self.runs[label])


# --- cleanup ----------------------------------------------------------------------------------


def engine_processes(marker: bytes) -> list[int]:
    """Engine processes of this run: the automation API leaves an interrupted `pulumi up`
    (and its language host and providers) running, so they are found by the private
    backend URL that only this run puts in their environment, and ended by pid."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/environ", "rb") as fh:
                    if marker in fh.read().split(b"\0"):
                        pids.append(int(p))
            except OSError:
                pass
    return pids


def end_engine_processes(marker: bytes) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        pids = engine_processes(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while engine_processes(marker) and time.monotonic() < deadline:  # zombies have no environ
            time.sleep(0.1)


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    t_start = time.monotonic()
    say("== sando bench: deploy timings measured side by side (medians of 3; ratios, no thresholds)")
    say(f"   machine: nproc {len(os.sched_getaffinity(0))} (of {os.cpu_count()} CPUs), load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    say(HEADER)

    work = tmpdir("sando-bench-")
    env = engine_env(work / "engine")
    marker = f"PULUMI_BACKEND_URL={env['PULUMI_BACKEND_URL']}".encode()
    testnodes: TestNodes | None = None
    stacks: list[Deploy] = []
    t = Timings()
    try:
        say("\n== setup (untimed)")
        app = AppRepo(work / "makenotwork")
        for v in NEW_VERSIONS:
            app.version(v)
        versions = ["v1", *NEW_VERSIONS]

        # Build every version once, into the cache the stacks use (the Release provider
        # reads SANDO_CACHE_DIR from engine_env): no timed deploy compiles anything.
        src = SourceConfig(repo=str(app.path))
        cache = os.path.join(env["SANDO_CACHE_DIR"], "builds")
        artifacts: dict[str, list[Path]] = {}
        t0 = time.monotonic()
        for v in versions:
            commit = app.commit(v)
            build.ensure_built(str(app.path), commit, src.build_command, src.bin_dir, src.error_pages_dir,
                               BIN_NAMES, cache)
            # deploy.sh copied straight from the build tree (the binaries keep their exec bit)
            tree = Path(cache) / commit / "src"
            artifacts[v] = [tree / src.bin_dir / b for b in BIN_NAMES] + [tree / src.error_pages_dir]
        say(f"   built {', '.join(versions)} of the stand-in app in {time.monotonic() - t0:.1f}s")
        built = {v: (Path(cache) / app.commit(v) / "artifacts.json").stat().st_mtime_ns for v in versions}

        t0 = time.monotonic()
        testnodes = TestNodes(7, work / "nodes")
        all_nodes = testnodes.nodes
        set_a, set_b, set_c = all_nodes[0:3], all_nodes[3:6], all_nodes[6:7]
        authorize(set_a)
        authorize(set_b)
        say(f"   started 7 test nodes in {time.monotonic() - t0:.1f}s: A={[n.host for n in set_a]} "
            f"B={[n.host for n in set_b]} C={[n.host for n in set_c]}")

        t0 = time.monotonic()
        d_a, d_b, d_c = in_parallel(*(lambda s=s: Deploy(work, env, s, app) for s in (set_a, set_b, set_c)))
        stacks += [d_a, d_b, d_c]
        in_parallel(*(lambda d=d: run_up(d) for d in stacks))  # v1 everywhere: bootstrap + warm-up
        for s in (set_a, set_b, set_c):
            check_serving(s, "v1", "warm-up")
        say(f"   v1 live on A, B, C (sando, in parallel) in {time.monotonic() - t0:.1f}s")
        baseline = Baseline(set_a, work, artifacts)

        labels = {
            "base": "deploy.sh-style, 3 nodes (new version)",
            "sando3": "sando up, 3 nodes (new version)",
            "sando1": "sando up, 1 node (new version)",
            "noop": "sando up, 3 nodes, same pin (no-op)",
            "rollback": "sando up, 3 nodes, rollback by pin",
        }
        say("\n== timed runs")
        for i, v in enumerate(NEW_VERSIONS):
            say(f"   -- round {i + 1}: {v}")

            def run_base(v=v):
                t.timed(labels["base"], lambda: baseline.deploy(v))
                check_serving(set_a, v, "deploy.sh-style")

            def run_sando3(v=v):
                d_b.set(version=v)
                changed = t.timed(labels["sando3"], lambda: run_up(d_b)[1])
                check_steps("sando 3 nodes", changed, set_b, "new", v)
                check_serving(set_b, v, "sando 3 nodes")

            for step in ((run_base, run_sando3) if i % 2 == 0 else (run_sando3, run_base)):
                step()

            d_c.set(version=v)
            changed = t.timed(labels["sando1"], lambda: run_up(d_c)[1])
            check_steps("sando 1 node", changed, set_c, "new", v)
            check_serving(set_c, v, "sando 1 node")

            changed = t.timed(labels["noop"], lambda: run_up(d_b)[1])
            check_steps("sando no-op", changed, set_b, "noop", v)
            check_serving(set_b, v, "sando no-op")

        say("   -- rollbacks by pin on B (retained releases: no upload)")
        for v in ROLLBACKS:
            d_b.set(version=v)
            changed = t.timed(labels["rollback"], lambda: run_up(d_b)[1])
            check_steps("sando rollback", changed, set_b, "rollback", v)
            check_serving(set_b, v, "sando rollback")

        rebuilt = [v for v in versions if (Path(cache) / app.commit(v) / "artifacts.json").stat().st_mtime_ns
                   != built[v]]
        if rebuilt:
            raise RuntimeError(f"the deploys rebuilt {rebuilt}: the timings would include a build")

        m = {k: t.median(lab) for k, lab in labels.items()}
        say("\n== results (median of 3 runs, seconds)")
        say(f"   {'operation':<44} {'median':>7}   runs")
        for k, lab in labels.items():
            say(f"   {lab:<44} {m[k]:7.2f}   " + " ".join(f"{x:.2f}" for x in t.runs[lab]))
        say("\n== ratios (same run, same machine)")
        say(f"   sando 3 nodes / deploy.sh-style 3 nodes: {m['sando3'] / m['base']:.2f}x")
        say(f"   sando no-op / sando new version (3 nodes): {m['noop'] / m['sando3']:.2f}x")
        say(f"   sando rollback by pin / sando new version (3 nodes): {m['rollback'] / m['sando3']:.2f}x")
        say(f"   sando 3 nodes / sando 1 node: {m['sando3'] / m['sando1']:.2f}x   "
            "(1.00x = nodes fully in parallel, 3.00x = one after another)")
        say(f"   deploy.sh-style 3 nodes / sando 1 node: {m['base'] / m['sando1']:.2f}x")
        return 0
    finally:
        # Ctrl-C during cleanup must not leave nodes behind: from here on SIGINT is ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("\n== cleanup: destroying stacks, stopping test nodes, removing " + str(work))
        end_engine_processes(marker)  # an interrupted `pulumi up` still holds its stack's lock:
        shutil.rmtree(work / "engine" / "state" / ".pulumi" / "locks", ignore_errors=True)  # ours alone
        if stacks:
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                in_parallel(*(lambda d=d: d.destroy() for d in stacks))
            end_engine_processes(marker)
            left: list[str] | str = "?"
            with contextlib.suppress(Exception):  # Deploy.destroy removes a stack only once it is empty
                left = [s.name for s in stacks[0].stack.workspace.list_stacks()]
            say(f"   destroyed {len(stacks)} stacks in {time.monotonic() - t0:.1f}s"
                + (f"; not destroyed: {left}" if left else ""))
        if testnodes is not None:
            testnodes.stop()
        elif (work / "nodes").exists():  # interrupted while the nodes were starting
            subprocess.run([str(REPO / "scripts" / "testnodes"), "stop", "--state-dir", str(work / "nodes")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        say(f"   total runtime {time.monotonic() - t_start:.0f}s")


def _interrupted(_sig, _frame):
    """Ctrl-C / SIGTERM: unwind into main's `finally`. The automation API's reader threads and
    event stream then complain about the pipes of the aborted `pulumi up`: that is expected."""
    warnings.filterwarnings("ignore", message="Error in event stream")
    default_hook = threading.excepthook
    threading.excepthook = lambda a: None if a.exc_type is ValueError else default_hook(a)
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
        signal.signal(signal.SIGINT, _interrupted)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted (everything it started has been cleaned up)", file=sys.stderr)
        sys.exit(130)
