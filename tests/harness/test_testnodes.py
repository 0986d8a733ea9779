"""Tests for scripts/testnodes (real sshd test nodes on loopback) and its systemctl shim.

Run: python3 -m pytest -q tests/harness
Root or not: as root the nodes get users sandonode{n}; otherwise everything runs as you.
The module fixture starts 3 nodes at offset 0 (node users sandonode1..3, 127.0.0.2..4);
if those addresses are busy (another testnodes set, e.g. `make demo`) it falls back to
offsets 40/60/80. SANDO_TESTNODES_TEST_OFFSET=K pins the offset.
"""
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTNODES = REPO / "scripts" / "testnodes"
APP_DIR = REPO / "examples" / "makenotwork" / "server"
OFFSET = int(os.environ.get("SANDO_TESTNODES_TEST_OFFSET", "0"))
IS_ROOT = os.geteuid() == 0
FIELDS = {"name", "host", "port", "user", "privateKeyPath", "hostKey", "root", "appUrl", "caddyUrl", "serviceToken"}

pytestmark = pytest.mark.skipif(
    not (os.access("/usr/sbin/sshd", os.X_OK) and shutil.which("ssh") and shutil.which("ssh-keygen")),
    reason="OpenSSH server/client not installed (apt-get install -y openssh-server openssh-client)",
)


