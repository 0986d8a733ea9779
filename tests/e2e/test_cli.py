"""The operator commands through the real engine, two stacks (testnot, prod) of one project on
real-systemd nodes: promote moves exactly testnot's commit, status reads every node now,
rollback goes back one version with no upload, a moved tag is refused (issues 10 and 20)."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import shutil
import stat
from pathlib import Path


from sando_components import cli, times
from tests.support import TOOLS, AppRepo, run_preview, run_up

ME = f"{getpass.getuser()}@{socket.gethostname()}"


def history_of(node) -> list[dict]:
    """The node's switch history (<releaseRoot>/.sando/history), one dict per line."""
    path = node.release_root / ".sando" / "history"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
    assert code == 2 and "--to: v9 is not retained on any node (retained: node2: v1, v2)" in said


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


def test_status_reads_every_node_now(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.1: status says what the nodes do now, not what the last run's outputs said: a
    service stopped by hand, a `current` moved by hand, an unreachable node (one line, why)."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    a, b = make_nodes(2)
    d = make_deploy([a, b], repo=repo)
    run_up(d)
    d.set(version="v2")
    run_up(d)

    a.exec("ln", "-sfn", "/usr/share/zoneinfo/Asia/Tokyo", "/etc/localtime", check=True)  # a node not on UTC
    code, said = sando(d.project, "status", d.name, "--json")
    assert code == 0, said
    [st] = json.loads(sando.out)["stacks"]
    assert (st["stack"], st["version"], st["commit"]) == (d.name, "v2", repo.commit("v2"))
    na = st["nodes"][0]
    since = a.exec("systemctl", "show", "-p", "ActiveEnterTimestamp", "--value", "--timestamp=unix", "makenotwork",
                   check=True).stdout.strip()  # "@1796508757"
    assert na["unitSince"] == times.iso(since.lstrip("@")), (na["unitSince"], since)  # UTC, sando's one format
    assert (na["node"], na["reachable"], na["liveVersion"], na["previousVersion"], na["liveCommit"]) == (
        a.name, True, "v2", "v1", repo.commit("v2"))
    assert na["unit"] == "active running" and na["health"]["ok"] and na["health"]["says"] == "ok (serves v2)", na
    assert na["caddy"] == "active" and na["caddyHealth"]["ok"], na
    assert na["appliedMigrations"] == ["1 init"] and na["pendingMigrations"] == [], na  # the app applied it
    assert na["freeKiB"] > 0 and na["releases"][0]["createdAt"].endswith("Z")
    assert na["lastDeploy"] | {"at": None} == {"at": None, "version": "v2", "commit": repo.commit("v2"), "from": "v1",
                                               "result": "ok", "by": ME, "via": "pulumi up",
                                               "warning": "none configured"}

    # by hand: a's service stopped, b's `current` moved back to v1 (as a broken-off deploy leaves it)
    a.exec("systemctl", "stop", "makenotwork", check=True)
    b.exec("sh", "-c", "cd /opt/makenotwork && ln -sfn releases/v1 current", check=True)
    code, said = sando(d.project, "status", d.name)
    assert code == 0, said
    rows = {line.split()[1]: line for line in said.splitlines()[1:]}
    assert rows[a.name].split()[2:6] == ["v2", "v1", repo.commit("v2")[:7], "inactive"], said
    assert "no answer" in rows[a.name], said
    assert rows[b.name].split()[2:4] == ["v1", "(pin"] and "ok (serves v2)" in rows[b.name], said
    assert f"v2 {na['lastDeploy']['at'][:16]}Z by {ME} (pulumi up)" in rows[a.name], said

    # unreachable: sshd stopped, and the connection sando's keeper holds (its sshd outlives the
    # service's stop, in the login session's scope) ended, as with a node gone down
    b.exec("sh", "-c", "systemctl stop ssh && pkill -KILL -f 'sshd: root@[n]otty'; true", check=True)
    try:
        code, said = sando(d.project, "status", d.name)
    finally:
        b.exec("systemctl", "start", "ssh", check=True)
    assert code == 1, said
    line = next(line for line in said.splitlines() if line.split()[:2] == [d.name, b.name])
    assert "unreachable: cannot connect:" in line and "Connection refused" in line, said
    assert f"could not read {d.name}/{b.name}" in said


def test_each_switch_is_recorded_on_the_node_and_in_the_outputs(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.2: who switched what, when and how: on the node (.sando/history, 0600) and in the
    outputs, for a plain `pulumi up`, `sando promote` and `sando rollback`; how a run was started
    is no diff by itself."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t_node, p_node = make_nodes(2)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project)
    run_up(testnot)
    run_up(prod)
    [line] = history_of(t_node)
    assert line | {"at": None} == {"at": None, "version": "v1", "commit": repo.commit("v1"), "from": "",
                                   "result": "ok", "by": ME, "via": "pulumi up", "warning": "none configured"}
    assert line["at"].endswith("Z") and line["at"][:4] == "20" + line["at"][2:4]
    assert stat.S_IMODE((t_node.release_root / ".sando" / "history").stat().st_mode) == 0o600
    assert testnot.node_out(t_node)["lastDeploy"] == line

    testnot.stack.workspace.env_vars["SANDO_VIA"] = "something else"  # how: not a diff by itself
    _, changed = run_up(testnot)
    assert changed == {} and len(history_of(t_node)) == 1, changed
    del testnot.stack.workspace.env_vars["SANDO_VIA"]

    testnot.set(version="v2")
    run_up(testnot)
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    code, said = sando(testnot.project, "rollback", "-s", prod.name, "--yes")
    assert code == 0, said
    lines = history_of(p_node)
    assert [(h["version"], h["from"], h["via"], h["by"]) for h in lines] == [
        ("v1", "", "pulumi up", ME), ("v2", "v1", "sando promote", ME), ("v1", "v2", "sando rollback", ME)]
    assert prod.node_out(p_node)["lastDeploy"] == lines[-1]
    code, said = sando(testnot.project, "status", prod.name)
    assert f"by {ME} (sando rollback)" in said, said


def test_rollback_walks_back_through_good_versions(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.3/20.4: v1, v2, crash1 (failed: v2 live again, pinned crash1): the rollback pins v2,
    what runs, restarting nothing; then v4, v5: rollbacks go to v4, then v2 (not forward to v5);
    never onto crash1 without --allow-failed; a release removed by hand is said to be sent, and is."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    [n] = make_nodes(1)
    d = make_deploy([n], repo=repo, healthCheck={"timeoutSeconds": 3, "intervalSeconds": 0.2, "expectVersion": True})
    run_up(d)
    d.set(version="v2")
    run_up(d)
    repo.version("crash1", ("crash-at-start",))
    d.set(version="crash1")
    d.up_fails()
    assert n.served()["version"] == "v2"

    starts = len(n.restart_times())
    code, said = sando(d.project, "rollback", "-s", d.name, "--yes")
    assert code == 0, said
    assert "every node runs v2 but the stack pins crash1" in said and "nothing restarts" in said, said
    assert d.stack.get_config("sando:version").value == "v2" and len(n.restart_times()) == starts

    for v in ("v4", "v5"):
        repo.version(v, ("fix",))
        d.set(version=v)
        run_up(d)
    code, said = sando(d.project, "rollback", "-s", d.name, "--yes")
    assert code == 0 and "back from v5 to v4" in said and n.served()["version"] == "v4", said
    code, said = sando(d.project, "rollback", "-s", d.name, "--yes")
    assert code == 0 and "back from v4 to v2" in said and n.served()["version"] == "v2", said
    assert [h["via"] for h in history_of(n)][-2:] == ["sando rollback", "sando rollback"]

    code, said = sando(d.project, "rollback", "-s", d.name, "--to", "crash1", "--yes")
    assert code == 1 and "crash1 failed on node1" in said and "--allow-failed" in said, said
    assert n.served()["version"] == "v2"

    n.exec("rm", "-rf", "/opt/makenotwork/releases/v1", check=True)
    code, said = sando(d.project, "rollback", "-s", d.name, "--yes")
    assert code == 0, said
    assert "back from v2 to v1" in said and "not retained on node1: it is built and sent there" in said, said
    assert n.served()["version"] == "v1" and d.node_out(n)["lastTransfer"]["bytesSent"] > 0


def test_rollback_with_a_new_node_and_promote_from_a_stopped_source(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.7: a node added later (no earlier version) does not block the fleet's rollback: it
    is sent the target, and said so. Issue 20.3: promote reads the source's nodes now: a service
    stopped by hand (the outputs still say healthy) is refused."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t, p1, p2 = make_nodes(3)
    testnot = make_deploy([t], repo=repo, version="v2")
    prod = make_deploy([p1], repo=repo, project=testnot.project)
    prod.set_secret("sshPrivateKey", Path(t.privateKeyPath).read_text())  # node1's key is in every node
    run_up(testnot)
    run_up(prod)
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    prod.set(nodes=[p1.config(), p2.config()])
    run_up(prod)  # p2 joins on v2
    code, said = sando(testnot.project, "rollback", "-s", prod.name, "--yes")
    assert code == 0, said
    assert f"back from v2 to v1" in said and f"retained on {p1.name}: nothing sent there; not retained on " \
        f"{p2.name}: it is built and sent there" in said, said
    assert p1.served()["version"] == p2.served()["version"] == "v1"
    assert prod.node_out(p1)["lastTransfer"]["bytesSent"] == 0 < prod.node_out(p2)["lastTransfer"]["bytesSent"]

    t.exec("systemctl", "stop", "makenotwork", check=True)
    assert testnot.node_out(t)["health"] == "ok"  # what the outputs still say
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1, said
    assert f"{testnot.name} is not promotable (read from its nodes now): {t.name}'s service is inactive" in said
    assert p1.served()["version"] == "v1"


def test_now_skips_the_restart_warning_and_says_by_whom(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.6: `--now` sends no restart warning for that run and does not wait out the notice
    (history and outputs say it was skipped, by whom); without it the console counts down."""
    import time

    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    token = "tok-" + os.urandom(8).hex()
    t, p = make_nodes(2, token=token)
    testnot = make_deploy([t], repo=repo, version="v2")
    prod = make_deploy([p], repo=repo, project=testnot.project, restartWarningSeconds=30)
    prod.set_secret("cliServiceToken", token)
    prod.set_secret("sshPrivateKey", Path(t.privateKeyPath).read_text())
    run_up(testnot)
    run_up(prod)  # v1 (nothing ran yet: no one to warn)
    received = len(re.findall(r"restart-warning: received", p.journal("makenotwork")))

    started = time.monotonic()
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes", "--now")
    assert code == 0, said
    assert time.monotonic() - started < 30  # the 30 s notice was not waited out
    assert len(re.findall(r"restart-warning: received", p.journal("makenotwork"))) == received
    assert history_of(p)[-1]["warning"] == f"skipped (--now) by {ME}"
    assert prod.node_out(p)["restartWarning"] == f"skipped (--now) by {ME}"
    assert "no warning" in sando(testnot.project, "status", prod.name)[1]

    code, said = sando(testnot.project, "rollback", "-s", prod.name, "--yes", tty=True)
    assert code == 0, said
    assert "users get 30s notice before each restart (--now skips it)" in said
    assert "restart warning: up to 30s before the restart" in said and "up to 25s" in said, said
    assert len(re.findall(r"restart-warning: received", p.journal("makenotwork"))) == received + 1
    assert history_of(p)[-1]["warning"] == "sent 30s"


def test_logs_ssh_and_restart_with_the_stacks_key(make_nodes, make_deploy, sando, engine, tmp_path):
    """Issue 20.8: the service's journal (one node, every node, followed), a command and an
    interactive shell on a node, a restart with the restart warning (--now without), all with the
    stack's key and pinned host key from its config."""
    import pty
    import select
    import subprocess
    import sys
    import time

    token = "tok-" + os.urandom(8).hex()
    a, b = make_nodes(2, token=token)
    d = make_deploy([a, b], restartWarningSeconds=2)
    d.set_secret("cliServiceToken", token)
    run_up(d)

    a.exec("ln", "-sfn", "/usr/share/zoneinfo/Asia/Tokyo", "/etc/localtime", check=True)  # a node not on UTC
    code, said = sando(d.project, "logs", "-s", d.name, a.name, "-n", "3")
    assert code == 0 and said.count("\n") == 3 and "makenotwork v1" in said, said
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000 ", line) for line in said.splitlines()), said  # UTC
    started = a.exec("journalctl", "-u", "makenotwork", "-o", "short-unix", "-n", "1", "--grep", "listening on",
                     check=True).stdout.split()[0]  # epoch seconds of the last start
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(float(started))))
    code, said = sando(d.project, "logs", "-s", d.name, a.name, "--since", since)  # a time in UTC
    assert code == 0 and "listening on" in said, (since, said)
    later = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(float(started)) + 3600))
    code, said = sando(d.project, "logs", "-s", d.name, a.name, "--since", later)  # an hour after it: nothing
    assert code == 0 and "listening on" not in said, (later, said)
    code, said = sando(d.project, "logs", "-s", d.name, "--since", "1 hour ago")
    assert code == 0 and f"{a.name} | " in said and f"{b.name} | " in said and "listening on" in said, said
    code, said = sando(d.project, "logs", "-s", d.name, "node9")
    assert code == 2 and "NODE: no node 'node9'" in said

    code, said = sando(d.project, "ssh", "-s", d.name, b.name, "--", "cat /etc/hostname; exit 3")
    assert code == 3 and said.strip() == b.exec("cat", "/etc/hostname").stdout.strip(), said

    env = {**os.environ, **engine, "PATH": f"{TOOLS / 'bin'}:{os.environ['PATH']}"}
    sando_cmd = [sys.executable, "-m", "sando_components.cli", "--cwd", str(d.project)]

    def pty_session(*argv, send: bytes, until: bytes, timeout: float = 60) -> bytes:
        master, slave = pty.openpty()
        proc = subprocess.Popen([*sando_cmd, *argv], stdin=slave, stdout=slave, stderr=slave, env=env,
                                cwd=str(Path(cli.__file__).parents[1]))
        os.close(slave)
        seen, deadline, sent = b"", time.monotonic() + timeout, False
        while until not in seen and time.monotonic() < deadline:
            if not sent and seen.rstrip().endswith(b"#"):  # the node's shell prompts: type
                os.write(master, send)
                sent = True
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        proc.terminate()
        proc.wait(timeout=30)
        os.close(master)
        return seen

    seen = pty_session("ssh", "-s", d.name, a.name, send=b"tty && echo in-$((40 + 2))\nexit\n", until=b"in-42")
    assert b"in-42" in seen and b"/dev/pts/" in seen, seen  # a shell on a pty on the node

    started = len(a.restart_times())
    code, said = sando(d.project, "restart", "-s", d.name, a.name, "--yes")
    assert code == 0, said
    assert re.search(rf"{a.name}: restarted, healthy now \(warning: sent at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ, "
                     r"2s before the restart\)\n", said), said  # not the node's raw epoch
    assert len(a.restart_times()) == started + 1 and len(b.restart_times()) == 1
    assert len(re.findall(r"restart-warning: received", a.journal("makenotwork"))) == 1
    last = history_of(a)[-1]
    assert (last["result"], last["via"], last["by"], last["version"], last["warning"]) == (
        "restarted", "sando restart", ME, "v1", "sent 2s")

    code, said = sando(d.project, "restart", "-s", d.name, "--yes", "--now")
    assert code == 0 and said.count("restarted, healthy now (warning: skipped (--now))") == 2, said
    assert len(re.findall(r"restart-warning: received", a.journal("makenotwork"))) == 1
    assert history_of(b)[-1]["warning"] == f"skipped (--now) by {ME}"

    # follow: what the node logs after the start is printed as it comes
    proc = subprocess.Popen([*sando_cmd, "logs", "-s", d.name, a.name, "-f", "-n", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(Path(cli.__file__).parents[1]))
    try:
        deadline = time.monotonic() + 60  # connected and following: its journalctl runs on the node
        while a.exec("pgrep", "-x", "journalctl").returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.2)
        a.exec("systemctl", "restart", "makenotwork", check=True)
        deadline, seen = time.monotonic() + 60, b""
        while b"listening on" not in seen and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert b"listening on" in seen, seen
        # sando killed outright: the node's journalctl ends with it, although the quiet unit gives
        # it no line to write (no pty, so sshd signals nothing: journalctl -f watches its stdout
        # for the reader's end itself, systemd 252)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while a.exec("pgrep", "-x", "journalctl").returncode == 0:
            assert time.monotonic() < deadline, "journalctl still runs on the node after its sando was killed"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_rollback_across_applied_migrations_names_them_and_the_backup(make_nodes, make_deploy, sando, tmp_path):
    """Issue 20.5: the database is ahead of the rollback target by a destructive migration: the
    rollback names it, says it is destructive, names the pre-migration backup and the exact
    command to restore it, and --yes alone does not pass (--accept-destructive does); the command
    it printed restores the database."""
    import shlex

    repo = AppRepo(tmp_path / "app")
    repo.version("v3", ("destructive-migration",))
    [n] = make_nodes(1)
    d = make_deploy([n], repo=repo)
    run_up(d)  # v1: its start creates the database, migration 1
    d.set(version="v3")
    run_up(d)  # the gate backs the database up, v3's start applies migration 2 (a DROP TABLE)
    backups = sorted(p.name for p in n.path("/var/backups/makenotwork").iterdir())
    assert len(backups) == 1 and backups[0].startswith("pre-v3-"), backups

    d.set(version="v1")  # a manual pin: its preview says the same
    run_preview(d)
    shown = "\n".join(d.log)
    assert re.search(r"node1: the database \(\S+\) is ahead of v1 by migration\(s\) 2 .+?; DESTRUCTIVE: 2 .+?\. "
                     rf"The backup from before them: /var/backups/makenotwork/{backups[0]}; to restore it after the "
                     rf"rollback: sando ssh -s {d.name} node1 -- 'systemctl stop makenotwork && ", shown), shown
    d.set(version="v3")

    code, said = sando(d.project, "rollback", "-s", d.name, "--yes")
    assert code == 1, said
    m = re.search(r"WARNING node1: the database \((\S+)\) is ahead of v1 by migration\(s\) 2 (.+?); DESTRUCTIVE: 2 .+?\. "
                  r"The backup from before them: (\S+); to restore it after the rollback: "
                  rf"sando ssh -s {d.name} node1 -- (.+)\n", said)
    assert m and m.group(3) == f"/var/backups/makenotwork/{backups[0]}", said
    assert "not rolled back" in said and "--accept-destructive" in said
    assert n.served()["version"] == "v3"

    code, said = sando(d.project, "rollback", "-s", d.name, "--yes", "--accept-destructive")
    assert code == 0 and n.served()["version"] == "v1", said

    code, said = sando(d.project, "ssh", "-s", d.name, "node1", "--", *shlex.split(m.group(4)))
    assert code == 0, said
    applied = n.exec("sqlite3", m.group(1), "SELECT version FROM _sqlx_migrations", check=True).stdout.split()
    assert applied == ["1"] and n.served()["version"] == "v1"


def test_a_new_nodes_empty_database_passes_the_destructive_gate_with_a_note(make_nodes, make_deploy, tmp_path):
    """Issue 20.7: on a brand-new node (no database yet: no data to destroy) a release with a
    destructive migration passes sando:migrations.refuseDestructive, with a note; once the
    database holds data, the next destructive one is refused again."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2", ("destructive-migration",))
    repo.version("v3", ("good-migration",), ("destructive-migration",))
    [n] = make_nodes(1)
    d = make_deploy([n], repo=repo, version="v2", migrations={"refuseDestructive": True})
    run_up(d)
    assert n.served()["version"] == "v2"
    assert "empty (a new node): nothing to destroy" in d.node_out(n)["migrations"]["note"]
    d.set(version="v3")
    said = d.up_fails()
    assert "has destructive migrations pending" in said and n.served()["version"] == "v2", said


def _caddy_room(*nodes) -> None:
    """The test nodes share the host's uids, and Debian's caddy.service has LimitNPROC=512: the caddy
    threads of every test node on the machine count against one limit, so with a few dozen nodes
    running (other test runs) a node's caddy cannot start a thread or a reload (EAGAIN). These tests
    are not about that limit: lift it on their own nodes (a drop-in, and caddy restarted under it)."""
    for n in nodes:
        n.unit_dropin("sando-test-nproc", "[Service]\nLimitNPROC=infinity", unit="caddy")
        n.exec("systemctl", "restart", "caddy", check=True)


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_promote_ships_the_sources_exact_bytes_or_refuses(make_nodes, make_deploy, sando, monkeypatch, tmp_path):
    """Issue 22.1: operator A deployed v2 to testnot; operator B (a build cache of their own, and a
    toolchain flag that changes the binaries) promotes it: prod gets testnot's own bytes (fetched
    from testnot's node), not B's build. A node joining prod later, deployed by a plain `pulumi up`
    of B's, whose build differs: refused before a byte is sent, naming the files and both sums."""
    repo = AppRepo(tmp_path / "app")
    repo.version("v2")
    t_node, p_node, p2_node = make_nodes(3)
    _caddy_room(t_node, p_node, p2_node)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project)
    prod.set_secret("sshPrivateKey", Path(t_node.privateKeyPath).read_text())  # node1's key is in every node
    run_up(testnot)
    run_up(prod)
    testnot.set(version="v2")
    run_up(testnot)
    tested = json.loads((t_node.release_root / "releases" / "v2" / ".sando" / "manifest.json").read_text())["files"]
    assert len(tested) == 5  # two binaries, three error pages

    cache_b = tmp_path / "operator-b-cache"  # operator B: another cache, another toolchain flag
    monkeypatch.setenv("SANDO_CACHE_DIR", str(cache_b))
    monkeypatch.setenv("RUSTFLAGS", "-C debuginfo=1")
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    rel = p_node.release_root / "releases" / "v2"
    assert {f: _sha(rel / f) for f in tested} == tested  # byte-identical to what testnot runs
    assert f"{prod.name} gets {testnot.name}'s own bytes: 5 files" in said
    assert p_node.served()["version"] == "v2"
    assert not (cache_b / "builds" / repo.commit("v2")).exists()  # B built nothing

    # a node joins prod, deployed by B's plain `pulumi up` with an empty cache: B's build differs
    shutil.rmtree(cache_b)
    prod.env = {**prod.env, "SANDO_CACHE_DIR": str(cache_b), "RUSTFLAGS": "-C debuginfo=1"}
    prod.stack.workspace.env_vars.update({"SANDO_CACHE_DIR": str(cache_b), "RUSTFLAGS": "-C debuginfo=1"})
    prod.nodes = [p_node, p2_node]
    prod.set(nodes=[p_node.config(), p2_node.config()])
    text = prod.up_fails()
    built_b = cache_b / "builds" / repo.commit("v2") / "artifacts"
    (error,) = [e for e in prod.errors(text) if e.startswith("node3:")] or [text[text.find("Diagnostics"):][:3000]]
    assert error.startswith(f"node3: v2 ({repo.commit('v2')[:12]}) built here is not byte-identical to what "
                            f"{testnot.name} runs: "), error
    for b in ("makenotwork", "mnw-admin"):
        assert _sha(built_b / b) != tested[b]
        assert f"{b}: built here {_sha(built_b / b)}, on {testnot.name} {tested[b]}" in error
    assert "error-pages/404.html:" not in error  # the same bytes: not named
    assert f"Run `sando promote --from {testnot.name}` (it fetches {testnot.name}'s bytes)" in error
    assert not (p2_node.release_root / "releases" / "v2").exists()  # not a byte
    assert p_node.served()["version"] == "v2"

    # as the message says: promote again, and the new node gets testnot's bytes too
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    rel = p2_node.release_root / "releases" / "v2"
    assert {f: _sha(rel / f) for f in tested} == tested


