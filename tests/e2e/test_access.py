"""Per-node access (README "Adding a node to a running fleet"): a node with its own SSH key
(sando:nodeKeys) reached only through a bastion (sando:nodes[].proxyJump, its own pinned host key),
added to a running stack and brought up by a rolling rollout, through the real engine."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import run_preview, run_up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def behind_bastion(make_nodes, tmp_path):
    """node1 (the bastion, also a node of the fleet) and node2, whose sshd answers only inside
    node1's network: on node1's 127.0.0.1:PORT (a relay through a unix socket). From this machine
    127.0.0.1:PORT is closed, so sando can reach node2 only through node1."""
    bastion, inner = make_nodes(2)
    # node2 accepts only its own key (make_nodes let node1's key in everywhere); the bastion lets
    # node2's key in too (sando logs in to the bastion with the node's key, as ssh -J does by default)
    own = Path(inner.privateKeyPath + ".pub").read_text()
    inner.path("/root/.ssh/authorized_keys").write_text(own)
    with open(bastion.path("/root/.ssh/authorized_keys"), "a") as fh:
        fh.write(own)
    port, sock = _free_port(), tmp_path / "relay.sock"
    outside = subprocess.Popen(["socat", f"UNIX-LISTEN:{sock},fork", f"TCP:{inner.host}:22"],
                               stderr=subprocess.DEVNULL)
    inside = subprocess.Popen(["nsenter", "-t", str(bastion.pid), "-n", "socat",
                               f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError):  # not from here
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        yield bastion, inner, port
    finally:
        for p in (inside, outside):
            p.terminate()
            p.wait(timeout=10)


def test_a_node_with_its_own_key_behind_a_bastion_joins_a_running_fleet(behind_bastion, make_deploy):
    bastion, inner, port = behind_bastion
    d = make_deploy([bastion], rollout={"batchSize": 1})
    run_up(d)
    assert bastion.served()["version"] == "v1"

    # README steps: the node's key as a secret, its host key pinned, the bastion's host key pinned,
    # then a preview and an up; the rollout brings the new node up after the running one
    joining = {**inner.config(), "host": "127.0.0.1", "port": port,
               "proxyJump": {"host": bastion.host, "port": 22, "user": "root", "hostKey": bastion.hostKey}}
    d.set(nodes=[bastion.config(), joining])
    d.cli(["config", "set", "--secret", "--path", f"sando:nodeKeys.{inner.name}"],
          input=Path(inner.privateKeyPath).read_text())
    _, planned = run_preview(d)
    assert planned.get(f"{inner.name}-current-switch") == "create"
    assert not any(k.startswith(f"{bastion.name}-") for k in planned), planned  # the running node stays as it is
    run_up(d)
    assert inner.served()["version"] == "v1"
    assert d.node_out(inner)["liveVersion"] == "v1"
    # the key never went to disk in clear: config and state hold it encrypted
    key_body = Path(inner.privateKeyPath).read_text().splitlines()[1]
    assert key_body not in (d.project / f"Pulumi.{d.name}.yaml").read_text()
    assert key_body not in d.cli(["stack", "export"]).stdout

    res, changed = run_up(d)  # nothing to do: one read of each node, through the bastion for node2
    assert changed == {}


def test_sando_status_reaches_a_node_behind_a_bastion_with_its_own_key(behind_bastion, make_deploy, sando):
    """`sando status` connects as the program does: node2 through node1, with node2's own key."""
    bastion, inner, port = behind_bastion
    joining = {**inner.config(), "host": "127.0.0.1", "port": port,
               "proxyJump": {"host": bastion.host, "port": 22, "user": "root", "hostKey": bastion.hostKey}}
    d = make_deploy([bastion, inner])
    d.set(nodes=[bastion.config(), joining])
    d.cli(["config", "set", "--secret", "--path", f"sando:nodeKeys.{inner.name}"],
          input=Path(inner.privateKeyPath).read_text())
    run_up(d)
    code, out = sando(d.project, "status", d.name, "--json")
    assert code == 0, out
    [st] = json.loads(sando.out)["stacks"]
    rows = {n["node"]: n for n in st["nodes"]}
    assert rows[inner.name]["reachable"] and rows[inner.name]["liveVersion"] == "v1", out
    assert rows[bastion.name]["liveVersion"] == "v1", out


def test_a_bastion_whose_host_key_does_not_match_is_refused_naming_it(behind_bastion, make_deploy):
    bastion, inner, port = behind_bastion
    d = make_deploy([bastion])
    wrong = inner.hostKey  # a real key, but not the bastion's
    d.set(nodes=[{**inner.config(), "host": "127.0.0.1", "port": port,
                  "proxyJump": {"host": bastion.host, "hostKey": wrong}}])
    d.cli(["config", "set", "--secret", "--path", f"sando:nodeKeys.{inner.name}"],
          input=Path(inner.privateKeyPath).read_text())
    log = []
    with pytest.raises(Exception) as err:
        d.stack.up(color="never", on_output=log.append)
    errors = d.errors(str(err.value))
    assert errors and all(f"{inner.name}'s proxyJump (root@{bastion.host}:22)" in e for e in errors), errors
    assert "host key does not match the one pinned in sando:nodes[].proxyJump.hostKey" in errors[0]
    assert not (inner.release_root / "releases").exists()
