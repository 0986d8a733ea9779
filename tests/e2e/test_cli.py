"""Issue 10's operator commands through the real engine, two stacks (testnot, prod) of one project
on two real-systemd nodes: promote moves exactly testnot's commit, status shows both stacks,
rollback goes back one version with no upload, a moved tag is refused."""

from __future__ import annotations

import io
import os

import pytest

from sando_components import cli
from tests.support import TOOLS, AppRepo, run_up


@pytest.fixture
def sando(monkeypatch, engine):
    """`sando ...` as an operator runs it: the engine's environment, the project dir as cwd."""
    for k, v in engine.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{TOOLS / 'bin'}:{os.environ['PATH']}")

    def run(project, *argv) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main([*argv, "--cwd", str(project)], out=out, err=err, stdin=io.StringIO())
        return code, out.getvalue() + err.getvalue()
    return run


def test_promote_status_rollback(make_nodes, make_deploy, sando, tmp_path):
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    token = "tok-" + os.urandom(8).hex()
    t_node, p_node = make_nodes(2, token=token)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project, restartWarningSeconds=1,
                       migrations={"refuseDestructive": True})
    prod.set_secret("cliServiceToken", token)
    run_up(testnot)
    run_up(prod)  # prod on v1
    testnot.set(version="v2")
    run_up(testnot)

    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    assert p_node.served()["version"] == "v2" and p_node.served()["commit"] == repo.commit("v2")
    assert prod.outputs()["commit"] == testnot.outputs()["commit"] == repo.commit("v2")
    assert prod.node_out(p_node)["liveCommit"] == repo.commit("v2")

    code, said = sando(testnot.project, "status", testnot.name, prod.name)
    assert code == 0, said
    rows = [line.split() for line in said.splitlines()]
    assert any(r[:3] == [testnot.name, t_node.name, "v2"] for r in rows), said
    assert any(r[:3] == [prod.name, p_node.name, "v2"] for r in rows), said

    code, said = sando(testnot.project, "rollback", "-s", prod.name, "--yes")
    assert code == 0, said
    assert p_node.served()["version"] == "v1"
    assert prod.node_out(p_node)["lastTransfer"] | {"at": None} == {
        "version": "v1", "bytesSent": 0, "linked": 5, "patched": 0, "full": 0, "at": None}

    code, said = sando(testnot.project, "rollback", "-s", prod.name, "--to", "v9", "--yes")
    assert code == 2 and "--to: v9 is not retained on node2" in said


def test_promote_refuses_a_moved_tag_and_an_unhealthy_source(make_nodes, make_deploy, sando, tmp_path):
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t_node, p_node = make_nodes(2)
    testnot = make_deploy([t_node], repo=repo, version="v2")
    prod = make_deploy([p_node], repo=repo, project=testnot.project)
    run_up(testnot)
    run_up(prod)
    promoted = repo.commit("v2")
    repo.mutate("bump", "moved")
    repo.commit_tag("v2")  # the tag now names another commit
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1 and promoted[:12] in said and repo.commit("v2")[:12] in said, said
    assert p_node.served()["version"] == "v1"

    repo.git("tag", "-f", "v2", promoted)  # the tag is put back
    # the source goes unhealthy (its binary cannot start any more), and its last run says so
    t_node.exec("sh", "-c", "chmod -x /opt/makenotwork/releases/*/makenotwork && systemctl stop makenotwork")
    testnot.set(healthCheck={"timeoutSeconds": 2, "intervalSeconds": 0.2, "expectVersion": True})
    said = testnot.up_fails()
    assert testnot.node_out(t_node)["health"] == "failed", said
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1 and "node1" in said, said
    assert p_node.served()["version"] == "v1"