def run_testnodes(*args, state, check=True, timeout=120):
    p = subprocess.run([str(TESTNODES), *args, "--state-dir", str(state)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("testnodes %s failed (%d):\nstdout: %s\nstderr: %s"
                             % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p


def pid_gone(pid):
    """True if the pid does not exist or is a zombie (init reaps orphans lazily)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return data.rsplit(")", 1)[1].split()[0] in ("Z", "X", "x")


def wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.05)
    return pid_gone(pid)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0, attempts=50):
    last = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise AssertionError("GET %s failed: %s" % (url, last))


class Cluster:
    def __init__(self, base, state, nodes, start_seconds):
        self.base = base
        self.state = state
        self.nodes = nodes
        self.start_seconds = start_seconds

    def known_hosts(self, node, host_key=None):
        path = self.base / ("known_hosts_%s_%s" % (node["name"], "custom" if host_key else "ok"))
        path.write_text("[%s]:%d %s\n" % (node["host"], node["port"], host_key or node["hostKey"]))
        return path

    def ssh(self, node, command, input=None, known_hosts=None, timeout=60, check=True):
        kh = known_hosts or self.known_hosts(node)
        argv = ["ssh", "-F", "/dev/null", "-i", node["privateKeyPath"], "-p", str(node["port"]),
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % kh,
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                "%s@%s" % (node["user"], node["host"]), command]
        binary = isinstance(input, bytes)
        p = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                           capture_output=True, text=not binary, timeout=timeout)
        if binary:
            p.stdout, p.stderr = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError("ssh %s %r failed (%d):\nstdout: %s\nstderr: %s"
                                 % (node["name"], command, p.returncode, p.stdout, p.stderr))
        return p

    def systemctl_log(self, node, unit=None):
        path = Path(node["root"]) / "var" / "log" / "systemctl.log"
        rows = []
        for line in path.read_text().splitlines():
            ts, verb, u = line.split(" ")
            float(ts)
            if unit is None or u == unit:
                rows.append((float(ts), verb, u))
        return rows


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="sando-testnodes-test-"))
    state = base / "state"
    # If another testnodes set (make demo, another engineer's run) holds the default
    # addresses, fall back to other offsets unless SANDO_TESTNODES_TEST_OFFSET pins one.
    pinned = os.environ.get("SANDO_TESTNODES_TEST_OFFSET")
    offsets = [OFFSET] if pinned else [0, 40, 60, 80]
    p = None
    for off in offsets:
        t0 = time.monotonic()
        p = run_testnodes("start", "3", "--offset", str(off), state=state, check=False)
        elapsed = time.monotonic() - t0
        if p.returncode == 0 or "already in use" not in p.stderr:
            break
    assert p.returncode == 0, "testnodes start failed:\n" + p.stderr
    c = Cluster(base, state, json.loads(p.stdout), elapsed)
    c.offset = off
    try:
        yield c
    finally:
        run_testnodes("stop", state=state, check=False)
        shutil.rmtree(str(base), ignore_errors=True)


# --------------------------------------------------------------------------- start output


def test_start_output(cluster):
    nodes = cluster.nodes
    assert len(nodes) == 3
    assert cluster.start_seconds < 3.0, "start 3 took %.2fs" % cluster.start_seconds
    tokens = set()
    for i, node in enumerate(nodes, start=1):
        n = cluster.offset + i
        assert set(node) == FIELDS
        assert node["name"] == "node%d" % i
        assert node["host"] == "127.0.0.%d" % (n + 1)
        assert node["port"] == 2222
        assert node["user"] == ("sandonode%d" % n if IS_ROOT else pwd.getpwuid(os.getuid()).pw_name)
        assert os.path.isabs(node["privateKeyPath"]) and os.path.isfile(node["privateKeyPath"])
        assert re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/=]+", node["hostKey"]), node["hostKey"]
        assert os.path.isabs(node["root"]) and os.path.isdir(node["root"])
        assert node["root"] == str(cluster.state / node["name"] / "root")
        assert node["appUrl"] == "http://127.0.0.1:%d/" % (3000 + n)
        assert node["caddyUrl"] == "http://127.0.0.%d:%d/" % (n + 1, 8080 + n)
        assert re.fullmatch(r"[0-9a-f]{32}", node["serviceToken"])
        tokens.add(node["serviceToken"])
    assert len(tokens) == 1, "one token per run"
    assert len({n["hostKey"] for n in nodes}) == 3, "fresh host key per node"
    assert json.loads((cluster.state / "nodes.json").read_text()) == nodes
    st = run_testnodes("status", state=cluster.state)
    assert json.loads(st.stdout) == nodes


def test_node_layout(cluster):
    for i, node in enumerate(cluster.nodes, start=1):
        n = cluster.offset + i
        root = Path(node["root"])
        for sub in ["opt/makenotwork", "etc/caddy", "etc/systemd/system", "etc/cron.d", "etc/makenotwork",
                    "etc/ssh/sshd_config.d", "etc/fail2ban/jail.d", "var/lib/makenotwork",
                    "var/backups/makenotwork", "var/log", "usr/local/bin", "run"]:
            assert (root / sub).is_dir(), sub
        uid = pwd.getpwnam(node["user"]).pw_uid
        assert root.stat().st_uid == uid
        env = root / "etc/makenotwork/makenotwork.env"
        assert env.stat().st_mode & 0o777 == 0o600
        assert env.stat().st_uid == uid
        assert env.read_text().splitlines() == [
            "MNW_BIND=127.0.0.1:%d" % (3000 + n),
            "DATABASE_PATH=%s/var/lib/makenotwork/makenotwork.db" % root,
            "CLI_SERVICE_TOKEN=%s" % node["serviceToken"],
        ]
        unit = (root / "etc/systemd/system/caddy.service").read_text()
        for line in ["Environment=CADDY_ADMIN=127.0.0.1:%d" % (2100 + n),
                     "Environment=MNW_HTTP_ADDR=127.0.0.%d:%d" % (n + 1, 8080 + n),
                     "Environment=MNW_UPSTREAM=127.0.0.1:%d" % (3000 + n),
                     "Environment=MNW_ROOT=%s" % root,
                     "ExecStart=/usr/bin/caddy run --adapter caddyfile --config /etc/caddy/Caddyfile",
                     "ExecReload=/usr/bin/caddy reload --adapter caddyfile --config /etc/caddy/Caddyfile "
                     "--address 127.0.0.1:%d" % (2100 + n)]:
            assert line in unit.splitlines()
        shim = root / "usr/local/bin/systemctl"
        assert os.access(str(shim), os.X_OK)
        assert shim.read_text().startswith("#!/usr/bin/python3\n")


# --------------------------------------------------------------------------- ssh


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_ssh_login_pinned(cluster, idx):
    node = cluster.nodes[idx]
    p = cluster.ssh(node, "echo ok; echo $SANDO_NODE_ROOT; command -v systemctl; echo $SANDO_NODE_NAME; id -un")
    assert p.stdout.splitlines() == ["ok", node["root"], node["root"] + "/usr/local/bin/systemctl",
                                     node["name"], node["user"]]


def test_wrong_host_key_is_rejected(cluster):
    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    kh = cluster.known_hosts(node1, host_key=node2["hostKey"])
    p = cluster.ssh(node1, "echo ok", known_hosts=kh, check=False)
    assert p.returncode != 0
    assert "ok" not in p.stdout
    assert "Host key verification failed" in p.stderr or "IDENTIFICATION HAS CHANGED" in p.stderr, p.stderr


def test_sftp_and_scp(cluster):
    node = cluster.nodes[2]
    src = cluster.base / "payload.txt"
    src.write_text("payload\n")
    dest = "%s/opt/makenotwork/payload.txt" % node["root"]
    kh = cluster.known_hosts(node)
    p = subprocess.run(["scp", "-F", "/dev/null", "-i", node["privateKeyPath"], "-P", str(node["port"]),
                        "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % kh,
                        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", str(src),
                        "%s@%s:%s" % (node["user"], node["host"], dest)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert cluster.ssh(node, "cat %s" % dest).stdout == "payload\n"


# --------------------------------------------------------------------------- systemctl shim


def write_unit(cluster, node, name, text):
    cluster.ssh(node, "cat > $SANDO_NODE_ROOT/etc/systemd/system/%s.service" % name, input=text)


def test_shim_lifecycle(cluster):
    node = cluster.nodes[0]
    port = free_port()
    write_unit(cluster, node, "web", "[Unit]\nDescription=test web\n\n[Service]\n"
               "ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 %d\n"
               "WorkingDirectory=/var/lib\n" % port)
    pidfile = Path(node["root"]) / "run" / "web.pid"

    p = cluster.ssh(node, "systemctl start web.service && systemctl is-active web")
    assert p.stdout.strip() == "active"
    pid1 = int(pidfile.read_text())
    assert not pid_gone(pid1)
    status, body = http_get("http://127.0.0.1:%d/" % port)
    assert status == 200

    cluster.ssh(node, "systemctl restart web")
    pid2 = int(pidfile.read_text())
    assert pid2 != pid1
    assert wait_gone(pid1)
    assert http_get("http://127.0.0.1:%d/" % port)[0] == 200
    assert cluster.ssh(node, "systemctl is-active web").stdout.strip() == "active"
    st = cluster.ssh(node, "systemctl status --no-pager web")
    assert "active (running)" in st.stdout and str(pid2) in st.stdout

    cluster.ssh(node, "systemctl stop web")
    assert wait_gone(pid2)
    assert not pidfile.exists()
    p = cluster.ssh(node, "systemctl is-active web", check=False)
    assert p.returncode == 3 and p.stdout.strip() == "inactive"
    assert cluster.ssh(node, "systemctl status web", check=False).returncode == 3

    rows = cluster.systemctl_log(node, "web")
    assert [verb for _, verb, _ in rows] == ["start", "is-active", "restart", "is-active", "status",
                                             "stop", "is-active", "status"]
    assert [t for t, _, _ in rows] == sorted(t for t, _, _ in rows)
    assert (Path(node["root"]) / "var/log/web.log").exists()


def test_shim_env_paths_and_failures(cluster):
    node = cluster.nodes[1]
    root = Path(node["root"])
    n = cluster.offset + 2
    write_unit(cluster, node, "envdump", "[Service]\n"
               'Environment="FOO=bar baz" QUX=1\n'
               "Environment=DATA=/var/lib/makenotwork/x.db UNITNAME=%n\n"
               "EnvironmentFile=-/etc/makenotwork/makenotwork.env\n"
               "EnvironmentFile=-/etc/makenotwork/missing.env\n"
               "ExecStart=/usr/bin/python3 -u -c \"import os,sys,time; "
               "print('|'.join(os.environ.get(k,'') for k in sys.argv[1:]), flush=True); time.sleep(60)\" "
               "FOO QUX MNW_BIND DATA SANDO_NODE_ROOT UNITNAME\n"
               "ExecReload=/usr/bin/touch /var/lib/makenotwork/reloaded-${MAINPID}\n")
    # reload of an inactive unit starts it (documented deviation)
    cluster.ssh(node, "systemctl reload envdump")
    pid = int((root / "run/envdump.pid").read_text())
    out = ""
    for _ in range(50):
        out = (root / "var/log/envdump.log").read_text()
        if out:
            break
        time.sleep(0.05)
    assert out.splitlines()[0] == "bar baz|1|127.0.0.1:%d|%s/var/lib/makenotwork/x.db|%s|envdump.service" % (
        3000 + n, root, root)
    cluster.ssh(node, "systemctl reload envdump")
    assert (root / ("var/lib/makenotwork/reloaded-%d" % pid)).exists()
    cluster.ssh(node, "systemctl reload-or-restart envdump")  # active + ExecReload -> reload
    assert int((root / "run/envdump.pid").read_text()) == pid
    cluster.ssh(node, "systemctl try-restart envdump")
    pid2 = int((root / "run/envdump.pid").read_text())
    assert pid2 != pid
    cluster.ssh(node, "systemctl stop envdump && systemctl try-restart envdump")
    assert cluster.ssh(node, "systemctl is-active envdump", check=False).stdout.strip() == "inactive"

    # no ExecReload -> not applicable
    write_unit(cluster, node, "noreload", "[Service]\nExecStart=/bin/sleep 60\n")
    p = cluster.ssh(node, "systemctl reload noreload", check=False)
    assert p.returncode == 1 and "Job type reload is not applicable" in p.stderr
    # failing start
    write_unit(cluster, node, "broken", "[Service]\nExecStart=/bin/false\n")
    p = cluster.ssh(node, "systemctl start broken", check=False)
    assert p.returncode == 1
    p = cluster.ssh(node, "systemctl is-active broken", check=False)
    assert p.returncode == 3 and p.stdout.strip() == "failed"
    # unknown unit
    p = cluster.ssh(node, "systemctl start nosuchunit", check=False)
    assert p.returncode == 5
    # enable/disable, daemon-reload
    cluster.ssh(node, "systemctl daemon-reload && systemctl enable noreload")
    assert (root / "etc/systemd/system/multi-user.target.wants/noreload.service").is_symlink()
    assert cluster.ssh(node, "systemctl is-enabled noreload").stdout.strip() == "enabled"
    cluster.ssh(node, "systemctl disable -q noreload")
    verbs = [(v, u) for _, v, u in cluster.systemctl_log(node)]
    assert verbs.count(("reload", "envdump")) == 2
    assert ("daemon-reload", "-") in verbs


@pytest.mark.skipif(not os.access("/usr/bin/caddy", os.X_OK), reason="caddy not installed")
def test_caddy_reload_starts_then_reloads(cluster):
    node = cluster.nodes[1]
    root = Path(node["root"])
    caddyfile = ("{\n\tadmin {$CADDY_ADMIN}\n\tauto_https off\n}\n\n"
                 "http://{$MNW_HTTP_ADDR} {\n\trespond \"%s {$MNW_UPSTREAM}\"\n}\n")
    cluster.ssh(node, "cat > $SANDO_NODE_ROOT/etc/caddy/Caddyfile", input=caddyfile % "one")
    assert cluster.ssh(node, "systemctl is-active caddy", check=False).stdout.strip() == "inactive"
    cluster.ssh(node, "systemctl reload caddy")
    pid = int((root / "run/caddy.pid").read_text())
    upstream = node["appUrl"][len("http://"):-1]
    assert http_get(node["caddyUrl"])[1] == "one " + upstream
    cluster.ssh(node, "cat > $SANDO_NODE_ROOT/etc/caddy/Caddyfile", input=caddyfile % "two")
    cluster.ssh(node, "systemctl reload caddy")
    assert http_get(node["caddyUrl"])[1] == "two " + upstream
    assert int((root / "run/caddy.pid").read_text()) == pid, "reload must not restart"
    assert [v for _, v, _ in cluster.systemctl_log(node, "caddy")] == ["is-active", "reload", "reload"]
    cluster.ssh(node, "systemctl stop caddy")
    assert wait_gone(pid)


# --------------------------------------------------------------------------- the stand-in app


@pytest.mark.skipif(not (APP_DIR / "Cargo.toml").exists(),
                    reason="stand-in app examples/makenotwork/server not present")
def test_makenotwork_app_on_node(cluster):
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.access(cargo, os.X_OK):
        pytest.skip("cargo not installed")
    unit_file = APP_DIR / "deploy" / "makenotwork.service"
    if not unit_file.exists():
        pytest.skip("%s missing" % unit_file)
    target = cluster.base / "cargo-target"
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    b = subprocess.run([cargo, "build", "--manifest-path", str(APP_DIR / "Cargo.toml")], env=env,
                       capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert b.returncode == 0, b.stderr[-4000:]
    binary = target / "debug" / "makenotwork"
    assert binary.exists(), "cargo did not produce %s" % binary

    node = cluster.nodes[2]
    cluster.ssh(node, "set -e; d=$SANDO_NODE_ROOT/opt/makenotwork; mkdir -p $d/releases/t; "
                      "cat > $d/releases/t/makenotwork; chmod 755 $d/releases/t/makenotwork; "
                      "ln -sfn releases/t $d/current", input=binary.read_bytes())
    cluster.ssh(node, "cat > $SANDO_NODE_ROOT/etc/systemd/system/makenotwork.service",
                input=unit_file.read_bytes())
    try:
        p = cluster.ssh(node, "systemctl daemon-reload && systemctl start makenotwork && "
                              "systemctl is-active makenotwork", check=False)
        log = Path(node["root"]) / "var/log/makenotwork.log"
        assert p.returncode == 0 and p.stdout.strip() == "active", (
            p.stdout + p.stderr + (log.read_text() if log.exists() else ""))
        body = ""
        for _ in range(100):
            r = cluster.ssh(node, "curl -s %s" % node["appUrl"], check=False)
            body = r.stdout
            if r.returncode == 0 and body.strip():
                break
            time.sleep(0.1)
        data = json.loads(body)
        assert "version" in data, body

        caddyfile = APP_DIR / "deploy" / "Caddyfile"
        if caddyfile.exists() and os.access("/usr/bin/caddy", os.X_OK):
            cluster.ssh(node, "cat > $SANDO_NODE_ROOT/etc/caddy/Caddyfile", input=caddyfile.read_bytes())
            cluster.ssh(node, "systemctl reload caddy")  # inactive -> started by the shim
            status, via_caddy = http_get(node["caddyUrl"])
            assert status == 200 and "version" in json.loads(via_caddy), via_caddy
    finally:
        cluster.ssh(node, "systemctl stop makenotwork; systemctl stop caddy", check=False)


# --------------------------------------------------------------------------- separate runs


def test_start_twice_restarts_and_refuses_foreign_dir(cluster, tmp_path):
    state = tmp_path / "state2"
    for off in (str(cluster.offset + k) for k in (10, 20, 30, 35)):  # skip addresses busy elsewhere
        p = run_testnodes("start", "1", "--offset", off, "--service-token", "tok123", state=state, check=False)
        if p.returncode == 0:
            break
        assert "already in use" in p.stderr, p.stderr
    a = json.loads(p.stdout)
    pid_a = int((state / "node1" / "sshd.spawned.pid").read_text())
    p = run_testnodes("start", "1", "--offset", off, "--service-token", "tok123", state=state)
    assert "already started" in p.stderr
    b = json.loads(p.stdout)
    assert a[0]["serviceToken"] == b[0]["serviceToken"] == "tok123"
    assert a[0]["hostKey"] != b[0]["hostKey"], "new host key per run"
    assert wait_gone(pid_a)
    assert b[0]["host"] == "127.0.0.%d" % (int(off) + 2)
    run_testnodes("stop", state=state)
    assert not state.exists()
    assert run_testnodes("stop", state=state).returncode == 0

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    p = run_testnodes("start", "1", "--offset", off, state=foreign, check=False)
    assert p.returncode == 1 and "refusing" in p.stderr
    assert (foreign / "keep.txt").exists()
    p = run_testnodes("stop", state=foreign, check=False)
    assert p.returncode == 1 and (foreign / "keep.txt").exists()


# --------------------------------------------------------------------------- stop (keep last)


def test_zz_stop_cleans_up(cluster):
    state = cluster.state
    sshd_pids, unit_pids = [], []
    for node in cluster.nodes:
        sshd_pids.append(int((state / node["name"] / "sshd.spawned.pid").read_text()))
    # leave a unit and an ssh-spawned background process running: stop must get them too
    node = cluster.nodes[0]
    write_unit(cluster, node, "sleeper", "[Service]\nExecStart=/bin/sleep 600\n")
    cluster.ssh(node, "systemctl start sleeper")
    unit_pids.append(int((Path(node["root"]) / "run/sleeper.pid").read_text()))
    cluster.ssh(node, "nohup setsid sleep 601 >/dev/null 2>&1 & echo $! > $SANDO_NODE_ROOT/run/bg.txt")
    unit_pids.append(int((Path(node["root"]) / "run/bg.txt").read_text()))
    for pid in sshd_pids + unit_pids:
        assert not pid_gone(pid)

    run_testnodes("stop", state=state)
    for pid in sshd_pids + unit_pids:
        assert wait_gone(pid, 2.0), "pid %d survived stop" % pid
    assert not state.exists()
    if IS_ROOT:
        for node in cluster.nodes:
            assert subprocess.run(["getent", "passwd", node["user"]], capture_output=True).returncode != 0
            assert not os.path.exists("/home/%s" % node["user"])
    leftovers = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(state) not in leftovers
    assert run_testnodes("status", state=state, check=False).returncode == 3
