"""Issue 9's fault suite: each fault, then the live release still serves and the next `pulumi up`
converges with nothing lost. Real-systemd nodes, the real engine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest

from tests.support import TOOLS, AppRepo, run_up, wait_for
from tests.toxiproxy import Toxiproxy


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("faultapp") / "makenotwork")
    big = r.path / "server/deploy/error-pages/big.bin"
    big.write_bytes(os.urandom(48 * 1024 * 1024))  # v2 takes long enough to send to interrupt it
    r.version("v2")
    big.unlink()
    r.version("v3", ("crash-at-start",))
    r.mutate("fix")
    r.version("v4")
    return r


def releases(node) -> list[str]:
    return sorted(node.exec("ls", "-A", "/opt/makenotwork/releases").stdout.split())


def converges(d, node, version: str) -> None:
    """The next `pulumi up` brings the node to `version` and a second one has nothing to do."""
    d.set(version=version)
    run_up(d)
    assert node.served()["version"] == version
    _, changed = run_up(d)
    assert changed == {}


def test_sshd_killed_mid_upload(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    with Toxiproxy() as tp:  # the node's sshd reached through a proxy whose bandwidth the test sets
        link = tp.proxy("node1-ssh", f"{node.host}:22")
        d = make_deploy([node], repo=repo)
        d.set(nodes=[node.config() | {"host": link.host, "port": link.port}])
        run_up(d)  # v1 live
        # v2's 48 MB at 8 MB/s take ~6 s to send: the kill lands mid-upload however fast sando gets
        slow = link.add_toxic("bandwidth", "upstream", "slow_upload", rate=8000)
        killed = threading.Event()

        def kill_sshd_when_staging_appears():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed.is_set():
                if any(n.startswith(".staging-v2-") for n in releases(node)):
                    node.exec("systemctl", "stop", "ssh")  # no new connections: the retry fails too
                    node.exec("pkill", "-KILL", "-f", "sshd: root@notty")  # and the upload's session dies
                    killed.set()
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_sshd_when_staging_appears)
        watcher.start()
        d.set(version="v2")
        errors = d.errors(d.up_fails())
        watcher.join()
        assert killed.is_set()
        assert any("node1" in e or link.host in e for e in errors), errors
        assert "Traceback" not in "\n".join(errors)
        assert node.served()["version"] == "v1"
        wait_for(lambda: releases(node) == ["v1"], timeout=10)  # the staging dir went with the upload
        link.remove_toxic(slow)
        node.exec("systemctl", "start", "ssh")
        converges(d, node, "v2")
        assert releases(node) == ["v1", "v2"]


def test_release_filesystem_full(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    node.exec("mkdir", "-p", "/opt/makenotwork/releases")
    node.exec("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", "/opt/makenotwork/releases")
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1 fits
    d.set(version="v2")  # v2 carries 48 MB more
    (error,) = d.errors(d.up_fails())
    assert re.fullmatch(r"node1: releases/ has \d+ MB free, v2 needs \d+ MB; nothing was sent\. .*", error), error
    assert releases(node) == ["v1"] and node.served()["version"] == "v1"
    assert d.node_out(node)["lastTransfer"]["version"] == "v1"
    node.exec("mount", "-o", "remount,size=256m", "/opt/makenotwork/releases")
    converges(d, node, "v2")


def _df(node, column: int, flag: str = "-Pk") -> int:
    """A column of df for the node's releases/ (3: used, 4: free; -Pi: inodes)."""
    return int(node.exec("sh", "-c", f"df {flag} /opt/makenotwork/releases | awk 'NR==2 {{print ${column}}}'",
                         check=True).stdout)


