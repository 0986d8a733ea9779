#!/usr/bin/env python3
"""make demo: the main job on the embedded default, end to end through the real engine.

Starts two local real-systemd test nodes, makes the stand-in app a git repo with two
versions, and drives two stacks of this project (local backend .pulumi-state/ unless
PULUMI_BACKEND_URL is set): `<prefix>testnot` on node1, `<prefix>prod` on node2 (restart
warning on, destructive migrations refused, as Pulumi.prod.yaml). It deploys v1 to
testnot, previews and deploys v2, promotes testnot's release to prod with
`sando promote`, rolls testnot back by pinning v1, and shows `sando status`. Each step
prints what changed and how long it took. The nodes keep running; it says how to stop.

    scripts/demo.py [--state-dir DIR] [--stack-prefix PREFIX] [--work DIR]
    (defaults: .testnodes/, "demo-", .cache/demo/; a run first removes what a previous run
    with the same settings left)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pulumi import automation as auto  # noqa: E402

from tests.support import TOOLS, AppRepo, TestNodes  # noqa: E402



def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def engine_env(work: Path) -> dict[str, str]:
    (REPO / ".pulumi-state").mkdir(exist_ok=True)
    return {
        "PATH": f"{TOOLS / 'bin'}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
        "PULUMI_HOME": str(TOOLS / "pulumi-home"),
        "PULUMI_BACKEND_URL": os.environ.get("PULUMI_BACKEND_URL", f"file://{REPO / '.pulumi-state'}"),
        "PULUMI_CONFIG_PASSPHRASE": os.environ.get("PULUMI_CONFIG_PASSPHRASE", "sando-local"),
        "SANDO_DEMO": "1",  # the demo's throwaway stacks may use the public passphrase (passphrase.py)
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PARALLEL": os.environ.get("PULUMI_PARALLEL", "64"),
        "SANDO_CACHE_DIR": str(work / "cache"),
    }


def timed(title: str, fn):
    say(title)
    t0 = time.monotonic()
    result = fn()
    print(f"   took {time.monotonic() - t0:.1f}s")
    return result


def steps_of(events: list) -> list[tuple[str, str]]:
    return [(md.op.value, md.urn.split("::")[-1]) for md in events
            if md.op.value not in ("same", "read", "refresh") and "::pulumi:providers:" not in md.urn]


def engine_step(fn):
    """Run an up/preview, print each resource it changes."""
    events: list = []

    def on_event(ev):
        if ev.resource_pre_event and ev.resource_pre_event.metadata:
            events.append(ev.resource_pre_event.metadata)

    result = fn(on_event)
    for op, name in steps_of(events) or [("-", "nothing to change")]:
        print(f"   {op:8} {name}")
    return result


def make_stack(name: str, env: dict, node, app: AppRepo, **extra) -> auto.Stack:
    opts = auto.LocalWorkspaceOptions(work_dir=str(REPO), pulumi_home=env["PULUMI_HOME"], env_vars=env,
                                      pulumi_command=auto.PulumiCommand(root=str(TOOLS)))
    try:  # a previous demo's stack points at nodes that no longer exist
        auto.select_stack(name, work_dir=str(REPO), opts=opts).workspace.remove_stack(name, force=True)
    except auto.errors.CommandError:
        pass
    (REPO / f"Pulumi.{name}.yaml").unlink(missing_ok=True)
    stack = auto.create_stack(name, work_dir=str(REPO), opts=opts)
    config = {"nodes": [node.config()], "version": "v1", "source": {"repo": str(app.path)},
              "binNames": ["makenotwork", "mnw-admin"],
              "healthCheck": {"timeoutSeconds": 15, "intervalSeconds": 0.2, "expectVersion": True},
              "bootstrap": {"ref": "main"}, **extra}
    stack.set_all_config({f"sando:{k}": auto.ConfigValue(v if isinstance(v, str) else json.dumps(v))
                          for k, v in config.items()})
    secret("sshPrivateKey", Path(node.privateKeyPath).read_text(), name, env)
    return stack


def secret(key: str, value: str, stack: str, env: dict) -> None:
    """A secret goes to `pulumi config set --secret` on stdin, never argv."""
    subprocess.run([str(TOOLS / "bin" / "pulumi"), "config", "set", "--secret", f"sando:{key}", "--stack", stack,
                    "--non-interactive"], cwd=REPO, env={**os.environ, **env}, input=value, text=True, check=True,
                   capture_output=True)


def sando(env: dict, *args: str) -> None:
    res = subprocess.run([str(REPO / ".venv" / "bin" / "sando"), *args], cwd=REPO, env={**os.environ, **env},
                         capture_output=True, text=True)
    print("   " + (res.stdout + res.stderr).strip().replace("\n", "\n   "))
    if res.returncode != 0:
        raise SystemExit(f"demo: sando {' '.join(args)} exited {res.returncode}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", default=os.environ.get("SANDO_TESTNODES_DIR", str(REPO / ".testnodes")))
    ap.add_argument("--stack-prefix", default="demo-")
    ap.add_argument("--work", default=str(REPO / ".cache" / "demo"), help="the stand-in's repo and build cache")
    args = ap.parse_args()
    work = Path(args.work)
    env = engine_env(work)
    token = os.urandom(16).hex()
    testnot_name, prod_name = f"{args.stack_prefix}testnot", f"{args.stack_prefix}prod"

    nodes = timed("starting two local test nodes (scripts/testnodes start 2): real systemd, sshd, caddy",
                  lambda: TestNodes(2, Path(args.state_dir), token=token))
    nodes.share_key()
    testnot_node, prod_node = nodes.nodes
    for n, stack in ((testnot_node, testnot_name), (prod_node, prod_name)):
        print(f"   {n.name} ({stack}): root@{n.host}, files at {n.fsPath}")

    say("making the stand-in app a git repo with versions v1 and v2")
    shutil.rmtree(work / "makenotwork", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    app = AppRepo(work / "makenotwork")
    app.version("v2")
    print(f"   {app.path}: v1={app.commit('v1')[:12]} v2={app.commit('v2')[:12]}")

    testnot = make_stack(testnot_name, env, testnot_node, app)
    prod = make_stack(prod_name, env, prod_node, app, restartWarningSeconds=5,
                      migrations={"refuseDestructive": True})
    secret("cliServiceToken", token, prod_name, env)

    def up(stack):
        return lambda: engine_step(lambda ev: stack.up(on_event=ev, color="never"))

    def preview(stack):
        return lambda: engine_step(lambda ev: stack.preview(on_event=ev, color="never"))

    timed(f"pulumi up -s {testnot_name} (v1: bootstrap the node, build, upload, switch, restart)", up(testnot))
    print(f"   served: {testnot_node.served()}")
    testnot.set_config("sando:version", auto.ConfigValue("v2"))
    timed(f"pulumi preview -s {testnot_name} (sando:version=v2)", preview(testnot))
    timed(f"pulumi up -s {testnot_name} (v2: only the delta against v1 is sent)", up(testnot))
    print(f"   served: {testnot_node.served()}")
    sent = testnot.outputs()["nodes"].value[testnot_node.name]["lastTransfer"]
    print(f"   sent {sent['bytesSent']} bytes ({sent['patched']} binaries as deltas, {sent['full']} files whole)")

    timed(f"sando promote --from {testnot_name} --to {prod_name} --yes (prod: first deploy, restart warning on)",
          lambda: sando(env, "promote", "--from", testnot_name, "--to", prod_name, "--yes"))
    print(f"   prod serves: {prod_node.served()}")

    testnot.set_config("sando:version", auto.ConfigValue("v1"))
    timed(f"rollback: pulumi config set sando:version v1 -s {testnot_name} && pulumi preview", preview(testnot))
    timed(f"pulumi up -s {testnot_name} (v1 again: a retained release, nothing sent)", up(testnot))
    print(f"   served: {testnot_node.served()}")
    out = testnot.outputs()["nodes"].value[testnot_node.name]
    print(f"   live {out['liveVersion']}, previous {out['previousVersion']}, "
          f"releases {[r['version'] for r in out['releases']]}, sent {out['lastTransfer']['bytesSent']} bytes")

    timed(f"sando status {testnot_name} {prod_name}", lambda: sando(env, "status", testnot_name, prod_name))

    say("done")
    pp = "" if "PULUMI_CONFIG_PASSPHRASE" in os.environ else "export PULUMI_CONFIG_PASSPHRASE=sando-local && "
    demo = "" if "PULUMI_CONFIG_PASSPHRASE" in os.environ else "SANDO_DEMO=1 "  # sando refuses the public one else
    print(f"""   The nodes keep running. Look around:
     . scripts/env.sh && {pp}pulumi stack history -s {prod_name}
     {demo}sando logs -s {testnot_name} -n 20        {demo}sando ssh -s {prod_name} {prod_node.name}
     scripts/testnodes exec {testnot_node.name} --state-dir {args.state_dir} -- journalctl -u makenotwork
   Stop and clean up:
     scripts/testnodes stop --state-dir {args.state_dir}
     . scripts/env.sh && {pp}pulumi stack rm -y --force {testnot_name} && pulumi stack rm -y --force {prod_name}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
