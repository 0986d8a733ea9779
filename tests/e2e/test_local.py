"""Issue 21: a local node (`sando:nodes[i].local: true`, testnot on the operator's own machine),
through the real engine on real systemd: sando runs INSIDE a test node (its root is an overlay
of this machine's `/`: the checkout, .tools and the test's files are visible there) with that
node as its local node: no SSH, no key. As root, as a user with passwordless sudo, and as a
user without sudo (one line at preview, nothing changed).

This machine's .venv does not run in a node (the node hides /root, where its Python lives):
.tools/sysvenv, a venv of the system /usr/bin/python3 made by `make setup`, is handed over with
SANDO_VENV. The stand-in's versions are built here first into the build cache the node's sando
uses (cargo lives under /root too): sando in the node finds the local build's artifacts there,
as on an operator's machine, and takes the release files from them by hard link."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from sando_components import build
from sando_components.config import SourceConfig
from tests.support import (EXAMPLE, PASSPHRASE, PROJECT_FILES, REPO, TOOLS, AppRepo, Node, TestNodes, operator_errors,
                           wait_for)

SYSVENV = TOOLS / "sysvenv"
BINS = ["makenotwork", "mnw-admin"]
ROOT = "/opt/makenotwork"


@pytest.fixture(scope="module")
def sysvenv() -> Path:
    """The system-python venv (make setup builds it; made here once if it is missing)."""
    if not (SYSVENV / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(SYSVENV)], check=True)
        subprocess.run([str(SYSVENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "-r", str(REPO / "requirements.txt")], check=True)
    return SYSVENV


@pytest.fixture(scope="module")
def shared():
    """Where the files a node must see live: a node hides this machine's /tmp and /var/tmp (and
    /root), so not pytest's tmp_path: a dir of the checkout (.cache/, ignored by git)."""
    base = REPO / ".cache" / "test-local" / uuid.uuid4().hex[:10]
    base.mkdir(parents=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def local_app(shared):
    """v1, v2 (a bump), v3 (exits at start), v4 (a failing migration), built into a cache."""
    r = AppRepo(shared / "app" / "makenotwork")
    r.version("v2")
    base = r.commit("v2")
    r.version("v3", ("crash-at-start",))
    r.git("reset", "-q", "--hard", base)
    r.version("v4", ("bad-migration",))
    r.git("reset", "-q", "--hard", base)
    cache = shared / "cache"
    src = SourceConfig(repo=str(r.path))
    old = os.environ.get("SANDO_CACHE_DIR")
    os.environ["SANDO_CACHE_DIR"] = str(cache)
    try:
        for v in ("v1", "v2", "v3", "v4"):
            build.ensure_built(str(r.path), r.commit(v), src.build_command, src.bin_dir, src.error_pages_dir, BINS)
    finally:
        if old is None:
            os.environ.pop("SANDO_CACHE_DIR", None)
        else:
            os.environ["SANDO_CACHE_DIR"] = old
    return r, cache


class LocalSando:
    """A sando project inside `node`, run there by `user` (root or a login of the node), with the
    node itself as its one node: `{name: testnot, local: true}`."""

    def __init__(self, node: Node, user: str, repo: AppRepo, cache: Path, project: Path, sudo: bool = False):
        self.node, self.user, self.repo = node, user, repo
        self.home = "/root" if user == "root" else f"/home/{user}"
        self.name = f"local-{user}"
        if user != "root":
            node.exec("useradd", "-m", "-s", "/bin/sh", user, check=True)
            if sudo:
                node.exec("sh", "-c", f"printf '%s\\n' '{user} ALL=(root) NOPASSWD: /bin/sh' "
                                      f"> /etc/sudoers.d/{user} && chmod 0440 /etc/sudoers.d/{user}", check=True)
        env = {
            "HOME": self.home, "USER": user, "LOGNAME": user,
            "PATH": f"{TOOLS / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PULUMI_HOME": f"{self.home}/pulumi-home", "PULUMI_BACKEND_URL": f"file://{self.home}/state",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE, "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true", "PULUMI_PARALLEL": "64", "PULUMI_SKIP_CHECKPOINTS": "true",
            "SANDO_VENV": str(SYSVENV), "SANDO_CACHE_DIR": f"{self.home}/cache",
        }
        envfile = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        # the project, the stand-in's build cache and the environment (the passphrase: a file, not argv)
        node.exec("sh", "-c", textwrap.dedent(f"""\
            set -e
            mkdir -p {self.home}/state {self.home}/pulumi-home
            cp -a {shlex.quote(str(project))} {self.home}/project
            cp -a {shlex.quote(str(cache))} {self.home}/cache
            cat > {self.home}/env
            chmod 0600 {self.home}/env
            chown -R {user}: {self.home}
            """), input=envfile, check=True)
        # the stand-in's repo is this machine's root's: git refuses another owner's repo unless told
        self.sh(f"git config --global --add safe.directory {shlex.quote(str(repo.path))}")
        self.pulumi("stack", "init")
        self.set(version="v1", source={"repo": str(repo.path)}, binNames=BINS,
                 nodes=[{"name": "testnot", "local": True}], bootstrap={"ref": "main"},
                 healthCheck={"timeoutSeconds": 10, "intervalSeconds": 0.2, "expectVersion": True})

    def sh(self, script: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """`script` in the node as the user, in the project dir, with the sando environment."""
        full = f". {self.home}/env && cd {self.home}/project && {script}"
        cmd = ("sh", "-c", full) if self.user == "root" else ("runuser", "-u", self.user, "--", "sh", "-c", full)
        res = self.node.exec(*cmd, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{script} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sh(shlex.join(["pulumi", *args, "--stack", self.name, "--non-interactive", "--color", "never"]),
                       check=check)

    def sando(self, *args: str) -> subprocess.CompletedProcess:
        """sando's own CLI in the node, as the user, on this project (its copy of sando_components)."""
        return self.sh(shlex.join([f"{SYSVENV}/bin/python", "-m", "sando_components.cli", "--cwd", ".", *args]),
                       check=False)

    def set(self, **values) -> None:
        for k, v in values.items():
            self.pulumi("config", "set", f"sando:{k}", v if isinstance(v, str) else json.dumps(v))

    def up(self) -> str:
        res = self.pulumi("up", "--yes", "--skip-preview")
        return res.stdout

    def up_fails(self) -> str:
        res = self.pulumi("up", "--yes", "--skip-preview", check=False)
        assert res.returncode != 0, f"pulumi up succeeded but was expected to fail:\n{res.stdout}"
        return res.stdout + res.stderr

    def preview(self, check: bool = True) -> subprocess.CompletedProcess:
        return self.pulumi("preview", "--diff", check=check)

    def planned(self) -> dict[str, str]:
        """{resource name: op} of what a preview would change (provider registrations left out)."""
        steps = json.loads(self.pulumi("preview", "--json").stdout).get("steps", [])
        return {st["urn"].split("::")[-1]: st["op"] for st in steps
                if st["op"] not in ("same", "read", "refresh") and "::pulumi:providers:" not in st["urn"]}

    def out(self) -> dict:
        return json.loads(self.pulumi("stack", "output", "nodes", "--json").stdout)["testnot"]

    def destroy(self) -> None:
        self.pulumi("destroy", "--yes", "--skip-preview")
        self.pulumi("stack", "rm", "--yes")


def errors(text: str) -> list[str]:
    """The operator-facing error lines (tests.support: the verdict's lines, without Pulumi's framing)."""
    return operator_errors(text)


@pytest.fixture
def local_node(tmp_path, shared, local_app, sysvenv):
    """One test node and a copy of the sando project, made before it boots (a node does not
    always see what this machine writes after it booted)."""
    repo, cache = local_app
    project = shared / f"project-{tmp_path.name}"
    project.mkdir()
    for f in PROJECT_FILES:
        src = REPO / f
        if src.is_dir():
            shutil.copytree(src, project / f, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, project / f)
    nodes = TestNodes(1, tmp_path / "nodes")
    try:
        yield nodes.nodes[0], repo, cache, project
    finally:
        nodes.stop()


def built(cache: Path, repo: AppRepo, version: str) -> dict[str, str]:
    """{relative path: sha256} of a version's build in the cache."""
    index = json.loads((cache / "builds" / repo.commit(version) / "artifacts.json").read_text())
    return {rel: digest for rel, digest, _ in index["files"]}


def current(node: Node) -> str:
    return node.exec("readlink", f"{ROOT}/current", check=True).stdout.strip()


def inode(node: Node, path: str) -> str:
    return node.exec("stat", "-c", "%d:%i", path, check=True).stdout.strip()


def scenarios(s: LocalSando, repo: AppRepo, cache: Path) -> None:
    """bootstrap, bump, rollback by pin, a crash at start switched back, the gate refusing a
    failing migration, a hand-moved `current` put back: each read on the node itself."""
    node = s.node
    # bootstrap: files, unit, release, switch; the release files are the build's, by hard link
    s.up()
    assert current(node) == "releases/v1" and node.served()["version"] == "v1"
    assert node.exec("systemctl", "is-active", "makenotwork").stdout.strip() == "active"
    out = s.out()
    assert (out["liveVersion"], out["liveCommit"]) == ("v1", repo.commit("v1"))
    files = built(cache, repo, "v1")
    t = out["lastTransfer"]
    assert (t["version"], t["bytesSent"], t["local"], t["linked"], t["patched"], t["full"]) == (
        "v1", 0, len(files), 0, 0, 0)
    art = f"{s.home}/cache/builds/{repo.commit('v1')}/artifacts/makenotwork"
    assert inode(node, f"{ROOT}/releases/v1/makenotwork") == inode(node, art)  # a hard link: 0 bytes copied
    assert node.exec("stat", "-c", "%U", f"{ROOT}/releases/v1/makenotwork").stdout.strip() == "root"

    # bump
    s.set(version="v2")
    s.up()
    assert current(node) == "releases/v2" and node.served()["version"] == "v2"
    t = s.out()["lastTransfer"]
    changed = {rel for rel, digest in built(cache, repo, "v2").items() if files.get(rel) != digest}
    assert changed  # (a bump changes every file of the stand-in: the mixed case is in tests/unit/test_local.py)
    assert (t["version"], t["bytesSent"], t["local"], t["linked"], t["patched"], t["full"]) == (
        "v2", 0, len(changed), len(files) - len(changed), 0, 0)

    # day two on the local node: status, logs and a command, each through a local shell (under
    # sudo -n when not root), not SSH: the node has no host key to pin
    res = s.sando("status", s.name, "--json")
    assert res.returncode == 0, res.stderr
    [st] = json.loads(res.stdout)["stacks"]
    [n] = st["nodes"]
    assert (n["node"], n["reachable"], n["liveVersion"], n["unit"]) == ("testnot", True, "v2", "active running"), n
    res = s.sando("logs", "-s", s.name, "testnot", "-n", "50")
    assert res.returncode == 0 and re.search(r" makenotwork v2 \(\w+\) listening on ", res.stdout), res
    res = s.sando("ssh", "-s", s.name, "testnot", "--", f"id -u; readlink {ROOT}/current; ls /no-such-dir; exit 5")
    assert (res.returncode, res.stdout) == (5, "0\nreleases/v2\n") and "no-such-dir" in res.stderr, res
    # a follow whose sando is killed outright: its journalctl ends too, on a quiet unit (nothing
    # to write), also under sudo, whose setuid exec drops the parent-death signal (journalctl -f
    # ends when the reader of its stdout is gone)
    follow = shlex.join([f"{SYSVENV}/bin/python", "-m", "sando_components.cli", "--cwd", ".", "logs", "-s", s.name,
                         "testnot", "-f", "-n", "0"])
    res = s.sh(f"""true
        {follow} >/dev/null 2>&1 &
        p=$!; i=0
        until pgrep -x journalctl >/dev/null; do i=$((i + 1)); [ $i -lt 600 ] || exit 11; sleep 0.1; done
        kill -9 $p; i=0
        while pgrep -x journalctl >/dev/null; do i=$((i + 1)); [ $i -lt 150 ] || exit 12; sleep 0.1; done""",
               check=False)
    assert res.returncode == 0, f"exit {res.returncode} (11: it never followed, 12: journalctl outlived sando) {res}"

    # `sando restart` and `sando rollback` on the local node: the restart through a local shell,
    # the rollback a `pulumi up` of the pin, as the CLI runs it in the project
    starts = len(node.restart_times("makenotwork"))
    res = s.sando("restart", "-s", s.name, "testnot", "--yes")
    assert res.returncode == 0 and "sando: testnot: restarted, healthy now" in res.stdout, res
    assert len(node.restart_times("makenotwork")) == starts + 1 and node.served()["version"] == "v2"
    res = s.sando("rollback", "-s", s.name, "--yes")
    assert res.returncode == 0, res
    assert f"roll {s.name} back from v2 to v1" in res.stdout, res.stdout

    # that rollback is a pin: a retained release, nothing taken again
    assert s.pulumi("config", "get", "sando:version").stdout.strip() == "v1"
    assert current(node) == "releases/v1" and node.served()["version"] == "v1"
    out = s.out()
    t = out["lastTransfer"]
    assert out["previousVersion"] == "v2"
    assert (t["version"], t["bytesSent"], t["linked"], t["full"]) == ("v1", 0, len(files), 0) and "local" not in t

    # a version that exits at start: switched back, the run fails naming the node
    s.set(version="v3")
    seen = s.up_fails()
    error, *quoted = errors(seen)  # the node's error, then the journal lines it quotes
    assert error == ("testnot: v3 exited at start (makenotwork.service activating/auto-restart); v1 is live again. "
                     "Last lines of its journal:"), seen
    assert "crash-at-start build: exiting" in quoted, quoted
    assert current(node) == "releases/v1" and node.served()["version"] == "v1"

    # the gate: v4's migration fails on a copy of the live database; nothing restarted
    starts = len(node.restart_times("makenotwork"))
    s.set(version="v4")
    seen = s.up_fails()
    (error,) = errors(seen)
    assert error.startswith("testnot: v4's migrations fail on a copy of the live database"), seen
    assert "v1 stays live" in error
    assert len(node.restart_times("makenotwork")) == starts and node.served()["version"] == "v1"

    # a hand-moved current: seen by a plain preview, put back by a plain up
    s.set(version="v2")
    s.up()
    node.exec("sh", "-c", f"ln -sfn releases/v1 {ROOT}/current.byhand && mv -T {ROOT}/current.byhand {ROOT}/current"
                          " && systemctl restart makenotwork", check=True)
    wait_for(lambda: node.served()["version"] == "v1")
    assert s.planned() == {"testnot-current-switch": "update"}  # a plain preview (no --refresh) sees it
    s.up()
    assert current(node) == "releases/v2" and node.served()["version"] == "v2"
    s.destroy()


def test_local_node_as_root(local_node):
    node, repo, cache, project = local_node
    s = LocalSando(node, "root", repo, cache, project)
    scenarios(s, repo, cache)


def test_local_node_with_sudo_and_without(local_node):
    node, repo, cache, project = local_node
    # a user without sudo: the first read fails at preview, in one line; nothing changed on the node
    look = f"ls -A {ROOT}; ls /etc/systemd/system; md5sum /etc/caddy/Caddyfile; ls /etc/cron.d"
    before = node.exec("sh", "-c", look, check=True).stdout
    nosudo = LocalSando(node, "plain", repo, cache, project)
    res = nosudo.preview(check=False)
    assert res.returncode != 0
    (error,) = errors(res.stdout + res.stderr)
    assert error == ("testnot (local, as plain): sudo would ask plain for a password, and sando never types "
                     "one: run `sudo -v` in this terminal first, or add the sudoers rule `plain ALL=(root) NOPASSWD: "
                     "/bin/sh` (visudo -f /etc/sudoers.d/sando), or run sando as root"), res.stdout
    assert (res.stdout + res.stderr).count("sudo would ask") == 1, res.stdout
    seen = nosudo.up_fails()
    assert errors(seen) == [error]
    assert node.exec("sh", "-c", look, check=True).stdout == before
    # a user with passwordless sudo: every scenario, each node-side step under sudo -n
    s = LocalSando(node, "op", repo, cache, project, sudo=True)
    scenarios(s, repo, cache)
    sudo_log = node.exec("journalctl", "--no-pager", "-t", "sudo", check=True).stdout
    assert "op : PWD=/ ; USER=root ; COMMAND=/bin/sh -c" in sudo_log