def test_release_filesystem_nearly_full_and_out_of_inodes(make_nodes, make_deploy, repo):
    """Issue 19.10: free-space numbers that would read the same when rounded are given in KB, and a
    file system that fills up mid-upload is said with tar's words whole, on one line."""
    (node,) = make_nodes(1)
    releases_dir = "/opt/makenotwork/releases"
    node.exec("mkdir", "-p", releases_dir)
    node.exec("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", releases_dir, check=True)
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1
    d.set(version="v2")
    node.exec("mount", "-o", f"remount,size={_df(node, 3) + 10 * 1024}k", releases_dir, check=True)
    (error,) = d.errors(d.up_fails())
    need_mb = int(re.fullmatch(r"node1: releases/ has 10 MB free, v2 needs (\d+) MB; nothing was sent\. .*",
                               error, re.S).group(1))
    # just under what v2 needs, so close that both round to the same number of MB
    node.exec("mount", "-o", f"remount,size={_df(node, 3) + need_mb * 1024 - 508}k", releases_dir, check=True)
    (error,) = d.errors(d.up_fails())
    free, need = map(int, re.fullmatch(r"node1: releases/ has (\d+) KB free, v2 needs (\d+) KB; nothing was sent\. "
                                       r"Free space on the node \(or lower sando:keepReleases\) and run pulumi up "
                                       r"again", error).groups())
    assert free < need and round(free / 1024) == round(need / 1024) == need_mb, error
    # room enough, but hardly any inodes: tar fails mid-stream with ENOSPC
    node.exec("mount", "-o", f"remount,size=256m,nr_inodes={_df(node, 3, '-Pi') + 3}", releases_dir, check=True)
    (error,) = d.errors(d.up_fails())
    assert re.fullmatch(r"node1: releases/ ran out of space \(or inodes\) while receiving v2 \(tar: \S+: Cannot "
                        r"(open|mkdir): No space left on device; tar: [^;]+(; and \d+ more lines?)?\); nothing was "
                        r"switched and the partial upload was removed\. Free space on the node \(or lower "
                        r"sando:keepReleases\) and run pulumi up again", error), error
    assert releases(node) == ["v1"] and node.served()["version"] == "v1"
    node.exec("mount", "-o", "remount,nr_inodes=100000", releases_dir, check=True)
    converges(d, node, "v2")


