"""`sando promote / rollback / status` through the real engine (.tools/bin/pulumi, a file backend)
on a scratch project: a tiny stand-in program whose outputs are shaped like sando's, with each
node's state in a JSON file that stands in for the node (Project.nodes_now reads it instead of
SSH). No test nodes; about 20 s. Skipped without `make setup`. It also pins which pulumi
commands each sando command runs (issue 24: no extra ones)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from sando_components import cli
from sando_components.fleet import NodeNow, Probe
from sando_components.transfer import NodeRelease
from unit_helpers import commit_all, git, init_repo, scratch_project

REPO = Path(__file__).resolve().parents[2]
PULUMI = REPO / ".tools" / "bin" / "pulumi"

pytestmark = pytest.mark.skipif(not PULUMI.exists() or not (REPO / ".venv" / "bin" / "python").exists(),
                                reason="needs the engine and venv of `make setup`")

PROGRAM = '''
"""Stand-in for sando: reads sando:version/source.repo/nodes, outputs version, commit, nodes."""
import json, os, subprocess, time
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

cfg = pulumi.Config("sando")
version = cfg.require("version")
repo = os.path.abspath(cfg.require_object("source")["repo"])
commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{version}^{{commit}}"], capture_output=True,
                        text=True, check=True).stdout.strip()
state = os.path.abspath(os.path.join("nodes-state", pulumi.get_stack()))


class Node(ResourceProvider):
    def diff(self, _id, olds, news):
        return DiffResult(changes=(olds.get("version"), olds.get("commit")) != (news["version"], news["commit"]))

    def create(self, props):
        return CreateResult(props["node"], self.apply(props))

    def update(self, _id, _olds, news):
        return UpdateResult(self.apply(news))

    def apply(self, p):
        import json, os, time
        path = os.path.join(p["state"], p["node"] + ".json")
        os.makedirs(p["state"], exist_ok=True)
        if os.path.exists(os.path.join(p["state"], "fail")):  # the node refuses: the up fails with its message
            raise Exception(open(os.path.join(p["state"], "fail")).read())
        st = json.load(open(path)) if os.path.exists(path) else {"live": None, "previous": None, "releases": []}
        held = [r["version"] for r in st["releases"]]
        if p["version"] not in held:
            st["releases"].append({"version": p["version"], "commit": p["commit"], "createdAt": time.time(),
                                   "failed": False})
        if st["live"] != p["version"]:
            st["previous"], st["live"] = st["live"], p["version"]
            st.setdefault("history", []).append({"version": p["version"], "commit": p["commit"], "result": "ok",
                                                 "via": p["via"], "from": st["previous"] or ""})
        json.dump(st, open(path, "w"))
        return {**p, "liveVersion": p["version"], "liveCommit": p["commit"], "previousVersion": st["previous"],
                "switchedAt": "2026-01-02T03:04:05+00:00", "health": "ok", "releases": st["releases"],
                "lastTransfer": {"version": p["version"], "bytesSent": 0 if p["version"] in held else 4096}}


OUTS = ("liveVersion", "liveCommit", "previousVersion", "switchedAt", "health", "releases", "lastTransfer")


class Pointer(pulumi.dynamic.Resource):
    liveVersion: pulumi.Output[str]
    liveCommit: pulumi.Output[str]
    previousVersion: pulumi.Output[str]
    switchedAt: pulumi.Output[str]
    health: pulumi.Output[str]
    releases: pulumi.Output[list]
    lastTransfer: pulumi.Output[dict]


nodes = {}
for name in [n["name"] for n in cfg.require_object("nodes")]:
    r = Pointer(Node(), f"{name}-current", {"node": name, "state": state, "version": version, "commit": commit,
                                            "via": os.environ.get("SANDO_VIA", "pulumi up"), **dict.fromkeys(OUTS)})
    nodes[name] = {**{k: getattr(r, k) for k in OUTS}, "migrations": {"pending": [], "destructive": []}}
pulumi.export("version", version)
pulumi.export("commit", commit)
pulumi.export("nodes", nodes)
'''


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    app = init_repo(tmp_path / "app")
    commits = {}
    for v in ("v1", "v2"):
        (app / "f").write_text(v)
        commits[v] = commit_all(app, v)
        git(app, "tag", v)
    project, engine_env = scratch_project(tmp_path, "scratch", PROGRAM, PULUMI, REPO / ".venv")
    # PYTHONPATH: the dynamic-provider launcher runs sando's host
    for k, v in {**engine_env, "PYTHONPATH": str(REPO)}.items():
        monkeypatch.setenv(k, v)

    def pulumi(*args, stdin=None):
        res = subprocess.run([str(PULUMI), *args, "--non-interactive"], cwd=project, capture_output=True,
                             text=True, input=stdin)
        assert res.returncode == 0, f"pulumi {' '.join(args)}:\n{res.stdout}\n{res.stderr}"

    for name, nodes in (("testnot", ["tn1", "tn2"]), ("prod", ["prod"])):
        pulumi("stack", "init", name)
        pulumi("config", "set", "-s", name, "sando:version", "v1")
        pulumi("config", "set", "-s", name, "--path", "sando:source.repo", "../app")
        pulumi("config", "set", "-s", name, "sando:nodes", json.dumps([{"name": n, "host": "10.0.0.1", "hostKey": KEY}
                                                                       for n in nodes]))
        pulumi("config", "set", "-s", name, "sando:sshAgent", "true")
        pulumi("config", "set", "-s", name, "--path", "sando:bootstrap.ref", "main")
    pulumi("up", "-s", "testnot", "--yes", "--skip-preview")
    pulumi("config", "set", "-s", "testnot", "sando:version", "v2")
    pulumi("up", "-s", "testnot", "--yes", "--skip-preview")
    return project, app, commits


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
RAN: list[list[str]] = []  # the pulumi commands sando ran


class StandInProject(cli.Project):
    """cli.Project with the stand-in's JSON files as the nodes, counting pulumi commands."""

    def __init__(self, directory):
        super().__init__(directory)
        run = self.ws.pulumi_command.run

        def counted(args, *rest, **kw):
            words = [a for a in args if not a.startswith("-")]
            RAN.append(words[:2] if words[0] == "stack" or words[1:2] in (["set"], ["rm"], ["set-all"], ["rm-all"])
                       else words[:1])
            return run(args, *rest, **kw)
        self.ws.pulumi_command.run = counted

    def nodes_now(self, cfg):
        stack = next(s for s, c in self._config.items() if c is cfg)
        nodes = []
        for n in cfg.nodes:
            path = self.dir / "nodes-state" / stack / f"{n.name}.json"
            if not path.exists():  # never deployed to: a fresh node
                nodes.append(NodeNow(n.name, n.host, unit="inactive dead", health=Probe(0, "")))
                continue
            st = json.loads(path.read_text())
            releases = {r["version"]: NodeRelease(r["version"], r["commit"], r["createdAt"], {}, r["failed"])
                        for r in st["releases"]}
            nodes.append(NodeNow(n.name, n.host, live=st["live"], previous=st["previous"], releases=releases,
                                 unit="active running", health=Probe(200, "{}"), history=st.get("history", [])))
        return nodes


