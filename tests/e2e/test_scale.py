"""Issue 12's scale: one stack of 16 real-systemd nodes (one SSH key) deploys a bump, a rollback
by pin and a rolling rollout in batches of 4; nothing is serial per node but the rollout."""

from __future__ import annotations

import pytest

from tests.support import AppRepo, run_up

pytestmark = pytest.mark.slow


def test_sixteen_nodes_bump_rollback_and_rolling_rollout(make_nodes, make_deploy, tmp_path):
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    repo.version("v3")
    nodes = make_nodes(16)
    d = make_deploy(nodes, repo=repo)
    run_up(d)
    d.set(version="v2")
    _, changed = run_up(d)
    assert sum(1 for k, op in changed.items() if k.endswith("-current-switch") and op == "update") == 16
    d.set(version="v1")  # rollback by pin: nothing sent anywhere
    run_up(d)
    outs = d.outputs()["nodes"]
    assert {o["liveVersion"] for o in outs.values()} == {"v1"}
    assert {o["lastTransfer"]["bytesSent"] for o in outs.values()} == {0}

    d.set(version="v3", rollout={"batchSize": 4})
    run_up(d)
    outs = d.outputs()["nodes"]
    for n in nodes:
        assert n.served()["version"] == "v3"
    assert [outs[n.name]["batch"] for n in nodes] == [i // 4 for i in range(16)]
    last = {n.name: n.restart_times("makenotwork")[-1] for n in nodes}
    for b in range(1, 4):  # each batch restarted only after every node of the batch before it
        prev = [last[n.name] for n in nodes[(b - 1) * 4:b * 4]]
        this = [last[n.name] for n in nodes[b * 4:(b + 1) * 4]]
        assert min(this) > max(prev), (b, prev, this)
