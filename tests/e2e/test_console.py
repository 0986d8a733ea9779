"""What the operator reads after a failed run (issue 19.3), through the real engine: each node's
failure said once, in the node's own words, at the end (the Diagnostics); no engine noise such as
"Resource monitor has terminated"; the node's switch line carries a warning instead of reading as
a success; the outputs still say where each node stands."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from datetime import datetime, timezone

from tests.support import TOOLS, AppRepo, wait_for
from tests.team import Operator


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("consoleapp") / "makenotwork")
    r.version("v2", ("crash-at-start",))  # a version that exits at start: the switch fails
    r.mutate("fix")
    r.version("v3")  # a good one
    return r


def up(d) -> str:
    """`pulumi up --yes` as an operator types it (output piped: the engine's non-interactive display)."""
    res = d.cli(["up", "--yes"], check=False)
    assert res.returncode != 0
    return res.stdout + res.stderr


def test_each_node_failure_said_once_at_the_end(make_nodes, make_deploy, repo):
    nodes = make_nodes(2)
    d = make_deploy(nodes, repo=repo)
    d.cli(["up", "--yes"])
    d.set(version="v2")
    out = up(d)
    assert "Resource monitor has terminated" not in out, out
    errors = [e for e in d.errors(out) if e.startswith(("node1: ", "node2: "))]  # without the quoted journal lines
    assert sorted(e.split(":")[0] for e in errors) == ["node1", "node2"], out
    for n in nodes:
        said = f"{n.name}: v2 exited at start ("
        assert sum(line.count(said) for line in out.splitlines()) == 1, out  # once, in the Diagnostics
        assert said in out.split("Diagnostics:", 1)[1]
        switch = [line for line in out.split("Updating", 1)[1].splitlines() if f"{n.name}-current-switch updated" in line]
        assert switch and all(f"warning: {n.name}: v2 did not go live here" in line for line in switch), out
    assert "error: the deploy failed on node1, node2:" in out
    outs = json.loads(d.cli(["stack", "output", "nodes", "--json"]).stdout)
    assert {n: o["liveVersion"] for n, o in outs.items()} == {"node1": "v1", "node2": "v1"}


def test_an_unreachable_node_is_said_once_and_the_outputs_stay(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    d.cli(["up", "--yes"])
    d.set(nodes=[node.config() | {"port": 2222}])  # nothing listens there
    out = up(d)
    assert "Resource monitor has terminated" not in out
    assert d.errors(out) == [f"node1 (root@{node.host}:2222): cannot connect: Connection refused (check the "
                             "node's host and port in sando:nodes and that sshd runs there)"]
    assert sum(line.count("cannot connect") for line in out.splitlines()) == 2  # its line and the Diagnostics
    assert "- nodes" not in out  # the preview stopped the run: no outputs shown as deleted
    outs = json.loads(d.cli(["stack", "output", "nodes", "--json"]).stdout)
    assert outs["node1"]["liveVersion"] == "v1"
    d.set(nodes=[node.config()])


def _diagnostics(out: str, node: str) -> list[str]:
    """The warning lines of a node's switch in the Diagnostics section."""
    diag = out.split("Diagnostics:", 1)[1] if "Diagnostics:" in out else ""
    return [line.strip() for line in diag.splitlines() if line.strip().startswith(f"warning: {node}: ")]


def test_preview_says_why_current_moves(make_nodes, make_deploy, repo):
    """Issue 19.7 and 19.10: a pinned release that already failed on the node, and a `current`
    moved by hand, are said on the node's line at preview, not just `current-switch update`."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    d.cli(["up", "--yes"])
    d.set(version="v2")
    up(d)  # v2 exits at start: marked failed on node1, v1 live again
    out = d.cli(["preview"]).stdout
    (said,) = _diagnostics(out, "node1")
    assert re.fullmatch(r"warning: node1: v2 failed here at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ \(exited at start "
                        r"\(makenotwork\.service [a-z-]+/[a-z-]+, restarted \d+ times by systemd\)\); "
                        r"this up tries it again", said), out
    d.set(version="v1")
    assert _diagnostics(d.cli(["preview"]).stdout, "node1") == []  # v1 is live: nothing to say
    d.cli(["up", "--yes"])
    node.exec("sh", "-c", "cd /opt/makenotwork && ln -sfn releases/v2 current.tmp && mv -T current.tmp current")
    out = d.cli(["preview"]).stdout
    assert _diagnostics(out, "node1") == ["warning: node1: current is on v2 by hand; pin is v1"], out


def test_a_preview_right_after_a_first_deploy_shows_no_change(make_nodes, make_deploy, repo):
    """A node just deployed has no previous version. A preview of the same pin changes nothing,
    outputs included: a None output reads as [unknown] in a preview, so it said `~ nodes` and
    `+ previousVersion: [unknown]` as if something would change."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    d.cli(["up", "--yes"])
    out = d.cli(["preview", "--diff"]).stdout
    assert "[unknown]" not in out and not re.search(r"^\s*[~+-] ", out, re.M), out
    assert d.outputs()["nodes"]["node1"]["previousVersion"] == "", d.outputs()


def _up_in_background(d) -> subprocess.Popen:
    """`pulumi up --yes` in a session of its own (as a terminal's process group: Ctrl-C reaches all of it)."""
    return subprocess.Popen([str(TOOLS / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack", d.name,
                             "--non-interactive"], cwd=d.project, env={**os.environ, **d.env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_outputs_after_a_hard_stop_during_the_restart_warning(make_nodes, make_deploy, repo):
    """Issue 19.9: Ctrl-C twice during the restart warning stops pulumi at once; the node goes on and
    switches. The next run's outputs say what that switch did (its time, the warning sent, the
    versions), not the previous switch's values or `not sent: nothing restarted`."""
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=6)
    d.set_secret("cliServiceToken", token)
    d.cli(["up", "--yes"])
    before = d.node_out(node)
    d.set(version="v3")
    proc = _up_in_background(d)
    wait_for(lambda: "restart-warning: received" in node.journal("makenotwork"), timeout=120)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # the second: pulumi stops at once, the switch in flight
    stopped = proc.communicate(timeout=60)[0]
    assert "after a second Ctrl-C, `pulumi up --refresh` picks up where each node stands" in stopped, stopped
    wait_for(lambda: node.served()["version"] == "v3", timeout=30)  # the node went on by itself
    d.cli(["cancel", "--yes"], check=False)  # the hard stop may leave the stack's lock
    again = d.cli(["up", "--yes", "--refresh"])  # as the Ctrl-C line says (issue 19.6)
    assert "pending operations" not in again.stdout + again.stderr, again.stdout  # Pulumi's generic text
    assert "interrupted while updating" not in again.stdout + again.stderr
    out = d.node_out(node)
    assert (out["liveVersion"], out["previousVersion"]) == ("v3", "v1")
    last = out["lastDeploy"]
    assert (last["version"], last["from"], last["result"], last["warning"]) == ("v3", "v1", "ok", "sent 6s")
    assert out["switchedAt"] == last["at"] != before["switchedAt"]
    assert out["restartWarning"] == f"sent 6s before the switch at {last['at']}"


def test_a_run_killed_outright_mid_switch_is_converged_by_a_plain_up(make_nodes, make_deploy, repo):
    """Issue 24: the state is written once per run (PULUMI_SKIP_CHECKPOINTS, scripts/env.sh), not
    after every step. A run killed outright during its switches (SIGKILL to pulumi and all it
    started: a crash, a lost terminal) leaves the state as the run before it left it; the nodes go
    on with the switch (the warning is out), and the next plain `pulumi up` reads them and converges,
    with no pending operations to explain (a write per step left the killed run's pending ones)."""
    token = "tok-" + os.urandom(8).hex()
    nodes = make_nodes(2, token=token)
    d = make_deploy(nodes, repo=repo, restartWarningSeconds=6)
    d.set_secret("cliServiceToken", token)
    d.cli(["up", "--yes"])
    d.set(version="v3")
    proc = _up_in_background(d)
    wait_for(lambda: all("restart-warning: received" in n.journal("makenotwork") for n in nodes), timeout=120)
    killed = Operator.stop(proc)  # SIGKILL to pulumi and every plugin it started (each in a group of its own)
    assert len(killed) >= 3  # the CLI, the language host and program, the dynamic provider
    for n in nodes:
        wait_for(lambda n=n: n.served()["version"] == "v3", timeout=30)  # each node went on by itself
    d.cli(["cancel", "--yes"], check=False)  # a killed run leaves the stack's lock
    again = d.cli(["up", "--yes"])
    assert "pending operations" not in again.stdout + again.stderr, again.stdout
    for n in nodes:
        out = d.node_out(n)
        assert (out["liveVersion"], out["previousVersion"], out["health"]) == ("v3", "v1", "ok"), out
        assert (out["lastDeploy"]["version"], out["lastDeploy"]["result"]) == ("v3", "ok")


def test_ctrl_c_during_the_restart_warning_says_what_goes_on(make_nodes, make_deploy, repo):
    """Issue 19.6 (and 19.5 in a log): the switch's line says when the restart comes, once; Ctrl-C
    during the warning says that the node still switches, when, and how to see the result; the
    node does so; the next run converges without Pulumi's pending-operations text."""
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=6)
    d.set_secret("cliServiceToken", token)
    d.cli(["up", "--yes"])
    d.set(version="v3")
    proc = _up_in_background(d)
    lines = []
    for line in proc.stdout:  # the operator reads the warning's line, then presses Ctrl-C
        lines.append(line.rstrip("\n"))
        if "restart warning sent; restarting at" in line and len(lines) and not proc.poll():
            assert "restart-warning: received" in node.journal("makenotwork")
            os.killpg(proc.pid, signal.SIGINT)
            break
    out = "\n".join(lines) + "\n" + proc.communicate(timeout=120)[0]
    status = [line for line in out.splitlines() if "node1-current-switch updating" in line
              and "restart warning sent; restarting at" in line]
    assert len(status) == 1, out  # a log gets one line of it
    at = re.search(r"; restart warning sent; restarting at (\d\d:\d\d:\d\d) UTC$", status[0]).group(1)
    assert _diagnostics(out, "node1") == [
        f"warning: node1: Ctrl-C does not stop this node: the restart warning is out, so it switches to v3 at {at} UTC "
        f"and checks its health on its own, whatever happens to this run. See the result with `sando status {d.name}`; "
        "after a second Ctrl-C, `pulumi up --refresh` picks up where each node stands"]
    for step in ("building v3: ", "sending v3: "):  # at most one line per step in a log (besides its done line)
        assert sum(step in line and " updating (" in line for line in out.splitlines()) <= 1, out
    wait_for(lambda: node.served()["version"] == "v3", timeout=30)
    started = datetime.fromtimestamp(node.restart_times("makenotwork")[-1], timezone.utc)
    said = datetime.combine(started.date(), datetime.strptime(at, "%H:%M:%S").time(), timezone.utc)
    assert -1 <= (started - said).total_seconds() <= 10  # it restarted when it said it would
    again = d.cli(["up", "--yes"])
    assert "pending operations" not in again.stdout + again.stderr
    assert d.node_out(node)["liveVersion"] == "v3"


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def test_progress_on_the_interactive_console(make_nodes, make_deploy, repo):
    """Issue 19.5: on a terminal, long steps show what they are doing as the resource's status: the
    build's own progress, the bytes sent, the restart warning and when the restart comes."""
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=3)
    d.set_secret("cliServiceToken", token)
    d.cli(["up", "--yes"])
    repo.version("v5")  # a commit no test built yet: this up builds it
    d.set(version="v5")
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(TOOLS / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack", d.name],
                            cwd=d.project, env={**os.environ, **d.env, "TERM": "xterm", "COLUMNS": "250"},
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    while True:
        if select.select([master], [], [], 1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    text = ANSI.sub("", seen.decode(errors="replace"))
    assert proc.returncode == 0, text
    # cargo draws its `n/N` bar only once a build has run for a while; its `Compiling x` line always
    assert re.search(r"building v5: Compiling \S+", text), text
    assert re.search(r"sending v5: \d+(\.\d)? [KM]B sent", text), text
    assert re.search(r"restart warning sent; restarting at \d\d:\d\d:\d\d UTC", text), text
    assert "Diagnostics:" not in text  # statuses only: nothing left for the end
    assert node.served()["version"] == "v5"


def test_a_failed_upload_is_said_once_and_the_outputs_do_not_look_deleted(make_nodes, make_deploy, repo):
    """Issue 19.3: a node whose upload fails (its disk is full) is said once, at the end, in its own
    words; its lines do not read as a success; the other node deploys; the run's outputs are shown
    as changed where they changed, never as deleted, and say where each node stands."""
    nodes = make_nodes(2)
    node1, node2 = nodes
    releases_dir = "/opt/makenotwork/releases"
    node1.exec("mkdir", "-p", releases_dir)
    node1.exec("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", releases_dir, check=True)
    d = make_deploy(nodes, repo=repo)
    d.cli(["up", "--yes"])
    node1.exec("sh", "-c", f"free=$(df -Pk {releases_dir} | awk 'NR==2 {{print $4}}'); "
                           f"head -c $(( (free - 200) * 1024 )) /dev/zero > {releases_dir}/.filler", check=True)
    d.set(version="v3")
    out = up(d)
    errors = d.errors(out)
    assert len(errors) == 1 and re.fullmatch(r"node1: releases/ has \d+ KB free, v3 needs \d+ (KB|MB); nothing was "
                                             r"sent\. .*", errors[0]), out
    assert sum(line.count("releases/ has ") for line in out.splitlines()) == 1, out  # said once
    assert "error: the deploy failed on node1:" in out
    for name in ("node1-release-files", "node1-current-switch"):
        done = [line for line in out.splitlines() if f"{name} updated" in line]
        assert done and all("warning: node1: v3 " in line for line in done), out
    outputs = out.split("\nOutputs:", 1)[1].split("\nResources:", 1)[0]
    assert not re.search(r"^\s+- ", outputs, re.M), outputs  # nothing looks deleted
    assert "~ nodes" in outputs
    outs = json.loads(d.cli(["stack", "output", "nodes", "--json"]).stdout)
    assert (outs["node1"]["liveVersion"], outs["node2"]["liveVersion"]) == ("v1", "v3")
    assert outs["node1"]["lastTransfer"]["version"] == "v1"
    node1.exec("rm", "-f", f"{releases_dir}/.filler", check=True)
    d.cli(["up", "--yes"])  # the fix: a re-run sends it and switches
    assert node1.served()["version"] == "v3"


def _branch(repo: AppRepo, name: str, rel: str, edit) -> str:
    """A branch of the repo with one host file edited (main stays as it is); its commit."""
    repo.git("checkout", "-q", "-b", name, "main")
    path = repo.path / rel
    path.write_text(edit(path.read_text()))
    repo.git("commit", "-q", "-am", name)
    repo.git("checkout", "-q", "main")
    return repo.commit(name)


def _outputs_section(out: str) -> str:
    assert "\nOutputs:" in out, out
    return out.split("\nOutputs:")[-1].split("\nResources:", 1)[0]


def test_a_failed_host_step_or_an_unreachable_node_is_said_once(make_nodes, make_deploy, repo):
    """Issue 19.3: a node whose host config fails (a Caddyfile put back after its reload, a unit
    `systemd-analyze verify` refuses in an up that skips its preview) or that cannot be reached in
    such an up: its failure is said once, at the end, in its own words; its lines carry a warning
    instead of reading as a success; its pointer does not switch (the last good release and host
    config stay live); the run's outputs are not shown as deleted and say where the node stands."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, healthCheck={"timeoutSeconds": 5, "intervalSeconds": 0.2,
                                                    "expectVersion": True, "caddyUrl": node.caddyUrl})
    d.cli(["up", "--yes"])
    good = node.path("/etc/caddy/Caddyfile").read_text()
    typo = _branch(repo, "host-typo", "server/deploy/Caddyfile",
                   lambda t: t.replace("{$MNW_UPSTREAM:127.0.0.1:3000}", "{$MNW_UPSTREAM:127.0.0.1:3001}"))
    _branch(repo, "host-bogus", "server/deploy/makenotwork.service", lambda t: t.replace("Type=simple", "Type=bogus"))

    def said_once(out: str, words: str) -> str:
        update = out.split("\nUpdating (", 1)[-1]  # the preview's Diagnostics are its notes
        (msg,) = d.errors(update)
        assert words in msg, out
        console = update.replace(_outputs_section(out), "")  # the outputs say it too: the node's hostConfig
        assert sum(line.count(words) for line in console.splitlines()) == 1, out  # once, in the Diagnostics
        assert "error: the deploy failed on node1:" in out
        assert not re.search(r"^  - ", _outputs_section(out), re.M), out  # no output looks deleted
        return msg

    def lines(out: str, name: str) -> list[str]:
        return [line for line in out.split("Updating (", 1)[1].splitlines() if f"{name} updated" in line]

    # 1. a plain up: Caddy takes the new Caddyfile but the site through it fails: put back, v3 not switched to
    d.set(version="v3", bootstrap={"ref": "host-typo"})
    out = up(d)
    msg = said_once(out, "was not taken")
    assert msg == (f"node1: server/deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref host-typo "
                   f"({typo[:12]}) was not taken: the site through Caddy ({node.caddyUrl}) is not healthy with the new "
                   "Caddyfile; the previous /etc/caddy/Caddyfile is back"), msg
    for name, warning in (("node1-host", "host config not applied"), ("node1-current-switch", "v3 did not go live here")):
        done = lines(out, name)
        assert done and all(f"warning: node1: {warning} (the error at the end says why)" in line for line in done), out
    assert "~ nodes" in _outputs_section(out)
    outs = d.node_out(node)
    assert (outs["liveVersion"], outs["health"]) == ("v1", "not checked: its host config failed")
    assert outs["hostConfig"]["actions"] == [f"failed: {msg}"]
    assert outs["hostConfig"]["files"]["caddyfile"]["sha256"] == hashlib.sha256(good.encode()).hexdigest()
    assert node.path("/etc/caddy/Caddyfile").read_text() == good and node.served()["version"] == "v1"

    # 2. an up that skips its preview: the unit systemd-analyze refuses, found by the update's own diff
    d.set(bootstrap={"ref": "host-bogus"})
    res = d.cli(["up", "--yes", "--skip-preview"], check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert said_once(out, "fails systemd-analyze verify").startswith(
        "node1: server/deploy/makenotwork.service -> /etc/systemd/system/makenotwork.service at sando:bootstrap.ref "
        "host-bogus"), out
    assert "Type=simple" in node.path("/etc/systemd/system/makenotwork.service").read_text()
    assert node.served()["version"] == "v1"

    # 3. the node cannot be reached, in an up that skips its preview: said once, its outputs stay
    d.set(nodes=[node.config() | {"port": 2222}])  # nothing listens there
    res = d.cli(["up", "--yes", "--skip-preview"], check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert said_once(out, "cannot connect") == (
        f"node1 (root@{node.host}:2222): cannot connect: Connection refused (check the node's host and port in "
        "sando:nodes and that sshd runs there)")
    assert "Resource monitor has terminated" not in out
    for name, warning in (("node1-reach", "not reached"), ("node1-current-switch", "not reached, nothing changed here")):
        assert [line for line in out.splitlines() if f"{name} " in line and f"warning: node1: {warning} (the error at "
                "the end says why)" in line], out
    assert d.node_out(node)["liveVersion"] == "v1"

    # fixed: the next up converges
    d.set(nodes=[node.config()], bootstrap={"ref": "main"})
    d.cli(["up", "--yes"])
    assert node.served()["version"] == "v3"
    assert d.node_out(node)["hostConfig"]["actions"] == []