def sando(project: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    RAN.clear()
    code = cli.main(["--cwd", str(project), *argv], out=out, err=err, stdin=io.StringIO(), project=StandInProject)
    return code, out.getvalue(), err.getvalue()


def outputs(project: Path, stack: str) -> dict:
    return json.loads(subprocess.run([str(PULUMI), "stack", "output", "--json", "-s", stack], cwd=project,
                                     check=True, capture_output=True, text=True).stdout)


def test_promote_rollback_status_through_the_engine(scratch):
    project, app, commits = scratch

    # the tag moved in the target's repo since testnot deployed it: refused, naming both commits
    moved = commit_all(app, "v2 again") if (app / "g").write_text("x") else None
    git(app, "tag", "-f", "v2", moved)
    code, _, err = sando(project, "promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and moved[:12] in err and commits["v2"][:12] in err, err
    git(app, "tag", "-f", "v2", commits["v2"])

    code, out, err = sando(project, "promote", "--from", "testnot", "--to", "prod", "--yes")
    assert (code, err) == (0, ""), out
    assert "Previewing update (prod)" in out and "Updating (prod)" in out
    assert RAN == [["config"], ["config"], ["stack", "output"], ["config", "set-all"], ["preview"],
                   ["up"], ["stack", "output"]]  # the source's host config; no `stack ls` for named stacks, no
    # `stack output` x2 + `stack history` after the up (issue 24: 7 pulumi commands, was 8; Stack.up: 11)
    prod = outputs(project, "prod")
    assert prod["commit"] == commits["v2"] and prod["nodes"]["prod"]["liveCommit"] == commits["v2"]
    assert "sando:version: v2" in (project / "Pulumi.prod.yaml").read_text()
    state = json.loads((project / "nodes-state" / "prod" / "prod.json").read_text())
    assert [h["via"] for h in state["history"]] == ["sando promote"]  # SANDO_VIA reached the program

    code, _, err = sando(project, "promote", "--from", "nosuch", "--to", "prod", "--yes")  # a typo: the stacks named
    assert (code, err) == (2, f"sando: --from: no stack 'nosuch' in {project} (stacks: prod, testnot)\n")
    assert RAN == [["config"], ["stack", "ls"]]  # `stack ls` only to say which stacks there are

    code, _, err = sando(project, "rollback", "-s", "testnot", "--to", "v9", "--yes")
    assert (code, err) == (2, "sando: --to: v9 is not retained on any node (retained: tn1: v1, v2; tn2: v1, v2)\n")

    code, out, err = sando(project, "rollback", "-s", "testnot", "--yes")
    assert (code, err) == (0, ""), out
    assert RAN == [["config"], ["config", "set-all"], ["preview"], ["up"], ["stack", "output"]]
    assert f"testnot runs v1 ({commits['v1'][:12]}) on every node (tn1, tn2), healthy now; 0 bytes sent" in out
    assert {n["liveVersion"] for n in outputs(project, "testnot")["nodes"].values()} == {"v1"}

    code, out, err = sando(project, "status")
    assert (code, err) == (0, ""), err
    rows = [line.split()[:4] for line in out.splitlines()[1:]]
    assert rows == [["prod", "prod", "v2", "-"], ["testnot", "tn1", "v1", "v2"], ["testnot", "tn2", "v1", "v2"]]
    assert RAN == [["stack", "ls"], ["config"], ["config"]]  # one engine command per stack
    code, out, err = sando(project, "status", "testnot")
    assert (code, err) == (0, "") and RAN == [["config"]], err  # a named stack: no `stack ls`
    code, out, err = sando(project, "status", "testnot", "nosuch")
    assert (code, err) == (2, f"sando: STACK: no stack 'nosuch' in {project} (stacks: prod, testnot)\n"), err


def test_a_failed_up_s_error_is_said_once(scratch):
    """The up's output goes to the operator as it comes, the node's error in it: sando's own last
    line says that the up failed and what became of the pin, not the error a second time."""
    project, _, _ = scratch
    (project / "nodes-state" / "prod").mkdir(parents=True)
    (project / "nodes-state" / "prod" / "fail").write_text("prod: the stand-in refuses v2 here")
    code, out, err = sando(project, "promote", "--from", "testnot", "--to", "prod", "--yes")
    said = out + err
    assert code == 1 and said.count("prod: the stand-in refuses v2 here") == 1, said
    assert err.startswith("sando: pulumi up of prod failed (its error is above)\n"), err
    assert "no node of prod switched: its sando:version is back to v1" in err, err