def test_a_manual_pin_is_checked_against_the_stack_it_must_match(make_nodes, make_deploy, tmp_path):
    """Issue 22.1, a manual pin: prod sets sando:verifyAgainst: testnot and is deployed by a plain
    `pulumi up` of a pin, no promote. Testnot's commit, built alike: deployed, its `bytes` output says
    it matches testnot. Built by operator B (another cache, another toolchain flag): refused naming
    the files and both sums, nothing sent. A commit testnot does not run: refused at preview, one
    line. A rollback by pin to a release prod holds already: deployed."""
    repo = AppRepo(tmp_path / "app")
    for v in ("v2", "v3", "v4"):
        repo.version(v)
    t_node, p_node = make_nodes(2)
    _caddy_room(t_node, p_node)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project, verifyAgainst=testnot.name)
    run_up(testnot)
    run_up(prod)  # v1 on both, one build (operator A's)
    testnot.set(version="v2")
    run_up(testnot)
    prod.set(version="v2")
    run_up(prod)
    assert p_node.served()["version"] == "v2"
    assert prod.node_out(p_node)["bytes"] == f"match the pinned build (verified on {testnot.name})"

    # operator B pins what testnot runs now; B's build differs
    testnot.set(version="v3")
    run_up(testnot)
    tested = json.loads((t_node.release_root / "releases" / "v3" / ".sando" / "manifest.json").read_text())["files"]
    cache_b = tmp_path / "operator-b-cache"
    prod.stack.workspace.env_vars.update({"SANDO_CACHE_DIR": str(cache_b), "RUSTFLAGS": "-C debuginfo=1"})
    prod.set(version="v3")
    text = prod.up_fails()
    built_b = cache_b / "builds" / repo.commit("v3") / "artifacts"
    (error,) = prod.errors(text) or [text[text.find("Diagnostics"):][:3000]]
    assert error.startswith(f"node2: v3 ({repo.commit('v3')[:12]}) built here is not byte-identical to what "
                            f"{testnot.name} runs: "), error
    for b in ("makenotwork", "mnw-admin"):
        assert _sha(built_b / b) != tested[b]
        assert f"{b}: built here {_sha(built_b / b)}, on {testnot.name} {tested[b]}" in error
    assert "error-pages/404.html:" not in error  # the same bytes: not named
    assert f"Run `sando promote --from {testnot.name} --to {prod.name}`" in error
    assert not (p_node.release_root / "releases" / "v3").exists()  # not a byte
    assert p_node.served()["version"] == "v2"

    # a commit testnot never ran: refused at preview, in one line
    prod.set(version="v4")
    res = prod.cli(["preview"], check=False, env={"SANDO_CACHE_DIR": str(cache_b), "RUSTFLAGS": "-C debuginfo=1"})
    assert res.returncode != 0
    refusal = (
        f"node2: sando:version v4 ({repo.commit('v4')[:12]}) is not what {testnot.name} runs (sando:verifyAgainst: "
        f"{testnot.name}; {testnot.name} runs v3 ({repo.commit('v3')[:12]}) on node1) and this node does not hold "
        f"it; nothing was sent: deploy it to {testnot.name} first, then `sando promote --from {testnot.name} --to "
        f"{prod.name}`")
    assert prod.errors(res.stdout + res.stderr) == [refusal], res.stdout + res.stderr
    assert not (cache_b / "builds" / repo.commit("v4")).exists()  # not even built
    # an up that skips its preview (the Automation API): the same words, once; the outputs still recorded
    text = prod.up_fails()
    assert prod.errors(text) == [refusal], text[text.find("Diagnostics"):][:3000]
    assert "warning: node2: v4 refused here" in text
    assert prod.node_out(p_node)["liveVersion"] == "v2" and p_node.served()["version"] == "v2"
    assert not (p_node.release_root / "releases" / "v4").exists() and not (cache_b / "builds" / repo.commit("v4")).exists()

    # a rollback by pin to a release prod holds (its bytes were checked when it shipped): deployed
    prod.set(version="v1")
    run_up(prod)
    assert p_node.served()["version"] == "v1"
    assert prod.node_out(p_node)["lastTransfer"]["bytesSent"] == 0


