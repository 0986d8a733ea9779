"""Issue 12's rolling rollouts on real-systemd nodes: batches in config order, each waiting for the
previous one's health checks; a failed node stops the rollout with the later nodes untouched."""

from __future__ import annotations

import os
import time

import pytest

from tests.support import AppRepo, run_up

# on the node, a start of v2 fails (v1 starts fine)
REFUSE_V2 = "[Service]\nExecStartPre=/bin/sh -c 'readlink /opt/makenotwork/current | grep -qvx releases/v2'"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("rollapp") / "makenotwork")
    r.version("v2")
    return r


def test_a_failed_node_stops_the_rollout(make_nodes, make_deploy, repo):
    token = "tok-" + os.urandom(8).hex()
    nodes = make_nodes(4, token=token)
    d = make_deploy(nodes, repo=repo, rollout={"batchSize": 1}, restartWarningSeconds=1)
    d.set_secret("cliServiceToken", token)
    run_up(d)
    node1, node2, node3, node4 = nodes
    node2.unit_dropin("refuse-v2", REFUSE_V2)
    starts = {n.name: len(n.restart_times("makenotwork")) for n in nodes}
    d.set(version="v2")
    seen = d.up_fails()
    error, stopped = d.errors(seen)
    assert error.startswith("node2: v2 failed its health check (restart failed: ") and error.endswith("v1 is live again")
    assert stopped == "Rollout stopped: node3, node4 not switched (they keep their version)."
    assert "error: the deploy failed on node2:" in seen
    assert node1.served()["version"] == "v2"
    for n in (node2, node3, node4):
        assert n.served()["version"] == "v1"
    for n in (node3, node4):  # untouched: no restart, no warning
        assert len(n.restart_times("makenotwork")) == starts[n.name]
        assert "restart-warning: received" not in n.journal("makenotwork").split("listening")[-1]
        assert os.readlink(n.release_root / "current") == "releases/v1"
    # batch order: node1 was healthy before node2 began
    assert node2.restart_times("makenotwork")[starts["node2"]] > node1.restart_times("makenotwork")[-1]
    out = d.outputs()["nodes"]  # the outputs say where each node stands (the last successful run)
    assert {n: out[n]["batch"] for n in out} == {"node1": 0, "node2": 1, "node3": 2, "node4": 3}

    node2.unit_dropin("refuse-v2", "")
    run_up(d)  # the fix: a re-run converges
    for n in nodes:
        assert n.served()["version"] == "v2"
    out = d.outputs()["nodes"]
    assert {out[n]["liveVersion"] for n in out} == {"v2"}


def test_pause_between_batches(make_nodes, make_deploy, repo):
    nodes = make_nodes(2)
    d = make_deploy(nodes, repo=repo, rollout={"batchSize": 1, "pauseSeconds": 3})
    run_up(d)
    d.set(version="v2")
    run_up(d)
    first, second = (n.restart_times("makenotwork")[-1] for n in nodes)
    assert second - first >= 3.0


def test_a_rerun_pauses_only_after_a_batch_that_switched(make_nodes, make_deploy, repo):
    """Issue 19.9: a re-run after a failed rollout, where the first batch is on the pin already,
    does not wait out pauseSeconds before the next batch: nothing switched before it."""
    nodes = make_nodes(2)
    node1, node2 = nodes
    d = make_deploy(nodes, repo=repo, rollout={"batchSize": 1, "pauseSeconds": 1})
    run_up(d)
    node2.unit_dropin("refuse-v2", REFUSE_V2)
    d.set(version="v2")
    d.up_fails()  # node1 on v2; node2 switched back to v1
    node2.unit_dropin("refuse-v2", "")
    d.set(rollout={"batchSize": 1, "pauseSeconds": 60})
    started = time.monotonic()
    run_up(d)
    took = time.monotonic() - started
    assert node1.served()["version"] == node2.served()["version"] == "v2"
    assert took < 60, took  # node1 switched nothing in this run: no pause before node2


def test_an_unreachable_node_stops_the_rollout_like_a_failed_one(make_nodes, make_deploy, repo):
    """A node of an earlier batch that cannot be reached: a plain `pulumi up` (which previews first)
    fails before any change; an up that skips its preview switches the batches before it, says the
    node once and holds the later batches back, as a failed switch does; reachable again, a plain
    up converges."""
    nodes = make_nodes(3)
    node1, node2, node3 = nodes
    d = make_deploy(nodes, repo=repo, rollout={"batchSize": 1})
    run_up(d)
    d.set(version="v2", nodes=[node1.config(), node2.config() | {"port": 2222}, node3.config()])  # nothing listens there
    res = d.cli(["up", "--yes"], check=False)  # as typed: the preview fails, nothing is changed
    assert res.returncode != 0 and "cannot connect" in res.stdout + res.stderr, res.stdout
    assert {n.served()["version"] for n in nodes} == {"v1"}

    res = d.cli(["up", "--yes", "--skip-preview"], check=False)  # as the Automation API's up (sando promote)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and d.errors(out)[1:] == ["Rollout stopped: node3 not switched (they keep their version)."], out
    assert sum(line.count("cannot connect: Connection refused") for line in out.splitlines()) == 1, out
    assert [n.served()["version"] for n in nodes] == ["v2", "v1", "v1"]
    assert os.readlink(node3.release_root / "current") == "releases/v1"

    d.set(nodes=[n.config() for n in nodes])
    run_up(d)
    assert [n.served()["version"] for n in nodes] == ["v2", "v2", "v2"]
