"""A node that sando:verifyAgainst (or a promote's sando:verifiedBuild) refuses because the pin's
bytes there would differ from what the source stack runs changes nothing at all: no release sent,
no switch, and no host config step either (what was tested is what ships; a failed deploy leaves
the last good host config), in a plain `pulumi up` (which previews first) and in an up that skips
its preview (the Automation API, as `sando promote` runs it), said once (issue 22.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_cli import _caddy_room, _sha
from tests.support import AppRepo, run_up

CADDYFILE = "/etc/caddy/Caddyfile"
UNIT = "/etc/systemd/system/makenotwork.service"


def host_files(node) -> dict:
    return {f: node.path(f).read_text() if node.path(f).exists() else None for f in (CADDYFILE, UNIT)}


@pytest.mark.parametrize("how", ["plain up", "skip preview"])
def test_a_node_refused_for_its_bytes_gets_no_host_config(make_nodes, make_deploy, tmp_path, how):
    """Prod (sando:verifyAgainst: testnot) runs v1 on node2; testnot runs v2; the server repo's host
    config moves on (sando:bootstrap.ref main: a Caddyfile and a unit change). Operator B (another
    cache, a toolchain flag that changes the binaries) pins v2 and adds node3: both are refused, and
    neither gets the new host config (node2 keeps its last good one, node3 gets none), nothing sent or
    switched. Then operator A's up (testnot's build) ships v2 and the host config with it."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t_node, p_node, p2_node = make_nodes(3)
    _caddy_room(t_node, p_node, p2_node)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project, verifyAgainst=testnot.name)
    prod.set_secret("sshPrivateKey", Path(t_node.privateKeyPath).read_text())  # node1's key is in every node
    run_up(testnot)
    run_up(prod)  # v1 on both, one build (operator A's)
    testnot.set(version="v2")
    run_up(testnot)
    tested = json.loads((t_node.release_root / "releases" / "v2" / ".sando" / "manifest.json").read_text())["files"]

    caddyfile, unit = repo.path / "server/deploy/Caddyfile", repo.path / "server/deploy/makenotwork.service"
    caddyfile.write_text(caddyfile.read_text() + "\n# tuned after testnot's v2\n")
    unit.write_text(unit.read_text() + "\n# tuned after testnot's v2\n")
    repo.git("commit", "-q", "-am", "host config")
    before = {n.name: host_files(n) for n in (p_node, p2_node)}
    assert before[p_node.name][CADDYFILE] != caddyfile.read_text()

    operator_b = {"SANDO_CACHE_DIR": str(tmp_path / "operator-b-cache"), "RUSTFLAGS": "-C debuginfo=1"}
    operator_a = {k: prod.env.get(k) for k in operator_b}
    prod.nodes = [p_node, p2_node]
    prod.set(version="v2", nodes=[p_node.config(), p2_node.config()])
    if how == "plain up":
        res = prod.cli(["up", "--yes"], check=False, env=operator_b)
        assert res.returncode != 0
        text = res.stdout + res.stderr
    else:
        prod.stack.workspace.env_vars.update(operator_b)
        prod.up_fails()
        text = "\n".join(prod.log)  # what the operator saw (the error's own copy of it left out)
    for n in (p_node, p2_node):  # the last good host config (node3: none), no release, no switch
        assert host_files(n) == before[n.name], text
        assert not (n.release_root / "releases" / "v2").exists()
    assert p_node.served()["version"] == "v1" and prod.node_out(p_node)["liveVersion"] == "v1"
    assert prod.node_out(p2_node)["hostConfig"]["actions"] == [f"not applied: refused (not {testnot.name}'s bytes)"]

    if how == "plain up":  # it previewed first: the preview cannot know B's bytes (nothing is built there)
        assert "Previewing update" in text and "Updating (" in text
        text = text[text.index("Updating ("):]  # the update's own lines and diagnostics
    errors = prod.errors(text)
    assert [e.split(":", 1)[0] for e in errors] == ["node2", "node3"], text[text.find("Diagnostics"):][:3000]
    built_b = tmp_path / "operator-b-cache" / "builds" / repo.commit("v2") / "artifacts"
    for n, e in zip((p_node, p2_node), errors):
        assert e.startswith(f"{n.name}: v2 ({repo.commit('v2')[:12]}) built here is not byte-identical to what "
                            f"{testnot.name} runs: makenotwork: built here {_sha(built_b / 'makenotwork')}, on "
                            f"{testnot.name} {tested['makenotwork']}"), e
        assert text.count(e) == 1, text  # said once, at the end
        assert f"warning: {n.name}: v2 refused here" in text, text
        assert f"{n.name}-host updat" not in text and f"{n.name}: host config: " not in text, text

    # operator A (testnot's build): the same pin ships, and with it the host config it waited for
    for k, v in operator_a.items():
        if v is None:
            prod.stack.workspace.env_vars.pop(k, None)
        else:
            prod.stack.workspace.env_vars[k] = v
    run_up(prod)
    for n in (p_node, p2_node):
        assert n.served()["version"] == "v2"
        assert n.path(CADDYFILE).read_text() == caddyfile.read_text() and n.path(UNIT).read_text() == unit.read_text()
        assert prod.node_out(n)["bytes"] == f"match the pinned build (verified on {testnot.name})"