def test_promote_shows_the_gate_first_and_refuses_before_the_up(make_nodes, make_deploy, sando, tmp_path):
    """Issue 19.8: testnot (destructive migrations allowed) applies v2's destructive migration with a
    warning naming it; promoting v2 to prod (refuseDestructive) shows prod's gate verdict and refuses
    before any preview or up: prod's pin, node and release dir untouched."""
    from sando_components.migrations import of_release

    repo = AppRepo(tmp_path / "app")
    repo.version("v2", ("destructive-migration",))
    [drop] = [f"{m.version} {m.description}" for m in of_release(str(repo.path), repo.commit("v2"), "server/migrations")
              if m.destructive]
    t_node, p_node = make_nodes(2)
    _caddy_room(t_node, p_node)
    testnot = make_deploy([t_node], repo=repo)
    prod = make_deploy([p_node], repo=repo, project=testnot.project, migrations={"refuseDestructive": True})
    run_up(testnot)
    run_up(prod)
    testnot.set(version="v2")
    run_up(testnot)
    said = "\n".join(testnot.log)
    assert f"warning: node1: v2 applied the destructive migration {drop} (drops a table or column); the backup " \
           "before it: /var/backups/makenotwork/pre-v2-" in said, said

    yaml_before = (testnot.project / f"Pulumi.{prod.name}.yaml").read_text()
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1, said
    assert (f"sando: migration gate on {prod.name} for v2: {prod.name} refuses destructive migrations "
            f"(sando:migrations.refuseDestructive) and v2 is not in sando:migrations.allowDestructive\n"
            f"  node2: pending {drop}; destructive: {drop}\n") in said, said
    assert (f"sando: {prod.name} would refuse v2: destructive migrations pending on node2 ({drop}), and {prod.name} "
            "refuses them (sando:migrations.refuseDestructive); nothing was changed.") in said
    assert "preview of" not in said and "Updating" not in said  # refused before the preview and the up
    assert (testnot.project / f"Pulumi.{prod.name}.yaml").read_text() == yaml_before
    assert not (p_node.release_root / "releases" / "v2").exists() and p_node.served()["version"] == "v1"

    # allowed for v2, but the up fails before any node switched (the restart warning is refused and
    # prod aborts then): the pins are put back, and promote says so
    prod.set(migrations={"refuseDestructive": True, "allowDestructive": ["v2"]}, restartWarningSeconds=1,
             restartWarningOnFailure="abort")
    prod.set_secret("cliServiceToken", "not-the-nodes-token")
    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 1, said
    assert f"{prod.name} allows them for v2 (sando:migrations.allowDestructive)" in said
    assert f"no node of {prod.name} switched: its sando:version is back to v1 (nothing to commit)" in said, said
    config = prod.stack.get_all_config()
    assert config["sando:version"].value == "v1" and "sando:verifiedBuild" not in config
    assert json.loads(config["sando:bootstrap"].value) == {"ref": "main"}  # the host-config pin put back too
    assert p_node.served()["version"] == "v1"