def _pulumi_up(d) -> subprocess.Popen:
    env = {**os.environ, **d.env}
    return subprocess.Popen([str(TOOLS / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack", d.name,
                             "--non-interactive"], cwd=d.project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _warnings_and_restarts(node) -> list[tuple[float, str]]:
    warned = [(float(t), "warning") for t in re.findall(r"restart-warning: received at=([0-9.]+)",
                                                         node.journal("makenotwork"))]
    return sorted(warned + [(t, "restart") for t in node.restart_times("makenotwork")])


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_mid_deploy_then_a_rerun(make_nodes, make_deploy, repo, interrupts):
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=4)
    d.set_secret("cliServiceToken", token)
    run_up(d)  # v1 (the app is not running yet: the first warning fails, in warn mode)
    d.set(version="v4")
    proc = _pulumi_up(d)
    wait_for(lambda: "restart-warning: received" in node.journal("makenotwork"), timeout=120)
    for _ in range(interrupts):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    proc.communicate(timeout=120)
    assert node.served()["version"] in ("v1", "v4")  # something healthy serves throughout
    if interrupts == 2:  # a hard stop may leave the stack's lock behind
        d.cli(["cancel", "--yes"], check=False)
    converges(d, node, "v4")
    # every restart after v1's first start came right after a warning sent in the same run, the
    # whole notice before it: no restart ever used an older warning
    events = [e for e in _warnings_and_restarts(node) if e[0] > node.restart_times("makenotwork")[0]]
    for i, (t, kind) in enumerate(events):
        if kind == "restart":
            assert i > 0 and events[i - 1][1] == "warning" and t - events[i - 1][0] >= 4.0, events


def test_two_ups_at_once_on_one_stack(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    node.unit_dropin("slow", "[Service]\nExecStartPost=/bin/sleep 5")  # the first up's restart takes 5 s
    d.set(version="v4")
    first = _pulumi_up(d)
    wait_for(lambda: "v4" in releases(node), timeout=120)
    second = _pulumi_up(d)
    out2, _ = second.communicate(timeout=300)
    out1, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out1
    assert second.returncode != 0 and "the stack is currently locked" in out2
    assert node.served()["version"] == "v4"
    converges(d, node, "v4")


@pytest.mark.parametrize("knob,value,seen,closes", [
    ("MNW_RESTART_WARNING_STATUS", "500", "failed HTTP 500", ")"),  # no detail: no stray space (issue 19.10)
    ("MNW_RESTART_WARNING_DELAY_MS", "30000", "failed HTTP 000", " curl: (28) "),  # curl gives up after 10 s
])
def test_restart_warning_endpoint_failing(make_nodes, make_deploy, repo, knob, value, seen, closes):
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo)
    run_up(d)
    node.exec("sh", "-c", f"echo {knob}={value} >> /etc/makenotwork/makenotwork.env && systemctl restart makenotwork")
    d.set(version="v4", restartWarningSeconds=2, restartWarningOnFailure="abort")
    d.set_secret("cliServiceToken", token)
    (error,) = d.errors(d.up_fails())
    assert f"node1: the restart warning failed ({seen}" in error and "nothing was restarted and v1 stays live" in error
    assert node.served()["version"] == "v1"
    d.set(restartWarningOnFailure="warn")  # warn mode: users could not be told, the deploy goes on
    run_up(d)
    assert f"warning: node1: the restart warning was not delivered ({seen}{closes}" in "".join(d.log)
    assert d.node_out(node)["restartWarning"].startswith(seen) and d.node_out(node)["restartWarning"] == \
        d.node_out(node)["restartWarning"].strip()
    assert node.served()["version"] == "v4"
    converges(d, node, "v4")


def test_a_version_that_crashes_at_start(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v3")
    error, *quoted = d.errors(d.up_fails())  # the node's error, then the journal lines it quotes
    assert quoted and "crash-at-start build: exiting" in quoted, quoted
    assert error == ("node1: v3 exited at start (makenotwork.service activating/auto-restart); v1 is live again. "
                     "Last lines of its journal:")
    assert node.served()["version"] == "v1"
    converges(d, node, "v4")


def test_a_health_check_that_never_passes(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v4", healthCheck={"url": "http://127.0.0.1:3000/nothing-here", "timeoutSeconds": 3,
                                     "intervalSeconds": 0.2})
    (error,) = d.errors(d.up_fails())
    assert error.startswith("node1: v4 failed its health check (") and "404" in error
    assert "switched back to v1, but it is not healthy either" in error  # the check fails for v1 too
    assert node.exec("readlink", "/opt/makenotwork/current").stdout.strip() == "releases/v1"
    assert node.served()["version"] == "v1"
    d.set(healthCheck={"timeoutSeconds": 10, "intervalSeconds": 0.2, "expectVersion": True})
    converges(d, node, "v4")


def test_retention_after_failed_deploys(make_nodes, make_deploy, tmp_path):
    """Issue 9.5: after any run of deploys, good or failed, at most keepReleases + 2 sando releases,
    failed ones pruned first, each one known to the state."""
    repo = AppRepo(tmp_path / "app")
    plan = ["v1", "v2", "v3x", "v4x", "v5x", "v6", "v7x", "v8"]
    for v in plan[1:]:
        repo.version(v, *([("crash-at-start",)] if v.endswith("x") else []))
        if v.endswith("x"):
            repo.mutate("fix")
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, keepReleases=2, healthCheck={"timeoutSeconds": 3, "intervalSeconds": 0.2,
                                                                      "expectVersion": True})
    for v in plan:
        d.set(version=v)
        if v.endswith("x"):
            d.up_fails()
        else:
            run_up(d)
        held = [r for r in releases(node) if not r.startswith(".")]
        assert len(held) <= 2 + 2, (v, held)
    assert node.served()["version"] == "v8"
    assert releases(node) == ["v6", "v8"]  # live and rollback target; the failed v7x went first
    out = d.node_out(node)
    assert sorted(r["version"] for r in out["releases"]) == releases(node)  # the state knows each one
