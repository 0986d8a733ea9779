"""Issue 21, the fast layer: a local node's config, its transport (localnode.run: the same
Result, stdin streaming and messages as ssh.run, sudo -n when not root, one line when sudo
would ask for a password), and its release taken from the local build's artifacts by hard link
(receive_release run for real in a tmp release root). The real thing runs in tests/e2e/test_local.py."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sando_components import commands, fleet, localnode, paths, ssh, stack, transfer
from sando_components.config import ConfigError, load
from sando_components.scripts import Report
from sando_components.transfer import NodeRelease

from fakenode import FakeNode
from unit_helpers import PRIVATE_KEY
from test_receive import artifacts, manifest_of

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcoUnW1v6mHmCtsxmOzuNN9n0i3Zvmgj7MA/TxNhpm4"
KEY = PRIVATE_KEY


def cfg(nodes: list[dict], **extra):
    raw = {"sando:nodes": json.dumps(nodes), "sando:version": "v1", "sando:source": json.dumps({"repo": "/srv/app"}),
           "sando:bootstrap": json.dumps({"ref": "main"})}
    secrets = set()
    for k, v in extra.items():
        raw[f"sando:{k}"] = v if isinstance(v, str) else json.dumps(v)
        if k in ("sshPrivateKey", "nodeKeys"):
            secrets.add(f"sando:{k}")
    return load(raw, secrets)


# --- config ------------------------------------------------------------------------------------


def test_a_local_node_needs_no_host_key_or_ssh_key():
    c = cfg([{"name": "testnot", "local": True}])
    (n,) = c.nodes
    assert n.local and n.host is None and c.private_key(n) is None
    assert stack.connection(c, n) == {"local": True, "host": "localhost", "port": 0}


@pytest.mark.parametrize("field,key", [("host", "host"), ("port", "port"), ("user", "user"),
                                       ("hostKey", "hostKey"),
                                       ("proxyJump", "proxyJump")])
def test_a_local_node_with_ssh_fields_names_the_key(field, key):
    value = {"host": "10.0.0.1", "port": 2222, "user": "root", "hostKey": HOST_KEY,
             "proxyJump": {"host": "bastion", "hostKey": HOST_KEY}}[field]
    with pytest.raises(ConfigError) as err:
        cfg([{"name": "web", "host": "10.0.0.2", "hostKey": HOST_KEY}, {"name": "testnot", "local": True, field: value}],
            sshPrivateKey=KEY)
    assert str(err.value) == (f"sando:nodes[1].{key}: a local node (local: true) is the machine sando runs on, "
                              f"reached without SSH: remove its {key}")


def test_an_ssh_node_still_needs_a_host():
    with pytest.raises(ConfigError) as err:
        cfg([{"name": "prod", "hostKey": HOST_KEY}], sshPrivateKey=KEY)
    assert str(err.value) == ("sando:nodes[0].host: is required (or local: true for the machine sando runs on): "
                              "pulumi config set --path 'sando:nodes[0].host' ADDRESS")


def test_mixed_stack_needs_a_key_for_its_ssh_nodes_only():
    with pytest.raises(ConfigError) as err:
        cfg([{"name": "testnot", "local": True}, {"name": "prod", "host": "10.0.0.2", "hostKey": HOST_KEY}])
    assert str(err.value).startswith("sando:sshPrivateKey: is required") and "without one: prod)" in str(err.value)
    c = cfg([{"name": "testnot", "local": True}, {"name": "prod", "host": "10.0.0.2", "hostKey": HOST_KEY}],
            sshPrivateKey=KEY)
    assert [n.local for n in c.nodes] == [True, False]
    assert stack.connection(c, c.nodes[1])["host"] == "10.0.0.2"


def test_one_local_node_at_most():
    with pytest.raises(ConfigError) as err:
        cfg([{"name": "a", "local": True}, {"name": "b", "local": True}])
    assert str(err.value) == "sando:nodes[1].local: only one node can be the machine sando runs on (nodes[0] is local too)"


def test_a_key_for_a_local_node_is_refused():
    with pytest.raises(ConfigError) as err:
        cfg([{"name": "testnot", "local": True}], nodeKeys={"testnot": KEY})
    assert str(err.value) == ("sando:nodeKeys.testnot: testnot is a local node (local: true): it needs no SSH key; "
                              "remove it")


# --- the transport -----------------------------------------------------------------------------


@pytest.fixture
def conn() -> ssh.Conn:
    return ssh.Conn.from_props({"local": True, "host": "localhost", "port": 0}, None, "testnot")


def test_conn_of_a_local_node(conn):
    assert conn.local and conn.private_key is None
    assert conn.label == ("testnot (local)" if os.geteuid() == 0 else f"testnot (local, as {conn.user})")


def test_run_streams_stdin_and_returns_the_same_result(conn):
    chunks = [b"a" * (ssh.CHUNK + 5), b"b" * 3]
    res = ssh.run(conn, "wc -c; echo to-err >&2; pwd; echo \"$PULUMI_CONFIG_PASSPHRASE.\"",
                  stdin=lambda: iter(chunks))
    assert res == ssh.Result(0, f"{ssh.CHUNK + 8}\n/\n.\n", "to-err\n", ssh.CHUNK + 8)


def test_the_command_gets_a_clean_environment(conn, monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "not-for-the-node")
    seen = dict(line.split("=", 1) for line in ssh.run(conn, "env").out.splitlines())
    assert seen == {**localnode._env(), "PWD": "/"}


def test_a_failing_command_names_the_node(conn):
    with pytest.raises(ssh.RemoteError) as err:
        ssh.run(conn, "echo out; echo why >&2; exit 3")
    assert str(err.value) == f"{conn.label}: a remote command exited 3: why"
    assert ssh.run(conn, "exit 4", check=False).rc == 4


def test_a_command_that_exits_early_stops_the_stream(conn):
    res = ssh.run(conn, "head -c 10 >/dev/null; echo done", stdin=b"z" * (8 * ssh.CHUNK), check=False)
    assert (res.rc, res.out) == (0, "done\n") and res.sent < 8 * ssh.CHUNK


def test_a_command_past_its_timeout_is_stopped_with_its_children(conn, tmp_path):
    marker = tmp_path / "child-ran"
    with pytest.raises(ssh.RemoteError) as err:
        ssh.run(conn, f"(sleep 3; touch {marker}) & sleep 30", timeout=0.5)
    assert str(err.value) == f"{conn.label}: a command did not finish within 0.5s and was stopped"
    time.sleep(3.5)
    assert not marker.exists()  # the whole process group was ended


def test_logs_stream_on_a_local_node(conn):
    """`sando logs` on a local node (fleet.stream): the command in a local shell, its stdout and
    stderr apart, whole lines after the prefix, its exit status (over SSH it needed a host key)."""
    out, err = io.StringIO(), io.StringIO()
    rc = fleet.stream(conn, "echo header >&2; printf 'one\\ntwo'; exit 3", out, err, "testnot | ")
    assert (rc, out.getvalue(), err.getvalue()) == (3, "testnot | one\ntestnot | two\n", "testnot | header\n")


def test_a_local_stream_ends_when_sando_does(tmp_path):
    """A `sando logs -f` on a local node that is killed (or ended by Ctrl-C) leaves no command
    behind: the shell gets SIGTERM when sando's thread that started it ends, as a remote command
    ends with its SSH connection."""
    pid_file = tmp_path / "pid"
    script = (f"import threading, time, os\nfrom sando_components import localnode, ssh\n"
              f"c = ssh.Conn.from_props({{'local': True, 'host': 'localhost', 'port': 0}}, None, 'testnot')\n"
              f"threading.Thread(target=localnode.stream, daemon=True, args=(c, 'echo $$ > {pid_file}; exec sleep 300',"
              f" lambda b: None, lambda b: None)).start()\n"
              f"while not os.path.exists('{pid_file}') or not open('{pid_file}').read(): time.sleep(0.05)\n")
    subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=True, timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "sleep" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
        assert time.monotonic() < deadline, f"sleep {pid} outlived sando"
        time.sleep(0.1)


def test_sandos_end_ends_a_local_stream(conn, tmp_path):
    """cli.main's end (fleet.disconnect) ends a local stream still running: a `sando logs -f` ended
    by Ctrl-C (the main thread returns while its stream thread still reads)."""
    import threading

    pid_file = tmp_path / "pid"
    done = []
    t = threading.Thread(target=lambda: done.append(localnode.stream(
        conn, f"echo $$ > {pid_file}; exec sleep 300", lambda b: None, lambda b: None)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fleet.disconnect()
    t.join(timeout=10)
    assert done and done[0] < 0, done  # ended by a signal, not left to run its 300 s


def test_ssh_on_a_local_node_runs_a_command_or_a_shell(conn):
    """`sando ssh` on a local node (fleet.interactive): a command in a local shell as root, its
    output and errors apart, its exit status; without one, root's login shell reading stdin."""
    out, err = io.StringIO(), io.StringIO()
    assert fleet.interactive(conn, "id -u; ls /no-such-dir; exit 3", io.StringIO(), out, err) == 3
    assert out.getvalue() == "0\n" and "no-such-dir" in err.getvalue()
    out = io.StringIO()
    assert fleet.interactive(conn, None, io.StringIO("echo in-$((40 + 2)) $HOME\nexit 4\n"), out) == 4
    assert "in-42 /root\n" in out.getvalue()


