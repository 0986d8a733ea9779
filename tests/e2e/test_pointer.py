"""CurrentPointer on real-systemd nodes: atomic switch, one restart, health check, switch back,
rollback by pin, drift seen by a plain `pulumi up`, the restart warning, and what the outputs say."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime

import pytest

from tests.support import AppRepo, run_preview, run_up, wait_for


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("ptrapp") / "makenotwork")
    r.version("v2")
    r.version("v3", ("crash-at-start",))  # a version that exits at start
    r.mutate("fix")
    r.version("v4")
    return r


def current(node) -> str:
    return os.readlink(node.release_root / "current")


def app_starts(node) -> int:
    return len(node.restart_times("makenotwork"))


def test_switch_restarts_once_and_error_pages_follow(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    assert current(node) == "releases/v1" and node.served()["version"] == "v1"
    assert app_starts(node) == 1
    d.set(version="v2")
    run_up(d)
    assert current(node) == "releases/v2"
    assert os.readlink(node.release_root / "previous") == "releases/v1"
    assert node.served()["version"] == "v2" and node.served()["label"] == "v2"
    assert app_starts(node) == 2  # exactly one restart per deploy
    status, body = node.fetch(node.caddyUrl + "__mnw_error_test")
    assert status == 503 and "mnw-error-page version: v2" in body  # Caddy serves v2's pages
    out = d.node_out(node)
    assert (out["liveVersion"], out["previousVersion"], out["health"]) == ("v2", "v1", "ok")
    assert out["liveCommit"] == repo.commit("v2")
    switched = datetime.fromisoformat(out["switchedAt"])
    assert switched.tzinfo is not None and abs(time.time() - switched.timestamp()) < 600
    assert "v2" in node.journal("makenotwork")  # the app's output is in the node's journal
    # the unit is enabled: it comes back after a reboot
    assert node.exec("systemctl", "is-enabled", "makenotwork").stdout.strip() == "enabled"


def test_unhealthy_version_switches_back_and_fails(make_nodes, make_deploy, repo):
    """A version that exits at start: the switch watches the unit while it waits for health, so the
    crash ends the wait at once (whatever timeoutSeconds is), and the error quotes the journal."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, version="v2")
    run_up(d)
    d.set(version="v3", healthCheck={"timeoutSeconds": 90, "intervalSeconds": 1})
    seen = d.up_fails()
    error, *quoted = d.errors(seen)  # the node's error, then the journal lines it quotes
    assert error == ("node1: v3 exited at start (makenotwork.service activating/auto-restart); v2 is live again. "
                     "Last lines of its journal:")
    assert 0 < len(quoted) <= 5 and "crash-at-start build: exiting" in quoted, quoted
    # reported within seconds of v3's start, not after the 90 s health timeout: v2 started again
    # right after (the restart times are systemd's own, on the node)
    v3_start, v2_again = node.restart_times("makenotwork")[-2:]
    assert v2_again - v3_start < 15, (v3_start, v2_again)
    assert "Traceback" not in seen
    assert current(node) == "releases/v2" and node.served()["version"] == "v2"
    # systemd's start limit after the crash loop did not keep v2 from starting again
    assert node.exec("systemctl", "is-active", "makenotwork").stdout.strip() == "active"
    # the failed release is kept for inspection (retention allows it), marked failed
    assert (node.release_root / "releases" / "v3" / ".sando" / "failed").exists()
    d.set(version="v4")
    run_up(d)
    assert node.served()["version"] == "v4"
    releases = {r["version"]: r for r in d.node_out(node)["releases"]}
    assert releases["v3"]["failed"] is True and releases["v4"]["failed"] is False