def test_status_and_outputs_flag_a_node_whose_bytes_differ_from_its_peers(make_nodes, make_deploy, sando, tmp_path):
    """Issue 22.5: operator A deploys v1 to node1; operator B (another cache, another toolchain flag)
    adds node2 with a plain `pulumi up`: node2 runs v1 with other bytes. The outputs say so per node,
    and `sando status` flags node2."""
    repo = AppRepo(tmp_path / "app")
    n1, n2 = make_nodes(2)
    _caddy_room(n1, n2)
    prod = make_deploy([n1], repo=repo)
    run_up(prod)
    assert prod.node_out(n1)["bytes"] == "match the pinned build (as recorded for node1)"
    prod.stack.workspace.env_vars.update({"SANDO_CACHE_DIR": str(tmp_path / "operator-b-cache"),
                                          "RUSTFLAGS": "-C debuginfo=1"})
    prod.nodes = [n1, n2]
    prod.set(nodes=[n1.config(), n2.config()])
    run_up(prod)
    assert prod.node_out(n1)["bytes"] == "match the pinned build (as recorded for node1)"
    out2 = prod.node_out(n2)
    b_builds = sorted(p.name for p in (tmp_path / "operator-b-cache" / "builds").glob("*"))  # what B built, if anything
    assert out2["bytes"] == "differ from the pinned build (as recorded for node1): makenotwork, mnw-admin", (
        out2["sha256"], prod.node_out(n1)["sha256"], b_builds, repo.commit("v1"))  # CI saw "match" once: why?
    code, said = sando(prod.project, "status", prod.name)
    assert code == 0, said
    rows = [line.split() for line in said.splitlines()]
    assert any(r[:3] == [prod.name, "node1", "v1"] for r in rows), said
    assert any(r[:5] == [prod.name, "node2", "v1", "(other", "bytes!)"] for r in rows), said
    assert (f"sando: {prod.name}/node2 runs other bytes than its peers: its v1 differs from node1's: makenotwork, "
            "mnw-admin") in said
