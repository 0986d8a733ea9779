"""Tests for scripts/testnodes: real systemd test nodes in their own namespaces.

Run (as root): .venv/bin/python -m pytest -q tests/harness
The module's nodes use subnets 10.213.{n}.0/30; when a subnet is busy (another set, e.g.
`make demo`) a test shifts to another offset. SANDO_TESTNODES_TEST_OFFSET=K pins the first try.
"""
import importlib.machinery
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import Node

REPO = Path(__file__).resolve().parents[2]
TESTNODES = REPO / "scripts" / "testnodes"
OFFSET = int(os.environ.get("SANDO_TESTNODES_TEST_OFFSET", "0"))
FIELDS = {"name", "host", "port", "user", "privateKeyPath", "hostKey", "root", "appUrl", "caddyUrl",
          "serviceToken", "fsPath", "pid"}
NAMESPACES = ("pid", "mnt", "uts", "net", "ipc", "cgroup")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="test nodes need root (namespaces, mounts)")


def load_testnodes():
    """scripts/testnodes as a module: its Node class is the one place for the names of a set."""
    loader = importlib.machinery.SourceFileLoader("testnodes_script", str(TESTNODES))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


tn = load_testnodes()


def run_testnodes(*args, state, check=True, timeout=180, input=None):
    p = subprocess.run([str(TESTNODES), *args[:1], *(["--state-dir", str(state)] if state else []), *args[1:]],
                       input=input, stdin=None if input is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("testnodes %s failed (%d):\nstdout: %s\nstderr: %s"
                             % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def start_set(state, count, *extra, offsets=None, input=None):
    """start, shifting the offset while subnets are busy; returns (offset, nodes JSON, process)."""
    for off in offsets or [OFFSET + k for k in (0, 40, 80, 120, 160, 200)]:
        if off + count > 250:
            continue
        p = run_testnodes("start", str(count), "--offset", str(off), *extra, state=state, check=False, input=input)
        if p.returncode == 0:
            return off, json.loads(p.stdout), p
        assert "already in use" in p.stderr, p.stderr
    raise AssertionError("no free offset: %s" % p.stderr)


def in_node(state, name, *cmd, input=None):
    return run_testnodes("exec", name, "--", *cmd, state=state, check=False, input=input)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X", "x")
    except OSError:
        return False


def ns_of(pid, kind):
    return os.readlink("/proc/%d/ns/%s" % (pid, kind))


def live_pids_in_ns(namespaces):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if ns_of(int(p), "pid") in namespaces and alive(int(p)):
                    out.append(int(p))
            except OSError:
                pass
    return out


def ssh(node, command, known_hosts, timeout=60):
    return subprocess.run(["ssh", "-F", "/dev/null", "-i", node["privateKeyPath"], "-p", str(node["port"]),
                           "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % known_hosts,
                           "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                           "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                           "%s@%s" % (node["user"], node["host"]), command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def host_addrs():
    """(device, IPv4 address) of every address on the host."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [(f[1].split("@")[0], f[3].split("/")[0]) for f in (line.split() for line in out.splitlines())]


def another_sets_veth(dev, node):
    """A set's subnets are free again once it is gone: another set (a parallel worker's) may hold
    them by then, on its own veth (sn<its tag><n>). The address is this set's leftover only on
    this set's veth or on a device that is no set's."""
    return dev != node.veth and re.fullmatch(r"sn[0-9a-f]{6}%d" % node.n, dev) is not None


class Leftovers:
    """What a set may leave behind, found by the set's own names (scripts/testnodes' Node)."""

    def __init__(self, state, offset, count):
        self.state = state
        self.nodes = [tn.Node(state, i, offset) for i in range(1, count + 1)]
        self.pidns = set()

    def remember_processes(self):
        for n in self.nodes:
            rec = tn.read_json(n.record) or {}
            if rec.get("pidns"):
                self.pidns.add(rec["pidns"])

    def found(self):
        netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        links = set(os.listdir("/sys/class/net"))
        left = []
        left += ["mount " + m for m in tn.mounts_under(self.state)]
        left += ["netns " + n.netns for n in self.nodes if n.netns in netns]
        left += ["veth " + n.veth for n in self.nodes if n.veth in links]
        left += ["cgroup %s" % n.cgroup for n in self.nodes if n.cgroup.exists()]
        left += ["process %d" % p for p in live_pids_in_ns(self.pidns)]
        left += ["addr %s on %s" % (addr, dev) for dev, addr in host_addrs()
                 for n in self.nodes if addr == n.host_addr and not another_sets_veth(dev, n)]
        if self.state.exists():
            left.append("state dir %s" % self.state)
        return left


class Cluster:
    def __init__(self, base, state, offset, nodes):
        self.base, self.state, self.offset, self.nodes = base, state, offset, nodes

    def node(self, i):
        return Node(**self.nodes[i], state_dir=str(self.state))

    def known_hosts(self, node, host_key=None):
        path = self.base / ("known_hosts_%s_%s" % (node["name"], "custom" if host_key else "ok"))
        path.write_text("%s %s\n" % (node["host"], host_key or node["hostKey"]))
        return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("testnodes")
    state = base / "state"
    offset, nodes, _ = start_set(state, 3, "--service-token-stdin", input="tok-harness\n")
    c = Cluster(base, state, offset, nodes)
    yield c
    if state.exists():
        run_testnodes("stop", state=state, check=False)


# --------------------------------------------------------------------------- JSON and files


def test_json(cluster):
    state = cluster.state
    assert json.loads((state / "nodes.json").read_text()) == cluster.nodes
    assert (state / "nodes.json").stat().st_mode & 0o777 == 0o600  # it holds the service token
    for i, node in enumerate(cluster.nodes, start=1):
        n = cluster.offset + i
        assert set(node) == FIELDS
        assert node["name"] == "node%d" % i
        assert node["host"] == "10.213.%d.2" % n
        assert (node["port"], node["user"], node["root"]) == (22, "root", "")
        assert node["appUrl"] == "http://10.213.%d.2:3000/" % n
        assert node["caddyUrl"] == "http://10.213.%d.2:80/" % n
        assert node["serviceToken"] == "tok-harness"
        assert re.fullmatch(r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+", node["hostKey"])
        assert os.path.ismount(node["fsPath"])
        assert Path(node["privateKeyPath"]).read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        with open("/proc/%d/comm" % node["pid"]) as f:
            assert f.read().strip() == "systemd"
        assert "%s %s\n" % (node["host"], node["hostKey"]) in (state / "known_hosts").read_text()
    assert len({n["hostKey"] for n in cluster.nodes}) == 3
    assert run_testnodes("status", state=state).stdout == (state / "nodes.json").read_text()


def test_caddy_has_no_thread_limit_shared_by_all_nodes(cluster):
    """Debian's caddy.service says LimitNPROC=512: a per-user limit, and every node's caddy is the
    same user of this machine, so with ~60 nodes up (make bench) reloads failed in pthread_create."""
    for name in ("node1", "node3"):
        show = in_node(cluster.state, name, "systemctl", "show", "-p", "LimitNPROC", "caddy.service").stdout
        assert show.strip() == "LimitNPROC=infinity", (name, show)


def test_node_is_a_real_systemd_machine(cluster):
    node = cluster.nodes[0]
    assert in_node(cluster.state, "node1", "systemctl", "is-system-running").stdout.strip() == "running"
    assert in_node(cluster.state, "node1", "cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert in_node(cluster.state, "node1", "readlink", "/proc/1/exe").stdout.strip() == "/usr/lib/systemd/systemd"
    assert in_node(cluster.state, "node1", "hostname").stdout.strip() == "node1"
    for kind in NAMESPACES:
        assert ns_of(node["pid"], kind) != ns_of(os.getpid(), kind), kind
    # its own network: eth0 with the node's address, no default route
    addr = in_node(cluster.state, "node1", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert node["host"] + "/30" in addr
    assert in_node(cluster.state, "node1", "ip", "route", "show", "default").stdout.strip() == ""


def test_units(cluster):
    state = cluster.state
    active = in_node(state, "node2", "systemctl", "is-active", "ssh", "caddy", "cron", "systemd-journald")
    assert active.stdout.split() == ["active"] * 4, active.stdout
    for unit in ("postgresql.service", "postgresql@.service", "getty@.service", "console-getty.service",
                 "systemd-timesyncd.service", "apt-daily.timer", "e2scrub_all.timer"):
        assert os.readlink(Path(cluster.nodes[1]["fsPath"], "etc/systemd/system", unit)) == "/dev/null", unit
    masked = in_node(state, "node2", "systemctl", "is-enabled", "postgresql.service", "getty@tty1.service").stdout
    assert masked.split() == ["masked", "masked"]
    running = in_node(state, "node2", "ps", "-eo", "comm=").stdout.split()
    assert "postgres" not in running and "agetty" not in running
    assert in_node(state, "node2", "systemctl", "--failed", "--no-legend").stdout.strip() == ""


def test_prod_layout(cluster):
    node = cluster.node(0)
    env = node.path("/etc/makenotwork/makenotwork.env")
    assert env.stat().st_mode & 0o777 == 0o600 and env.stat().st_uid == 0
    assert env.read_text().splitlines() == ["MNW_BIND=0.0.0.0:3000",
                                            "DATABASE_PATH=/var/lib/makenotwork/makenotwork.db",
                                            "CLI_SERVICE_TOKEN=tok-harness"]
    for d in ("/opt/makenotwork", "/var/lib/makenotwork", "/var/backups/makenotwork"):
        assert node.path(d).is_dir() and not any(node.path(d).iterdir()), d
    assert not node.path("/etc/systemd/system/makenotwork.service").exists()
    assert node.path("/etc/caddy/Caddyfile").read_text() == Path("/etc/caddy/Caddyfile").read_text()
    assert sorted(p.name for p in node.path("/root").iterdir()) == [".bashrc", ".profile", ".ssh"]
    assert node.fetch(node.caddyUrl)[0] == 200  # the image's caddy, reached from the host


def test_files_through_fs_path(cluster):
    node = cluster.node(1)
    node.path("/opt/makenotwork/from-host").write_text("hello\n")
    assert node.exec("cat", "/opt/makenotwork/from-host").stdout == "hello\n"
    node.exec("sh", "-c", "echo inside > /var/lib/makenotwork/from-node", check=True)
    assert node.path("/var/lib/makenotwork/from-node").read_text() == "inside\n"
    assert not Path("/var/lib/makenotwork/from-node").exists()  # the host's own files are untouched
    node.path("/opt/makenotwork/from-host").unlink()


# --------------------------------------------------------------------------- ssh


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_ssh_root_login_with_pinned_host_key(cluster, idx):
    node = cluster.nodes[idx]
    p = ssh(node, "id -un; hostname; cat /proc/1/comm", cluster.known_hosts(node))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["root", node["name"], "systemd"]
    p = subprocess.run(["ssh", "-F", str(cluster.state / "ssh_config"), node["name"], "hostname"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stdout.strip() == node["name"], p.stderr


def test_wrong_host_key_is_refused(cluster):
    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    p = ssh(node1, "echo ok", cluster.known_hosts(node1, host_key=node2["hostKey"]))
    assert p.returncode != 0 and "ok" not in p.stdout
    assert "Host key verification failed" in p.stderr or "IDENTIFICATION HAS CHANGED" in p.stderr, p.stderr


def test_fresh_host_key(cluster):
    host_keys = {" ".join(p.read_text().split()[:2]) for p in Path("/etc/ssh").glob("ssh_host_*_key.pub")}
    node = cluster.node(2)
    assert node.hostKey not in host_keys
    inside = node.exec("sh", "-c", "ls /etc/ssh/ssh_host_*").stdout.split()
    assert inside == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub"]
    served = subprocess.run(["ssh-keyscan", "-t", "ed25519", node.host], capture_output=True, text=True,
                            timeout=30).stdout.split()
    assert " ".join(served[1:3]) == node.hostKey


# --------------------------------------------------------------------------- isolation, exec


def test_nodes_do_not_see_each_other(cluster):
    state = cluster.state
    node2 = cluster.node(1)
    node2.exec("systemd-run", "--unit", "marker-sleep", "sleep", "4242", check=True)
    try:
        assert "sleep 4242" in node2.exec("ps", "-eo", "args").stdout
        seen = in_node(state, "node1", "ps", "-eo", "args").stdout
        assert "sleep 4242" not in seen
        pids1 = in_node(state, "node1", "ps", "-eo", "pid=", "-o", "comm=").stdout.split()
        assert pids1[:2] == ["1", "systemd"]
        # and no route from one node to another
        p = in_node(state, "node1", "curl", "-sS", "--max-time", "3", node2.caddyUrl)
        assert p.returncode != 0
    finally:
        node2.exec("systemctl", "stop", "marker-sleep")


def test_exec_passes_exit_code_and_output(cluster):
    state = cluster.state
    p = in_node(state, "node3", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
    assert in_node(state, "node3", "cat", input="via stdin\n").stdout == "via stdin\n"
    assert in_node(state, "node3", "sh", "-c", "echo $HOME $USER; pwd").stdout.split() == ["/root", "root", "/"]
    p = in_node(state, "node9", "true")
    assert p.returncode == 1 and "no node node9" in p.stderr


def test_tmpfs_over_releases(cluster):
    node = cluster.node(2)
    node.exec("sh", "-c", "mkdir -p /opt/makenotwork/releases && "
              "mount -t tmpfs -o size=64k tmpfs /opt/makenotwork/releases", check=True)
    try:
        p = node.exec("sh", "-c", "head -c 200000 /dev/zero > /opt/makenotwork/releases/big")
        assert p.returncode != 0 and "No space left" in p.stderr
    finally:
        node.exec("umount", "/opt/makenotwork/releases", check=True)


def test_reload_of_inactive_caddy_fails(cluster):
    """Real systemd: reloading an inactive unit is an error (the old shim started it)."""
    node = cluster.node(2)
    node.exec("systemctl", "stop", "caddy", check=True)
    try:
        p = node.exec("systemctl", "reload", "caddy")
        assert p.returncode == 1 and "not active, cannot reload" in p.stderr
    finally:
        node.exec("systemctl", "start", "caddy", check=True)


def test_unit_events_and_restart_times(cluster):
    node = cluster.node(0)
    assert node.unit_events() == []  # the boot (and start's own ssh login) is not counted
    unit = (REPO / "examples/makenotwork/server/deploy/makenotwork.service").read_text()
    node.path("/etc/systemd/system/makenotwork.service").write_text(
        unit.replace("ExecStart=/opt/makenotwork/current/makenotwork", "ExecStart=/bin/sleep 1000"))
    try:
        for cmd in (["daemon-reload"], ["reload", "caddy"], ["reload-or-restart", "makenotwork"],
                    ["reload-or-restart", "makenotwork"], ["stop", "makenotwork"], ["restart", "makenotwork"]):
            node.exec("systemctl", *cmd, check=True)
        assert node.unit_events() == [("daemon-reload", "-"), ("reload", "caddy"), ("start", "makenotwork"),
                                      ("restart", "makenotwork"), ("stop", "makenotwork"),
                                      ("start", "makenotwork")]
        times = node.restart_times()
        assert len(times) == 3 and times == sorted(times) and abs(times[-1] - time.time()) < 60
        assert "Started makenotwork.service" in node.journal("makenotwork")
    finally:
        node.exec("systemctl", "stop", "makenotwork")
        node.path("/etc/systemd/system/makenotwork.service").unlink()
        node.exec("systemctl", "daemon-reload")


# --------------------------------------------------------------------------- separate sets


def test_a_service_token_on_the_command_line_is_refused(tmp_path):
    """argv is readable by every user (ps): the token comes on stdin or in the environment."""
    state = tmp_path / "argv"
    p = run_testnodes("start", "1", "--service-token", "tok-in-argv", state=state, check=False)
    assert p.returncode == 1 and "--service-token is refused" in p.stderr and "--service-token-stdin" in p.stderr
    assert not state.exists() and "tok-in-argv" not in p.stderr
    p = run_testnodes("start", "1", "--service-token-stdin", state=state, check=False, input="\n")
    assert p.returncode == 1 and "stdin's first line is empty" in p.stderr and not state.exists()


def test_start_twice_stops_the_first(tmp_path):
    state = tmp_path / "twice"
    off, a, _ = start_set(state, 1, "--service-token-stdin", input="tok123\n",
                          offsets=[OFFSET + k for k in (10, 50, 90, 130)])
    gone = Leftovers(state, off, 1)
    gone.remember_processes()
    b = json.loads(run_testnodes("start", "1", "--offset", str(off), "--service-token-stdin", state=state,
                                 input="tok123\n").stdout)
    assert a[0]["hostKey"] != b[0]["hostKey"], "new host key per run"
    assert a[0]["pid"] != b[0]["pid"] and not alive(a[0]["pid"])
    assert live_pids_in_ns(gone.pidns) == []
    assert b[0]["serviceToken"] == "tok123" and b[0]["host"] == a[0]["host"]
    run_testnodes("stop", state=state)
    assert gone.found() == []
    assert run_testnodes("stop", state=state).returncode == 0  # a missing state dir: no-op

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    p = run_testnodes("start", "1", "--offset", str(off), state=foreign, check=False)
    assert p.returncode == 1 and "refusing" in p.stderr
    p = run_testnodes("stop", state=foreign, check=False)
    assert p.returncode == 1 and (foreign / "keep.txt").exists()


def wait_for_first_node(proc, state, timeout=60):
    """Until node1 of a starting set runs (systemd says running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "start ended before node1 was up: %s" % proc.stderr.read()
        if (state / "node1" / "node.json").exists():
            if in_node(state, "node1", "systemctl", "is-system-running").stdout.strip() == "running":
                return
        time.sleep(0.05)
    raise AssertionError("node1 did not come up")


def spawn_start(state, count, off):
    return subprocess.Popen([str(TESTNODES), "start", str(count), "--state-dir", str(state), "--offset", str(off)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def paused_start(state, count):
    """A start frozen (SIGSTOP) after node1 booted and before it finished; (process, offset)."""
    for _ in range(5):
        for off in [OFFSET + k for k in (20, 60, 100, 140, 180)]:
            proc = spawn_start(state, count, off)
            try:
                wait_for_first_node(proc, state)
                break
            except AssertionError as exc:  # its message may hold the stderr wait_for_first_node read
                proc.wait()
                if "already in use" not in str(exc) + proc.stderr.read():
                    raise
        proc.send_signal(signal.SIGSTOP)
        if not (state / "nodes.json").exists():
            return proc, off
        proc.send_signal(signal.SIGCONT)  # it finished first: stop that set and try again
        proc.wait()
        run_testnodes("stop", state=state)
    raise AssertionError("start always finished before it could be interrupted")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_start_leaves_nothing(tmp_path, sig):
    """SIGKILL after node1 booted, then `stop`; SIGTERM: start cleans up by itself."""
    state = tmp_path / "interrupted"
    count = 6
    proc, off = paused_start(state, count)
    left = Leftovers(state, off, count)
    left.remember_processes()
    assert left.pidns
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert (state / "node1" / "fs").is_mount()
        assert live_pids_in_ns(left.pidns)  # the half-started set is still there ...
        run_testnodes("stop", state=state)  # ... until stop
    else:
        assert "start failed; cleaning up" in proc.stderr.read()
    assert left.found() == []


def test_sixteen_nodes(tmp_path):
    state = tmp_path / "sixteen"
    t0 = time.monotonic()
    off, nodes, p = start_set(state, 16, offsets=[OFFSET + k for k in (30, 70, 110, 150, 190, 230)])
    boot = time.monotonic() - t0
    left = Leftovers(state, off, 16)
    left.remember_processes()
    try:
        status = run_testnodes("status", state=state)
        assert status.stderr.count(" running: ") == 16, status.stderr

        def login(node):
            return subprocess.run(["ssh", "-F", str(state / "ssh_config"), node["name"], "hostname"],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

        with ThreadPoolExecutor(16) as pool:
            out = [r.stdout.strip() for r in pool.map(login, nodes)]
        assert out == ["node%d" % i for i in range(1, 17)]
        assert len({n["hostKey"] for n in nodes}) == 16
        assert boot < 60, "16 nodes took %.1fs to boot" % boot
    finally:
        run_testnodes("stop", state=state)
    assert left.found() == []


# --------------------------------------------------------------------------- stop (keep last)


def test_zz_stop_cleans_up(cluster):
    state = cluster.state
    left = Leftovers(state, cluster.offset, 3)
    left.remember_processes()
    node = cluster.node(0)
    # a unit, and a process started through exec outside any unit: stop must get both
    node.exec("systemd-run", "--unit", "sleeper", "sleep", "600", check=True)
    node.exec("sh", "-c", "setsid sleep 601 >/dev/null 2>&1 < /dev/null &", check=True)
    assert len(live_pids_in_ns(left.pidns)) > 3 * 5
    run_testnodes("stop", state=state)
    assert left.found() == []
    assert run_testnodes("status", state=state, check=False).returncode == 3