def test_rollback_by_pin_sends_nothing(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    before = {p.name: p.stat().st_mtime_ns for p in (node.release_root / "releases" / "v1").iterdir()}
    d.set(version="v1")
    _, planned = run_preview(d)
    assert planned == {"node1-release-files": "update", "node1-current-switch": "update"}
    _, changed = run_up(d)
    assert changed == planned
    assert node.served()["version"] == "v1" and current(node) == "releases/v1"
    after = {p.name: p.stat().st_mtime_ns for p in (node.release_root / "releases" / "v1").iterdir()}
    assert after == before
    transfer = d.node_out(node)["lastTransfer"]
    assert (transfer["version"], transfer["bytesSent"]) == ("v1", 0)  # this run sent nothing


def test_plain_up_puts_back_a_hand_moved_current(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    res, changed = run_up(d)
    assert changed == {}
    link = node.release_root / "current"
    tmp = node.release_root / "current.byhand"
    os.symlink("releases/v1", tmp)
    os.replace(tmp, link)  # someone switched back by hand
    node.exec("systemctl", "restart", "makenotwork")
    wait_for(lambda: node.served()["version"] == "v1")
    _, planned = run_preview(d)  # no --refresh: a plain preview sees it
    assert planned == {"node1-current-switch": "update"}
    _, changed = run_up(d)
    assert changed == {"node1-current-switch": "update"}
    assert current(node) == "releases/v2" and node.served()["version"] == "v2"


def test_plain_up_starts_a_stopped_service(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    node.exec("systemctl", "stop", "makenotwork")
    _, changed = run_up(d)
    assert changed == {"node1-current-switch": "update"}
    assert node.served()["version"] == "v1"


def test_expect_version_matches_the_whole_field(make_nodes, make_deploy, repo, tmp_path):
    """Pinned v1 must not pass when the app serves v10 (a substring match would)."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1 live
    other = AppRepo(tmp_path / "other")
    other.version("v2")
    build = "MNW_VERSION=v10 MNW_COMMIT=0123456789abcdef cargo build --release --manifest-path server/Cargo.toml"
    d.set(version="v2", source={"repo": str(other.path), "buildCommand": build})
    (error,) = d.errors(d.up_fails())
    assert "node1: v2 failed its health check (serves version 'v10', not 'v2')" in error
    assert node.served()["version"] == "v1"


def test_restart_warning_right_before_the_restart_and_secrets_stay_secret(make_nodes, make_deploy, repo):
    token = "tok-" + os.urandom(12).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=3)
    d.set_secret("cliServiceToken", token)
    key_body = open(node.privateKeyPath).read().splitlines()[1]
    run_up(d)  # v1: nothing runs yet: nobody to warn, nothing said
    assert node.served()["version"] == "v1"
    first = "".join(d.log)
    assert "restart warning" not in first, first
    assert d.node_out(node)["restartWarning"] == "not needed: service not running"

    d.set(version="v2")
    run_up(d)
    app_log = node.journal("makenotwork")
    received = [float(m) for m in re.findall(r"restart-warning: received at=([0-9.]+)", app_log)]
    assert len(received) == 1, app_log
    restart_at = node.restart_times("makenotwork")[-1]
    assert restart_at - received[-1] >= 3.0  # the whole notice, sent in this run
    assert d.node_out(node)["restartWarning"].startswith("sent at ")
    assert node.served()["version"] == "v2"

    # a change that restarts nothing warns nobody (sando:restartWarningSeconds alone)
    d.set(restartWarningSeconds=4)
    run_up(d)
    assert len(re.findall(r"restart-warning: received", node.journal("makenotwork"))) == 1
    assert len(node.restart_times("makenotwork")) == 2

    export = d.cli(["stack", "export"]).stdout
    for secret in (token, key_body):
        assert secret not in export and secret not in "".join(d.log)
    assert token not in node.journal()


def test_restart_warning_abort_mode_stops_before_any_restart(make_nodes, make_deploy, repo):
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1 live, no warning configured
    d.set(version="v2", restartWarningSeconds=2, restartWarningOnFailure="abort")
    d.set_secret("cliServiceToken", "wrong-" + token)  # the app answers 401
    (error,) = d.errors(d.up_fails())
    assert error == ("node1: the restart warning failed (failed HTTP 401) and sando:restartWarningOnFailure is "
                     "abort; nothing was restarted and v1 stays live")
    assert app_starts(node) == 1
    assert current(node) == "releases/v1" and node.served()["version"] == "v1"


def test_three_nodes_switch_in_parallel(make_nodes, make_deploy, repo):
    """Each node's restart holds (ExecStartPost) until every node's restart has begun: the test
    lets them go only once all three are in theirs. One node after another, the first restart
    would wait in vain (60 s, then the unit fails); in parallel all three are held at once."""
    nodes = make_nodes(3)
    d = make_deploy(nodes, repo=repo)
    run_up(d)
    hold = ("[Service]\nExecStartPost=/usr/bin/touch /var/tmp/held\n"
            "ExecStartPost=/usr/bin/timeout 60 /bin/sh -c 'until [ -e /var/tmp/go ]; do sleep 0.1; done'")
    for n in nodes:
        n.unit_dropin("hold", hold)
    held: list[list[str]] = []  # which nodes were held, each time one more was seen held

    def release_when_all_held():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = [n.name for n in nodes if n.path("/var/tmp/held").exists()]
            if not held or now != held[-1]:
                held.append(now)
            if len(now) == len(nodes):
                break
            time.sleep(0.05)
        for n in nodes:  # all held, or the deadline passed: let them go either way
            n.path("/var/tmp/go").touch()

    releaser = threading.Thread(target=release_when_all_held)
    d.set(version="v2")
    releaser.start()
    try:
        _, changed = run_up(d)
    finally:
        releaser.join()
    assert held[-1] == [n.name for n in nodes], held  # all three restarts were under way at once
    for n in nodes:
        assert n.served()["version"] == "v2" and current(n) == "releases/v2"
        assert changed[f"{n.name}-current-switch"] == "update" and changed[f"{n.name}-release-files"] == "update"


def test_no_restart_warning_when_the_service_is_not_running_even_in_abort_mode(make_nodes, make_deploy, repo):
    """A first deploy, and a deploy during an outage (service stopped), with
    restartWarningOnFailure: abort: nobody to warn, so no warning, no message, no refusal."""
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=2, restartWarningOnFailure="abort")
    d.set_secret("cliServiceToken", "wrong-" + token)  # a warning would fail (401) and abort
    run_up(d)  # the first deploy: nothing runs yet
    assert node.served()["version"] == "v1"
    assert d.node_out(node)["restartWarning"] == "not needed: service not running"
    node.exec("systemctl", "stop", "makenotwork")  # an outage
    d.set(version="v2")
    run_up(d)
    assert node.served()["version"] == "v2"
    assert d.node_out(node)["restartWarning"] == "not needed: service not running"
    assert "restart warning" not in "".join(d.log)
    assert "restart-warning: received" not in node.journal("makenotwork")