def test_ssh_on_a_local_node_on_a_terminal_is_the_terminals(tmp_path):
    """`sando ssh` on a local node from a terminal: root's shell on that terminal (a tty), whose
    Ctrl-C ends the shell's command, not sando; the shell's exit status is sando's. A command
    given with `--` and ended by Ctrl-C: its status as a shell says it (130), not a traceback."""
    import pty
    import select

    def session(*command: str):
        # SIGINT as a terminal's shell leaves it (CI may start the tests with it ignored, which
        # every child would inherit: a Ctrl-C then ends nothing)
        script = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
                  "from sando_components import fleet, ssh\n"
                  "c = ssh.Conn.from_props({'local': True, 'host': 'localhost', 'port': 0}, None, 'testnot')\n"
                  "sys.exit(fleet.interactive(c, ' '.join(sys.argv[1:]) or None, sys.stdin, sys.stdout, sys.stderr))\n")
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-c", script, *command], stdin=slave, stdout=slave, stderr=slave,
                                cwd=Path(__file__).parents[2], start_new_session=True,  # the pty: its terminal
                                preexec_fn=lambda: __import__("fcntl").ioctl(0, __import__("termios").TIOCSCTTY, 0))
        os.close(slave)
        return proc, master

    # a command on the terminal (no job control): Ctrl-C ends it, sando says its status (130), no more
    def sleeping(pid: int, timeout: float = 60) -> None:
        """Wait until a `sleep 30` runs under `pid`: a Ctrl-C typed before it is exec'd can fall on
        its shell between two commands, which dash takes and forgets (as on any terminal)."""
        deadline = time.monotonic() + timeout
        while True:
            todo, found = [pid], False
            while todo and not found:
                kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
                todo += kids
                found = any(Path(f"/proc/{k}/cmdline").read_bytes() == b"sleep\x0030\x00" for k in kids
                            if Path(f"/proc/{k}/cmdline").exists())
            if found:
                return
            assert time.monotonic() < deadline, "no sleep 30 started"
            time.sleep(0.05)

    proc, master = session("sleep 30; echo slept")
    try:
        sleeping(proc.pid)
        os.write(master, b"\x03")
        assert proc.wait(timeout=20) == 130
        seen = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:  # the pty's other end closed
                break
        assert b"slept" not in seen and b"Traceback" not in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)

    proc, master = session()
    seen = b""

    def until(text: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)

    try:
        os.write(master, b"tty; echo in-$((40 + 2))\n")
        until(b"in-42")
        assert b"/dev/pts/" in seen, seen
        os.write(master, b"sleep 30; echo slept-$((1 + 1))\n")
        sleeping(proc.pid)
        os.write(master, b"\x03")  # Ctrl-C: the sleep's, not sando's
        os.write(master, b"echo after-$((2 + 2))\n")
        until(b"after-4")
        assert b"slept-2" not in seen and proc.poll() is None, seen
        os.write(master, b"exit 7\n")
        assert proc.wait(timeout=20) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_not_root_runs_under_sudo_n(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert localnode.argv("echo hi") == ["sudo", "-n", "--", "/bin/sh", "-c", "echo hi"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert localnode.argv("echo hi") == ["/bin/sh", "-c", "echo hi"]


def fake_sudo(tmp_path: Path, monkeypatch, script: str) -> None:
    sudo = tmp_path / "sudo"
    sudo.write_text("#!/bin/sh\n" + script)
    sudo.chmod(0o755)
    monkeypatch.setattr(localnode, "SUDO", (str(sudo), "-n", "--"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(localnode, "_checked", set())


def test_sudo_asking_for_a_password_is_one_line_before_any_command(tmp_path, monkeypatch):
    ran = tmp_path / "ran"
    fake_sudo(tmp_path, monkeypatch, f'printf "%s\\n" "$*" >> {ran}; echo "sudo: a password is required" >&2; exit 1\n')
    conn = ssh.Conn("localhost", 0, "op", None, False, None, node="testnot", local=True)
    with pytest.raises(ssh.RemoteError) as err:
        ssh.run(conn, "touch /should-not-exist")
    assert str(err.value) == (
        "testnot (local, as op): sudo would ask op for a password, and sando never types one: run `sudo -v` in this "
        "terminal first, or add the sudoers rule `op ALL=(root) NOPASSWD: /bin/sh` (visudo -f /etc/sudoers.d/sando), "
        "or run sando as root")
    assert ran.read_text() == "-n -- /bin/sh -c true\n"  # only the check ran


def test_sudo_that_works_is_checked_once(tmp_path, monkeypatch):
    ran = tmp_path / "ran"
    fake_sudo(tmp_path, monkeypatch, f'printf "%s\\n" "$*" >> {ran}; shift 2; exec "$@"\n')
    conn = ssh.Conn("localhost", 0, "op", None, False, None, node="testnot", local=True)
    assert ssh.run(conn, "echo one").out == "one\n"
    assert ssh.run(conn, "cat", stdin=b"two").out == "two"
    assert ran.read_text().splitlines() == ["-n -- /bin/sh -c true", "-n -- /bin/sh -c echo one",
                                            "-n -- /bin/sh -c cat"]


def test_no_sudo_installed_says_so(monkeypatch):
    monkeypatch.setattr(localnode, "SUDO", ("/nonexistent/sudo", "-n", "--"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(localnode, "_checked", set())
    conn = ssh.Conn("localhost", 0, "op", None, False, None, node="testnot", local=True)
    with pytest.raises(ssh.RemoteError, match=r"^testnot \(local, as op\): sando runs as op, not root, and sudo is "
                                              r"not installed: install sudo \(apt-get install sudo\) or run sando as root$"):
        ssh.run(conn, "true")


# --- the release, from the local build's artifacts ----------------------------------------------


def test_local_steps_of_the_plan(tmp_path):
    """A local node's plan: `local` steps from the artifacts (absolute), the sums and manifest as
    `text` (base64: one field of receive.sh's tab-separated steps), each with its mode."""
    import base64

    from sando_components import build

    root = tmp_path / "artifacts"
    (root / "sub").mkdir(parents=True)
    (root / "mnw admin").write_bytes(b"bin")
    (root / "sub" / "p.html").write_bytes(b"page")
    art = build.Artifacts(str(root), (("mnw admin", "d1", 0o755), ("sub/p.html", "d2", 0o644)))
    plan = transfer.plan_local(art, {"version": "v1"}, [])
    assert plan.steps[:2] == [f"local\t{root}/mnw admin\tmnw admin\t0755", f"local\t{root}/sub/p.html\tsub/p.html\t0644"]
    kinds = [line.split("\t")[:2] for line in plan.steps[2:]]
    assert kinds == [["text", ".sando/SHA256SUMS"], ["mode", ".sando/SHA256SUMS"], ["text", ".sando/manifest.json"],
                     ["mode", ".sando/manifest.json"]]
    assert base64.b64decode(plan.steps[2].split("\t")[2]).decode() == art.sums()
    assert plan.counts["local"] == 2 and not plan.members  # nothing is streamed


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(tmp_path, "opt/it's make notwork")


V1 = {"makenotwork": b"server v1" * 1000, "mnw-admin": b"admin v1", "error-pages/502.html": b"<h1>502</h1>",
      "error-pages/sub dir/it's.html": b"nested"}


def receive_local(node: FakeNode, conn: ssh.Conn, art, version: str, held: list[NodeRelease] = ()):
    plan = transfer.plan_local(art, manifest_of(art, version), list(held))
    script = commands.receive_release(str(node.root), version, "0a1b2c3d", plan.need_kib, plan.steps, "none")
    return plan, ssh.run(conn, script, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown 0:0 of the linked files needs root")
def test_a_local_release_is_hard_links_of_the_artifacts_and_nothing_is_sent(node, conn, tmp_path):
    art = artifacts(tmp_path / "a1", V1, store=False)
    plan, res = receive_local(node, conn, art, "v1")
    assert (res.rc, res.sent) == (0, 0), res.err
    assert plan.counts == {"linked": 0, "patched": 0, "full": 0, "local": 4} and plan.members == []
    rel = node.root / "releases" / "v1"
    for name, content in V1.items():
        assert (rel / name).read_bytes() == content
        assert (rel / name).stat().st_ino == (Path(art.root) / name).stat().st_ino, name  # the same file
        assert (rel / name).stat().st_uid == 0
    assert stat.S_IMODE((rel / "makenotwork").stat().st_mode) == 0o755
    assert stat.S_IMODE((rel / "error-pages/502.html").stat().st_mode) == 0o644
    assert (rel / paths.SUMS).read_text() == art.sums()
    assert json.loads((rel / paths.MANIFEST).read_text()) == manifest_of(art, "v1")
    assert node.versions() == ["v1"]

    # the next release: unchanged files from the held release, changed ones from the new build
    v2 = {**V1, "mnw-admin": b"admin v2"}
    art2 = artifacts(tmp_path / "a2", v2, store=False)
    held = [NodeRelease("v1", "c-v1", 1.0, {r: d for r, d, _ in art.files})]
    plan, res = receive_local(node, conn, art2, "v2", held)
    assert res.rc == 0, res.err
    assert plan.counts == {"linked": 3, "patched": 0, "full": 0, "local": 1}
    r2 = node.root / "releases" / "v2"
    assert (r2 / "mnw-admin").stat().st_ino == (Path(art2.root) / "mnw-admin").stat().st_ino
    assert (r2 / "makenotwork").stat().st_ino == (rel / "makenotwork").stat().st_ino


@pytest.mark.skipif(os.geteuid() != 0, reason="chown 0:0 of the linked files needs root")
def test_an_artifact_that_no_longer_matches_its_sha256_is_refused(node, conn, tmp_path):
    art = artifacts(tmp_path / "a1", V1, store=False)
    (Path(art.root) / "mnw-admin").write_bytes(b"changed behind sando's back")
    _, res = receive_local(node, conn, art, "v1")
    assert res.rc == 65 and Report.parse(res.out).has("sums-failed")
    assert node.versions() == []  # nothing kept, no staging dir left


def test_a_failing_stdin_source_ends_the_command(conn, tmp_path):
    marker = tmp_path / "finished"

    def chunks():
        yield b"x" * 10
        raise RuntimeError("zstd failed while packing the release")

    with pytest.raises(RuntimeError, match="zstd failed"):
        ssh.run(conn, f"cat >/dev/null; sleep 2; touch {marker}", stdin=chunks)
    time.sleep(2.5)
    assert not marker.exists()
