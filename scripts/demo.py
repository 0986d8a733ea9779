#!/usr/bin/env python3
"""make demo: the main job on the embedded default, end to end through the real engine.

Starts a local test node, makes the stand-in app a git repo with two versions, and
drives the project's own `demo` stack (local backend .pulumi-state/): deploy v1, show
the served version, preview + deploy v2, roll back by pinning v1. Prints what each
step changed and how long it took; leaves the node running and says how to stop it.
"""

from __future__ import annotations

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

STACK = "demo"
WORK = REPO / ".cache" / "demo"


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def env() -> dict[str, str]:
    (REPO / ".pulumi-state").mkdir(exist_ok=True)
    return {
        "PATH": f"{TOOLS / 'bin'}:{os.environ['PATH']}",
        "PULUMI_HOME": str(TOOLS / "pulumi-home"),
        "PULUMI_BACKEND_URL": os.environ.get("PULUMI_BACKEND_URL", f"file://{REPO / '.pulumi-state'}"),
        "PULUMI_CONFIG_PASSPHRASE": os.environ.get("PULUMI_CONFIG_PASSPHRASE", "sando-local"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "SANDO_CACHE_DIR": str(WORK / "cache"),
    }


def pulumi(e: dict, *args: str, input: str | None = None) -> None:
    subprocess.run([str(TOOLS / "bin" / "pulumi"), *args, "--stack", STACK, "--non-interactive"], cwd=REPO,
                   env={**os.environ, **e}, input=input, text=True, check=True, capture_output=True)


def step(title: str, fn):
    say(title)
    steps: list[tuple[str, str]] = []

    def on_event(ev):
        md = ev.resource_pre_event.metadata if ev.resource_pre_event else None
        if md and md.op.value not in ("same", "read", "refresh") and "::pulumi:providers:" not in md.urn:
            steps.append((md.op.value, md.urn.split("::")[-1]))

    t0 = time.monotonic()
    result = fn(on_event)
    took = time.monotonic() - t0
    for op, name in steps or [("-", "nothing to change")]:
        print(f"   {op:8} {name}")
    print(f"   took {took:.1f}s")
    return result


def main() -> int:
    e = env()
    state = REPO / ".testnodes"
    say("starting a local test node (scripts/testnodes start 1)")
    nodes = TestNodes(1, state, token=os.urandom(16).hex()).nodes
    node = nodes[0]
    print(f"   {node.name}: {node.user}@{node.host}:{node.port}, files under {node.root}")

    say("making the stand-in app a git repo with versions v1 and v2")
    if WORK.exists():
        shutil.rmtree(WORK / "makenotwork", ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    app = AppRepo(WORK / "makenotwork")
    app.version("v2")
    print(f"   {app.path}: v1={app.commit('v1')[:12]} v2={app.commit('v2')[:12]}")

    opts = auto.LocalWorkspaceOptions(work_dir=str(REPO), pulumi_home=e["PULUMI_HOME"], env_vars=e,
                                      pulumi_command=auto.PulumiCommand(root=str(TOOLS)))
    try:  # a previous demo's stack points at nodes that no longer exist
        auto.select_stack(STACK, work_dir=str(REPO), opts=opts).workspace.remove_stack(STACK, force=True)
    except auto.errors.CommandError:
        pass
    (REPO / f"Pulumi.{STACK}.yaml").unlink(missing_ok=True)
    stack = auto.create_stack(STACK, work_dir=str(REPO), opts=opts)
    stack.set_all_config({
        "sando:nodes": auto.ConfigValue(json.dumps([node.config()])),
        "sando:version": auto.ConfigValue("v1"),
        "sando:source": auto.ConfigValue(json.dumps({"repo": str(app.path)})),
        "sando:binNames": auto.ConfigValue(json.dumps(["makenotwork", "mnw-admin"])),
        "sando:healthCheck": auto.ConfigValue(json.dumps({"timeoutSeconds": 15, "intervalSeconds": 0.2,
                                                          "expectVersion": True})),
    })
    pulumi(e, "config", "set", "--secret", "sando:sshPrivateKey", input=Path(node.privateKeyPath).read_text())

    def up(ev):
        return stack.up(on_event=ev, color="never")

    def preview(ev):
        return stack.preview(on_event=ev, color="never")

    step("pulumi up (v1: bootstrap the node, build, upload, switch, restart)", up)
    print(f"   served: {node.served()}")

    stack.set_config("sando:version", auto.ConfigValue("v2"))
    step("pulumi preview (sando:version=v2)", preview)
    step("pulumi up (v2)", up)
    print(f"   served: {node.served()}")

    stack.set_config("sando:version", auto.ConfigValue("v1"))
    step("rollback: pulumi config set sando:version v1 && pulumi preview", preview)
    step("pulumi up (v1 again: a retained release, no upload)", up)
    print(f"   served: {node.served()}")
    out = stack.outputs()["nodes"].value[node.name]
    print(f"   live {out['liveVersion']}, previous {out['previousVersion']}, "
          f"releases {[r['version'] for r in out['releases']]}")

    say("done")
    print(f"""   The node keeps running. Look around:
     . scripts/env.sh && pulumi stack history -s {STACK}
     readlink {node.release_root}/current
   Stop and clean up:
     scripts/testnodes stop && (. scripts/env.sh && pulumi stack rm -y --force {STACK})""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
