#!/usr/bin/env python3
"""make bench: deploy timings measured side by side in one run; ratios are printed and written
to bench-results.json, never asserted.

Real-systemd test nodes (scripts/testnodes) and the real engine (the pulumi built by `make
setup`), all in a temp dir; everything started here is cleaned up in `finally`, also on
Ctrl-C. HEADER (printed too) says what is timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pulumi import automation as auto  # noqa: E402

from sando_components import build, keeper  # noqa: E402
from sando_components.config import SourceConfig  # noqa: E402
from tests import realistic  # noqa: E402
from tests.baselines import minimal_deploy  # noqa: E402
from tests.support import TOOLS, AppRepo, Deploy, Node, TestNodes, engine_env, run_up, tmpdir  # noqa: E402
from tests.toxiproxy import Toxiproxy  # noqa: E402

import bench_switch  # noqa: E402  (scripts/, beside this file)

RUNS = int(os.environ.get("SANDO_BENCH_RUNS", "5"))
BIG = int(os.environ.get("SANDO_BENCH_FLEET", "64"))  # the large fleet (a smaller one for a quick check of the bench)
BINS = ["makenotwork", "mnw-admin"]
GOALS = {"noop": 1.3, "bumpOverhead": 1.5, "bumpWithBuild": 1.3, "wanBump": 1.5, "wanRollbackVsBump": 0.5,
         "fanout16": 2.0, "bytesVsRsync": 1.2, "noopCli": 1.3, "bumpOverheadCli": 1.5, "wanBumpCli": 1.5,
         "fanout16Cli": 2.0}
CONTEXT = {"fanout16Floor": "the minimal script's own 16/1 ratio here: the 16 nodes share this machine's cores",
           f"fanout{BIG}": f"no goal of its own: compare with fanout{BIG}Floor",
           f"fanout{BIG}Floor": f"the minimal script's own {BIG}/1 ratio here",
           f"bump{BIG}VsMinimal": f"sando bump of {BIG} nodes / the minimal script on {BIG} nodes at once",
           f"noop{BIG}Cli": f"sando no-op of {BIG} nodes as `pulumi up` / the empty program's `pulumi up`",
           f"parallelDiffNoop{BIG}": f"no-op of {BIG} nodes with PULUMI_PARALLEL_DIFF=true / without (same stack, alternating)",
           f"parallelDiffBump{BIG}": f"bump of {BIG} nodes with PULUMI_PARALLEL_DIFF=true / without (alternating)",
           "warmNoopCli": "no-op `pulumi up` with the program and the provider process forked warm / started "
                          "cold (SANDO_KEEP_WARM=0)",
           "keeperNoopCli": "no-op `pulumi up` with SSH connections kept between runs / each run its own "
                            "(SANDO_SSH_PERSIST=0)",
           "keeperWanNoop": "no-op over the WAN profile with SSH connections kept / each run its own",
           "noopCli": "noop measured with `pulumi up` typed as an operator does, without the Automation API's "
                      "extra CLI runs (stack output, history) that both sides of `noop` pay"}
HEADER = f"""\
   Medians of {RUNS} runs each; the two sides of every ratio run alternately in one session.
   noop          sando `pulumi up` with nothing to do (1 node) / `pulumi up` of an empty program, both
                 through the Automation API (noopCli: the same, both as the `pulumi up` command)
   bumpOverhead  (sando bump, 1 node - empty-program up) / minimal one-session ssh script
                 (tar | ssh: unpack, switch, restart, wait healthy); stand-in app, built beforehand
   bumpWithBuild sando bump of the realistic server (tokio, axum, sqlx) incl. its build /
                 (incremental `cargo build` of the same change + minimal script)
   wanBump       sando bump over the WAN profile (toxiproxy: 20 ms each way, 2.5 MB/s) / minimal
                 script over the same profile
   wanRollbackVsBump  rollback by pin over WAN / bump over WAN
   fanout16      sando bump of one stack of 16 nodes / of one node (fanout16Floor: the same ratio
                 for the minimal script run on 16 nodes at once: the nodes share this machine)
   fanout64      sando bump of one stack of 64 nodes / of one node (fanout64Floor: the minimal script
                 on 64 nodes at once / on one); bump64VsMinimal, noop64Cli; parallelDiff*64: the same
                 64-node stack with and without PULUMI_PARALLEL_DIFF=true, alternating
   bytesVsRsync  bytes a sando bump of the realistic server sends / bytes `rsync -az
                 --copy-dest=<live release>` sends for the same release (its --stats)
   *Cli          the same as the command an operator types, `pulumi up` (no Automation API):
                 noopCli, bumpOverheadCli, wanBumpCli, fanout16Cli (the Automation API's own fixed
                 cost, ~0.8 s a run, is on both sides of fanout16 and lowers it: fanout16Cli is the
                 operator's ratio)
   keeper*       with SSH connections kept between runs (sando's keeper, the default) / each run
                 its own (SANDO_SSH_PERSIST=0): keeperNoopCli (1 node, `pulumi up`), keeperWanNoop
   warmNoopCli   the program and the provider process forked warm (the default) / started cold
                 (SANDO_KEEP_WARM=0)
   switch        sando:switch.strategy restart vs blueGreen: failed requests and the longest gap a
                 poller through Caddy (every 10 ms) sees across N bumps, a 3 s start, a crash at start"""


def say(msg: str = "") -> None:
    print(msg, flush=True)


class Timings:
    def __init__(self):
        self.runs: dict[str, list[float]] = {}

    def add(self, label: str, value: float, unit: str = "s") -> None:
        self.runs.setdefault(label, []).append(value)
        say(f"   {label:<46} {value:10.2f} {unit}")

    def timed(self, label: str, fn):
        t0 = time.monotonic()
        result = fn()
        self.add(label, time.monotonic() - t0)
        return result

    def median(self, label: str) -> float:
        return statistics.median(self.runs[label])


def empty_program(work: Path, env: dict) -> auto.Stack:
    project = work / "empty"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(f"name: empty\nruntime:\n  name: python\n  options:\n"
                                         f"    virtualenv: {REPO / '.venv'}\n")
    (project / "__main__.py").write_text("import pulumi\n")
    opts = auto.LocalWorkspaceOptions(work_dir=str(project), pulumi_home=env["PULUMI_HOME"], env_vars=env,
                                      pulumi_command=auto.PulumiCommand(root=str(TOOLS)))
    return auto.create_stack("empty", work_dir=str(project), opts=opts)


def cli_up(work_dir: str, stack: str, env: dict) -> float:
    """`pulumi up` as an operator types it (no Automation API around it), seconds."""
    t0 = time.monotonic()
    subprocess.run([str(TOOLS / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack", stack,
                    "--non-interactive"], cwd=work_dir, env={**os.environ, **env}, check=True, capture_output=True)
    return time.monotonic() - t0


def release_files(artifacts: Path) -> dict[str, Path]:
    return {**{b: artifacts / b for b in BINS}, "error-pages": artifacts / "error-pages"}


class Minimal:
    """The floor an expert would hand-write: one ssh session per deploy (tests/baselines.py)."""

    def __init__(self, node: Node, work: Path, host: str | None = None, port: int | None = None):
        self.node, self.host, self.port = node, host or node.host, port or node.port
        self.known = work / f"known-{node.host}-{self.port}"
        alias = f"[{node.host}]:{node.port}" if host else None
        name = alias or (node.host if self.port == 22 else f"[{self.host}]:{self.port}")
        self.known.write_text(f"{name} {node.hostKey}\n")
        self.alias = alias

    def deploy(self, version: str, artifacts: Path) -> float:
        return minimal_deploy(self.host, self.port, "root", self.node.privateKeyPath, self.known, "/opt/makenotwork",
                              version, release_files(artifacts), "makenotwork", "http://127.0.0.1:3000/",
                              host_key_alias=self.alias)


def bootstrap_minimal(nodes: Node | list[Node], work: Path, env: dict, app, version: str) -> None:
    """The minimal script never installed the unit (neither did deploy.sh): a throwaway sando stack does."""
    d = Deploy(work, env, nodes if isinstance(nodes, list) else [nodes], app)
    d.set(version=version)
    run_up(d)
    d.destroy()


@dataclass
class FleetNode(Node):
    """A node of a Fleet: its name in the stack is unique across the fleet's sets (each set has
    its own node1..); `exec` and the node's own files still go by its name in its set."""

    alias: str = ""

    def config(self) -> dict:
        return {**super().config(), "name": self.alias}


class Fleet:
    """Nodes of several testnodes sets as one fleet: node1's client key let into every node."""

    def __init__(self, nodes: list[Node], sets: list[TestNodes] | None = None):
        self.sets = list(sets or [])
        self.nodes = [FleetNode(**asdict(n), alias=f"node{i:02d}") for i, n in enumerate(nodes, 1)]
        nodes = self.nodes
        pub = Path(nodes[0].privateKeyPath + ".pub").read_text()
        for n in nodes[1:]:
            with open(n.path("/root/.ssh/authorized_keys"), "a") as fh:
                fh.write(pub)


def fleet_of(count: int, base: Path, sets: list[TestNodes], per_set: int = 16) -> Fleet:
    """`count` nodes started as sets of `per_set`, one after another: 64 systemd instances booting
    at once on 2 shared cores miss testnodes' boot timeout."""
    nodes: list[Node] = []
    mine: list[TestNodes] = []
    for k in range(0, count, per_set):
        s = TestNodes(min(per_set, count - k), base.with_name(f"{base.name}-{k // per_set}"))
        sets.append(s)
        mine.append(s)
        nodes += s.nodes
    return Fleet(nodes, mine)


def rrepo_app(path: Path) -> AppRepo:
    """The realistic repo seen as an AppRepo (only its path is used by Deploy)."""
    app = AppRepo.__new__(AppRepo)
    app.path = path
    return app


def rsync_bytes(node: Node, artifacts: Path, live: str) -> int:
    """Bytes `rsync -az --copy-dest=<live release>` sends for the release (its own --stats)."""
    key, known = node.privateKeyPath, Path(node.privateKeyPath).with_name("rsync-known")
    known.write_text(f"{node.host} {node.hostKey}\n")
    ssh = f"ssh -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -o BatchMode=yes"
    dest = f"/opt/makenotwork/rsync-probe-{os.getpid()}-{time.monotonic_ns()}/"
    res = subprocess.run(["rsync", "-az", "--stats", f"--copy-dest=/opt/makenotwork/releases/{live}/", "-e", ssh,
                          f"{artifacts}/", f"root@{node.host}:{dest}"], capture_output=True, text=True, check=True)
    node.exec("rm", "-rf", dest)
    return int(re.search(r"Total bytes sent: ([\d,]+)", res.stdout).group(1).replace(",", ""))


def main() -> int:
    t_start = time.monotonic()
    say(f"== sando bench: medians of {RUNS}, ratios side by side (no thresholds asserted)")
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    say(f"   {machine}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    say(HEADER)
    work = tmpdir("sando-bench-")
    env = engine_env(work / "engine")
    sets: list[TestNodes] = []
    stacks: list[Deploy] = []
    toxi: Toxiproxy | None = None
    t = Timings()
    sent: list[int] = []
    rsynced: list[int] = []
    try:
        say("\n== setup (untimed)")
        app = AppRepo(work / "standin")
        versions = [f"v{i}" for i in range(2, 2 + RUNS)]
        versions64 = [f"v{i}" for i in range(2 + RUNS, 2 + 3 * RUNS)]  # 64 nodes: a plain and a parallel-diff bump each
        versions_cli = [f"v{i}" for i in range(2 + 3 * RUNS, 2 + 4 * RUNS)]  # the bumps typed as `pulumi up`
        for v in versions + versions64 + versions_cli:
            app.version(v)
        src = SourceConfig(repo=str(app.path))
        os.environ["SANDO_CACHE_DIR"] = env["SANDO_CACHE_DIR"]
        art = {}
        for v in ["v1", *versions, *versions64, *versions_cli]:  # the stand-in is built once per version, before anything is timed
            art[v] = Path(build.ensure_built(str(app.path), app.commit(v), src.build_command, src.bin_dir,
                                             src.error_pages_dir, BINS).root)
        t0 = time.monotonic()
        n1 = TestNodes(6, work / "nodes-a")
        n16 = TestNodes(16, work / "nodes-16")
        m16 = TestNodes(16, work / "nodes-16-minimal")
        sets += [n1, n16, m16]
        for s in (n16, m16):
            s.share_key()
        a, a_min, wan, wan_min, r, r_min = n1.nodes
        say(f"   started {sum(len(s.nodes) for s in sets)} nodes in {time.monotonic() - t0:.1f}s")
        toxi = Toxiproxy().start()
        p_sando = toxi.proxy("wan-sando", f"{wan.host}:22")
        p_min = toxi.proxy("wan-min", f"{wan_min.host}:22")
        for p in (p_sando, p_min):
            p.wan()

        d_a = Deploy(work, env, [a], app)
        d_wan = Deploy(work, env, [wan], app)
        d_wan.set(nodes=[wan.config() | {"host": p_sando.host, "port": p_sando.port}])
        d_16 = Deploy(work, env, n16.nodes, app)
        stacks += [d_a, d_wan, d_16]
        for d in stacks:
            run_up(d)  # v1 everywhere: bootstrap and warm-up
        for n in (a_min, wan_min):
            bootstrap_minimal(n, work, env, app, "v1")
        bootstrap_minimal(m16.nodes, work, env, app, "v1")
        m_16 = [Minimal(n, work) for n in m16.nodes]
        empty = empty_program(work, env)
        empty.up(color="never")
        m_a, m_wan = Minimal(a_min, work), Minimal(wan_min, work, p_min.host, p_min.port)

        say("\n== timed: no-op and bump (1 node, loopback), 16 nodes, WAN")
        for i, v in enumerate(versions):
            t.timed("empty program: pulumi up", lambda: empty.up(color="never"))
            t.timed("sando no-op up (1 node)", lambda: run_up(d_a))
            t.add("empty program: pulumi up (CLI)", cli_up(empty.workspace.work_dir, "empty", env))
            t.add("sando no-op: pulumi up (CLI, 1 node)", cli_up(str(d_a.project), d_a.name, env))
            t.add("sando no-op: pulumi up (CLI, 1 node, no keeper)",
                  cli_up(str(d_a.project), d_a.name, {**env, keeper.PERSIST_ENV: "0"}))
            d_a.set(version=v)
            t.timed("sando bump (1 node)", lambda: run_up(d_a))
            t.add("minimal script bump (1 node)", m_a.deploy(v, art[v]))
            d_16.set(version=v)
            t.timed("sando bump (16 nodes)", lambda: run_up(d_16))
            with ThreadPoolExecutor(16) as pool:
                t.timed("minimal script bump (16 nodes in parallel)",
                        lambda: list(pool.map(lambda m: m.deploy(v, art[v]), m_16)))
            d_wan.set(version=v)
            t.timed("sando bump over WAN", lambda: run_up(d_wan))
            t.add("minimal script bump over WAN", m_wan.deploy(v, art[v]))
            back = versions[i - 1] if i else "v1"
            d_wan.set(version=back)
            t.timed("sando rollback by pin over WAN", lambda: run_up(d_wan))
            d_wan.set(version=v)
            run_up(d_wan)  # forward again, untimed
            t.timed("sando no-op over WAN", lambda: run_up(d_wan))
            d_wan.stack.workspace.env_vars[keeper.PERSIST_ENV] = "0"
            t.timed("sando no-op over WAN (no keeper)", lambda: run_up(d_wan))
            del d_wan.stack.workspace.env_vars[keeper.PERSIST_ENV]
            for n in (a, wan, *n16.nodes):
                assert n.served()["version"] == v, (n.name, n.served())
            t.add("sando no-op: pulumi up (CLI, 1 node, cold start)",
                  cli_up(str(d_a.project), d_a.name, {**env, "SANDO_KEEP_WARM": "0"}))
            vc = versions_cli[i]  # the same bumps, typed as `pulumi up`
            t.add("empty program: pulumi up (CLI)", cli_up(empty.workspace.work_dir, "empty", env))
            d_a.set(version=vc)
            t.add("sando bump: pulumi up (CLI, 1 node)", cli_up(str(d_a.project), d_a.name, env))
            t.add("minimal script bump (1 node)", m_a.deploy(vc, art[vc]))
            d_wan.set(version=vc)
            t.add("sando bump over WAN: pulumi up (CLI)", cli_up(str(d_wan.project), d_wan.name, env))
            t.add("minimal script bump over WAN", m_wan.deploy(vc, art[vc]))
            d_16.set(version=vc)
            t.add("sando bump: pulumi up (CLI, 16 nodes)", cli_up(str(d_16.project), d_16.name, env))
            for n in (a, wan, *n16.nodes):
                assert n.served()["version"] == vc, (n.name, n.served())

        # the large fleet boots only now, the 16-node sets stopped: 166 systemd instances booting
        # beside running ones on 2 shared cores missed testnodes' boot timeout
        for s in (n16, m16):
            s.stop()
            sets.remove(s)
        stacks.remove(d_16)
        t0 = time.monotonic()
        n64, m64 = (fleet_of(BIG, work / name, sets) for name in ("nodes-64", "nodes-64-minimal"))
        say(f"\n   started {2 * BIG} nodes in {time.monotonic() - t0:.1f}s")
        d_64 = Deploy(work, env, n64.nodes, app)
        stacks.append(d_64)
        run_up(d_64)  # v1: bootstrap and warm-up, untimed
        bootstrap_minimal(m64.nodes, work, env, app, "v1")
        m_64 = [Minimal(n, work) for n in m64.nodes]
        say(f"\n== timed: {BIG} nodes (no-op, bump; with and without PULUMI_PARALLEL_DIFF, alternating)")
        ws64 = d_64.stack.workspace
        for i in range(RUNS):
            for pd in (False, True):
                ws64.env_vars.pop("PULUMI_PARALLEL_DIFF", None)
                if pd:
                    ws64.env_vars["PULUMI_PARALLEL_DIFF"] = "true"
                tag = ", PULUMI_PARALLEL_DIFF" if pd else ""
                v = versions64[2 * i + pd]
                t.timed(f"sando no-op up ({BIG} nodes{tag})", lambda: run_up(d_64))
                d_64.set(version=v)
                t.timed(f"sando bump ({BIG} nodes{tag})", lambda: run_up(d_64))
            ws64.env_vars.pop("PULUMI_PARALLEL_DIFF", None)
            t.add(f"sando no-op: pulumi up (CLI, {BIG} nodes)", cli_up(str(d_64.project), d_64.name, env))
            t.add("empty program: pulumi up (CLI)", cli_up(empty.workspace.work_dir, "empty", env))
            v = versions64[2 * i + 1]
            with ThreadPoolExecutor(BIG) as pool:
                t.timed(f"minimal script bump ({BIG} nodes in parallel)",
                        lambda: list(pool.map(lambda m: m.deploy(v, art[v]), m_64)))
            for n in n64.nodes:
                assert n.served()["version"] == v, (n.name, n.served())

        # the large fleet stops before the next parts: the switch part's two nodes, booting beside 128
        # running ones, missed testnodes' boot timeout in three bench runs in a row
        for s in (*n64.sets, *m64.sets):
            s.stop()
            sets.remove(s)
        stacks.remove(d_64)

        say("\n== realistic server (tokio, axum, sqlx): cold build untimed, then bumps incl. the build")
        rrepo = realistic.make_realistic_repo(work / "realistic")
        d_r = Deploy(work, env, [r], app)
        d_r.set(source={"repo": str(rrepo)})
        stacks.append(d_r)
        t0 = time.monotonic()
        run_up(d_r)  # cold build inside sando
        say(f"   realistic v1 (cold build) deployed in {time.monotonic() - t0:.0f}s")
        bootstrap_minimal(r_min, work, env, rrepo_app(rrepo), "v1")
        mine = work / "realistic-own"  # the incremental-build baseline: its own checkout, warm target dir
        realistic.git(rrepo, "clone", "-q", str(rrepo), str(mine))
        t0 = time.monotonic()
        realistic.build(mine)
        say(f"   baseline checkout cold build {time.monotonic() - t0:.0f}s")
        m_r = Minimal(r_min, work)
        live = "v1"
        for i in range(RUNS):
            v = f"r{i + 2}"
            realistic.bump(rrepo, v)
            d_r.set(version=v)
            t.timed("sando bump incl. build (realistic)", lambda: run_up(d_r))
            transfer = d_r.node_out(r)["lastTransfer"]
            sent.append(transfer["bytesSent"])
            t.add("  bytes sent by sando", transfer["bytesSent"], "B")
            realistic.git(mine, "pull", "-q", "--tags", "origin", "main")
            t0 = time.monotonic()
            bins = realistic.build(mine)
            built_in = time.monotonic() - t0
            staged = work / f"min-{v}"
            shutil.copytree(Path(mine) / "server" / "deploy" / "error-pages", staged / "error-pages")
            for b in bins:
                shutil.copy2(b, staged / b.name)
            deploy_in = m_r.deploy(v, staged)
            t.add("incremental cargo build + minimal script", built_in + deploy_in)
            rsynced.append(rsync_bytes(r_min, staged, live))
            t.add("  bytes rsync -az --copy-dest sends", rsynced[-1], "B")
            live = v
            assert r.served()["label"] == v and r_min.served()["label"] == v

        say("\n== switch strategies (sando:switch, issue 23): a poller through Caddy every 10 ms")
        switch = bench_switch.compare(work, env, RUNS, say)

        m = {k: t.median(k) for k in t.runs}
        ratios = {
            "noop": m["sando no-op up (1 node)"] / m["empty program: pulumi up"],
            "bumpOverhead": (m["sando bump (1 node)"] - m["empty program: pulumi up"])
            / m["minimal script bump (1 node)"],
            "bumpWithBuild": m["sando bump incl. build (realistic)"] / m["incremental cargo build + minimal script"],
            "wanBump": m["sando bump over WAN"] / m["minimal script bump over WAN"],
            "wanRollbackVsBump": m["sando rollback by pin over WAN"] / m["sando bump over WAN"],
            "fanout16": m["sando bump (16 nodes)"] / m["sando bump (1 node)"],
            "fanout16Floor": m["minimal script bump (16 nodes in parallel)"] / m["minimal script bump (1 node)"],
            f"fanout{BIG}": m[f"sando bump ({BIG} nodes)"] / m["sando bump (1 node)"],
            f"fanout{BIG}Floor": m[f"minimal script bump ({BIG} nodes in parallel)"] / m["minimal script bump (1 node)"],
            f"bump{BIG}VsMinimal": m[f"sando bump ({BIG} nodes)"] / m[f"minimal script bump ({BIG} nodes in parallel)"],
            f"noop{BIG}Cli": m[f"sando no-op: pulumi up (CLI, {BIG} nodes)"] / m["empty program: pulumi up (CLI)"],
            f"parallelDiffNoop{BIG}": m[f"sando no-op up ({BIG} nodes, PULUMI_PARALLEL_DIFF)"] / m[f"sando no-op up ({BIG} nodes)"],
            f"parallelDiffBump{BIG}": m[f"sando bump ({BIG} nodes, PULUMI_PARALLEL_DIFF)"] / m[f"sando bump ({BIG} nodes)"],
            "bytesVsRsync": statistics.median(sent) / statistics.median(rsynced),
            "noopCli": m["sando no-op: pulumi up (CLI, 1 node)"] / m["empty program: pulumi up (CLI)"],
            "bumpOverheadCli": (m["sando bump: pulumi up (CLI, 1 node)"] - m["empty program: pulumi up (CLI)"])
            / m["minimal script bump (1 node)"],
            "wanBumpCli": m["sando bump over WAN: pulumi up (CLI)"] / m["minimal script bump over WAN"],
            "fanout16Cli": m["sando bump: pulumi up (CLI, 16 nodes)"] / m["sando bump: pulumi up (CLI, 1 node)"],
            "warmNoopCli": m["sando no-op: pulumi up (CLI, 1 node)"] / m["sando no-op: pulumi up (CLI, 1 node, cold start)"],
            # SSH connections kept between runs (keeper.py) against each run its own (SANDO_SSH_PERSIST=0)
            "keeperNoopCli": m["sando no-op: pulumi up (CLI, 1 node)"] / m["sando no-op: pulumi up (CLI, 1 node, no keeper)"],
            "keeperWanNoop": m["sando no-op over WAN"] / m["sando no-op over WAN (no keeper)"],
        }
        say(f"\n== results (median of {RUNS})")
        for k in t.runs:
            say(f"   {k:<46} {m[k]:12.2f}   runs: " + " ".join(f"{x:.2f}" for x in t.runs[k]))
        say("\n== ratios (same run, same machine)            measured   goal")
        for k, r in ratios.items():
            if k in GOALS:
                say(f"   {k:<44} {r:8.2f}   <= {GOALS[k]}   {'met' if r <= GOALS[k] else 'NOT met'}")
            else:
                say(f"   {k:<44} {r:8.2f}   ({CONTEXT.get(k, 'no goal of its own')})")
        results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
                   "runs": RUNS, "ratios": ratios, "goals": GOALS, "medians": m, "samples": t.runs,
                   "switchStrategies": switch}
        (REPO / "bench-results.json").write_text(json.dumps(results, indent=1) + "\n")
        say(f"\n   wrote {REPO / 'bench-results.json'}")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C during cleanup must not leave nodes behind
        say("\n== cleanup")
        for d in stacks:
            with contextlib.suppress(Exception):
                d.destroy()
        if toxi is not None:
            toxi.stop()
        keeper.stop_all()  # the connections the bench's runs kept: its nodes are going
        left = []
        for s in sets:
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others; keep the state dir to stop it by hand
                left.append(f"{s.state_dir} ({exc})")
        if left:  # removing a live set's state dir would leave its nodes running with no way to stop them
            say("   NOT removed: nodes may still run; stop each with `scripts/testnodes stop --state-dir DIR`: "
                + "; ".join(left))
        else:
            shutil.rmtree(work, ignore_errors=True)
        say(f"   total runtime {time.monotonic() - t_start:.0f}s")


def _interrupted(_sig, _frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted (everything it started has been cleaned up)", file=sys.stderr)
        sys.exit(130)