def test_a_promote_refused_where_a_node_holds_other_bytes_leaves_its_host_config(make_nodes, make_deploy, sando,
                                                                                tmp_path):
    """`sando promote` (an up that skips its preview) of v2 and of testnot's new host config to a prod
    node that holds a v2 of other bytes (operator B's build, deployed there and pinned back from):
    that node is refused (releases are immutable), and keeps its release and its last good host
    config; promote puts prod's pins back (its version and sando:bootstrap.ref), as the node is."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t_node, p_node = make_nodes(2)
    _caddy_room(t_node, p_node)
    ref = repo.commit("HEAD")
    testnot = make_deploy([t_node], repo=repo, bootstrap={"ref": ref})
    prod = make_deploy([p_node], repo=repo, project=testnot.project, bootstrap={"ref": ref})
    run_up(testnot)
    run_up(prod)  # v1 on both
    operator_b = {"SANDO_CACHE_DIR": str(tmp_path / "operator-b-cache"), "RUSTFLAGS": "-C debuginfo=1"}
    operator_a = {k: prod.env.get(k) for k in operator_b}
    prod.stack.workspace.env_vars.update(operator_b)
    prod.set(version="v2")
    run_up(prod)  # B's v2 on prod (no verification yet), then the pin back to v1: node2 holds B's v2
    prod.set(version="v1")
    run_up(prod)
    for k, v in operator_a.items():
        if v is None:
            prod.stack.workspace.env_vars.pop(k, None)
        else:
            prod.stack.workspace.env_vars[k] = v
    held = json.loads((p_node.release_root / "releases" / "v2" / ".sando" / "manifest.json").read_text())["files"]

    caddyfile = repo.path / "server/deploy/Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# through testnot with v2\n")
    repo.git("commit", "-q", "-am", "host config")
    testnot.set(version="v2", bootstrap={"ref": repo.commit("HEAD")})
    run_up(testnot)
    tested = json.loads((t_node.release_root / "releases" / "v2" / ".sando" / "manifest.json").read_text())["files"]
    assert held["makenotwork"] != tested["makenotwork"]
    before = host_files(p_node)
    assert t_node.path(CADDYFILE).read_text() == caddyfile.read_text() != before[CADDYFILE]

    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1, said
    assert host_files(p_node) == before, said  # the last good host config
    assert p_node.served()["version"] == "v1"
    refusal = (f"node2: v2 ({repo.commit('v2')[:12]}) on node2 is not byte-identical to what {testnot.name} runs: "
               f"makenotwork: on node2 {held['makenotwork']}, on {testnot.name} {tested['makenotwork']}")
    assert said.count(refusal) == 1, said  # by the up, as it came: promote's summary does not repeat it
    assert f"sando: pulumi up of {prod.name} failed (its error is above)" in said, said
    update = said[said.index("Updating ("):]  # after promote's preview (which shows the host change it plans)
    assert "warning: node2: v2 refused here" in update and "node2-host updat" not in update, said
    assert f"no node of {prod.name} switched: its sando:version is back to v1" in said, said
    assert prod.stack.get_config("sando:bootstrap.ref", path=True).value == ref  # as the node is
