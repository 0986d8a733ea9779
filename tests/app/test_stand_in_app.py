"""Tests of the makenotwork stand-in (examples/makenotwork): plain Python, no Pulumi.

The example is copied to a temporary git repository, and a few versions of it
are built once per session (base, crash-at-start, bad migration, destructive
migration, bump); each test runs the binaries it needs and stops them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "makenotwork"
GIT_ID = ["-c", "user.name=sando tests", "-c", "user.email=tests@sando.invalid"]
LISTENING = re.compile(r"makenotwork (\S+) \((\S+)\) listening on (\S+)")

pytestmark = pytest.mark.skipif(
    shutil.which("cargo") is None or shutil.which("git") is None or shutil.which("sqlite3") is None,
    reason="needs cargo, git and the sqlite3 CLI",
)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def run(cmd, cwd=None, env=None, timeout=60, check=True) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"{cmd} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def git(repo: Path, *args: str) -> str:
    return run(["git", *GIT_ID, *args], cwd=repo).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, host: str, port: int, path: str, headers=None, body=None, timeout=5.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Variant:
    name: str
    bin_dir: Path
    pages: Path
    version: str  # git describe --tags --always at build time
    commit: str  # git rev-parse HEAD at build time

    @property
    def server(self) -> Path:
        return self.bin_dir / "makenotwork"

    @property
    def admin(self) -> Path:
        return self.bin_dir / "mnw-admin"


@dataclass
class StandIn:
    repo: Path
    variants: dict[str, Variant]
    build_seconds: dict[str, float]


def _build_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MNW_VERSION", None)
    env["CARGO_TARGET_DIR"] = str(repo / "server" / "target")
    env["CARGO_TERM_COLOR"] = "never"
    return env


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory) -> StandIn:
    root = tmp_path_factory.mktemp("stand-in")
    repo = root / "makenotwork"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("target"))
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "stand-in base")
    git(repo, "tag", "v0.1.0")
    env = _build_env(repo)
    variants: dict[str, Variant] = {}
    seconds: dict[str, float] = {}

    def commit(msg: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", msg)

    def mutate(*args: str) -> None:
        run([repo / "scripts" / "mutate", *args], cwd=repo)

    def build(name: str) -> None:
        t0 = time.monotonic()
        run(["cargo", "build", "--release"], cwd=repo / "server", env=env, timeout=300)
        seconds[name] = time.monotonic() - t0
        out = root / "variants" / name
        out.mkdir(parents=True)
        for b in ("makenotwork", "mnw-admin"):
            shutil.copy2(repo / "server" / "target" / "release" / b, out / b)
        shutil.copytree(repo / "server" / "deploy" / "error-pages", out / "error-pages")
        variants[name] = Variant(
            name=name,
            bin_dir=out,
            pages=out / "error-pages",
            version=git(repo, "describe", "--tags", "--always"),
            commit=git(repo, "rev-parse", "HEAD"),
        )

    build("base")

    mutate("crash-at-start")
    commit("crash at start")
    build("crash")

    mutate("fix")
    mutate("bad-migration")
    commit("fix, bad migration")
    build("bad-migration")

    git(repo, "reset", "-q", "--hard", "v0.1.0")
    mutate("destructive-migration")
    commit("destructive migration")
    build("destructive")

    git(repo, "reset", "-q", "--hard", "v0.1.0")
    mutate("bump", "label-two")
    commit("bump")
    build("bump")

    return StandIn(repo=repo, variants=variants, build_seconds=seconds)


class Procs:
    """Processes started by a test; all stopped at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.items: list[tuple[subprocess.Popen, list]] = []
        self.n = 0

    def start(self, cmd, env: dict[str, str], name: str):
        self.n += 1
        out_path = self.tmp / f"{self.n:02d}-{name}.out"
        err_path = self.tmp / f"{self.n:02d}-{name}.err"
        out, err = open(out_path, "w"), open(err_path, "w")
        p = subprocess.Popen(
            [str(c) for c in cmd], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.items.append((p, [out, err]))
        return p, out_path, err_path

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def close(self) -> None:
        for p, files in self.items:
            self.stop(p)
            for f in files:
                f.close()


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    yield ps
    ps.close()


def app_env(db: Path, bind: str = "127.0.0.1:0", **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_PATH": str(db), "MNW_BIND": bind}
    env.update(extra)
    return env


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_app(procs: Procs, variant: Variant, db: Path, **extra: str):
    """Start a server on a free port; returns (proc, port, stdout path, stderr path)."""
    p, out, err = procs.start([variant.server], app_env(db, **extra), f"app-{variant.name}")

    def listening():
        if p.poll() is not None:
            raise AssertionError(f"server exited {p.returncode}:\n{out.read_text()}\n{err.read_text()}")
        m = LISTENING.search(out.read_text())
        return m

    m = wait_for(listening, what="the server's listening line")
    port = int(m.group(3).rsplit(":", 1)[1])
    return p, port, out, err


def migrations_in(db: Path) -> list[tuple]:
    with closing(sqlite3.connect(db)) as c:
        return c.execute(
            "SELECT version, description, success FROM _sqlx_migrations ORDER BY version"
        ).fetchall()


def tables_in(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# ---------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------


def test_versions_are_git_describe_and_commit(stand_in):
    base = stand_in.variants["base"]
    assert base.version == "v0.1.0"
    assert re.fullmatch(r"[0-9a-f]{40}", base.commit)
    # Later commits describe as v0.1.0-1-g<sha>: each build picked up its commit.
    assert stand_in.variants["crash"].version.startswith("v0.1.0-1-g")
    commits = {v.commit for v in stand_in.variants.values()}
    assert len(commits) == len(stand_in.variants)


def test_get_root_reports_version_and_commit(stand_in, procs, tmp_path):
    base = stand_in.variants["base"]
    p, port, out, _ = start_app(procs, base, tmp_path / "db" / "mnw.db")
    status, body = request("GET", "127.0.0.1", port, "/")
    assert status == 200
    assert body.endswith("\n") and body.count("\n") == 1
    assert json.loads(body) == {"name": "makenotwork", "version": base.version, "commit": base.commit}
    assert f"makenotwork {base.version} ({base.commit}) listening on 127.0.0.1:{port}" in out.read_text()
    assert request("GET", "127.0.0.1", port, "/nope")[0] == 404
    assert request("POST", "127.0.0.1", port, "/")[0] == 405
    # curl, if present, gets the same (Connection: close, HTTP/1.1).
    if shutil.which("curl"):
        cp = run(["curl", "-sf", f"http://127.0.0.1:{port}/"])
        assert json.loads(cp.stdout)["commit"] == base.commit


def test_bump_adds_label_and_rewrites_error_pages(stand_in, procs, tmp_path):
    bump = stand_in.variants["bump"]
    _, port, _, _ = start_app(procs, bump, tmp_path / "mnw.db")
    doc = json.loads(request("GET", "127.0.0.1", port, "/")[1])
    assert doc["label"] == "label-two" and doc["commit"] == bump.commit
    for code in ("404", "502", "503"):
        assert "<!-- mnw-error-page version: label-two -->" in (bump.pages / f"{code}.html").read_text()
        assert "<!-- mnw-error-page version: dev -->" in (
            stand_in.variants["base"].pages / f"{code}.html"
        ).read_text()


def test_restart_warning_token(stand_in, procs, tmp_path):
    base = stand_in.variants["base"]
    right, wrong = "tok-right-5f3a9c", "tok-WRONG-81d2e7"
    p, port, out, err = start_app(procs, base, tmp_path / "mnw.db", CLI_SERVICE_TOKEN=right)
    path = "/api/internal/restart-warning"

    before = time.time()
    status, _ = request("POST", "127.0.0.1", port, path,
                     {"Authorization": f"Bearer {right}", "Content-Type": "application/json"},
                     json.dumps({"seconds": 30}))
    assert status == 200
    m = re.search(r"restart-warning: received at=(\d+\.\d{3}) seconds=30\n", out.read_text())
    assert m, out.read_text()
    assert before - 1 <= float(m.group(1)) <= time.time() + 1

    status, _ = request("POST", "127.0.0.1", port, path + "?seconds=45", {"Authorization": f"Bearer {right}"})
    assert status == 200
    assert re.search(r"received at=\S+ seconds=45\n", out.read_text())

    status, _ = request("POST", "127.0.0.1", port, path, {"Authorization": f"Bearer {right}"}, "")
    assert status == 200
    assert re.search(r"received at=\S+ seconds=\?\n", out.read_text())

    assert request("POST", "127.0.0.1", port, path, {"Authorization": f"Bearer {wrong}"}, '{"seconds":5}')[0] == 401
    assert request("POST", "127.0.0.1", port, path, {}, '{"seconds":5}')[0] == 401
    assert out.read_text().count("restart-warning: rejected (bad token)") == 2
    assert request("GET", "127.0.0.1", port, path)[0] == 405

    procs.stop(p)
    logs = out.read_text() + err.read_text()
    assert right not in logs and wrong not in logs


def test_restart_warning_refused_without_token_env(stand_in, procs, tmp_path):
    base = stand_in.variants["base"]
    _, port, out, _ = start_app(procs, base, tmp_path / "mnw.db", CLI_SERVICE_TOKEN="")
    status, _ = request("POST", "127.0.0.1", port, "/api/internal/restart-warning",
                     {"Authorization": "Bearer "}, '{"seconds":1}')
    assert status == 401
    status, _ = request("POST", "127.0.0.1", port, "/api/internal/restart-warning",
                     {"Authorization": "Bearer anything"}, '{"seconds":1}')
    assert status == 401
    assert "restart-warning: received" not in out.read_text()


def test_migrations_applied_and_recorded(stand_in, procs, tmp_path):
    base = stand_in.variants["base"]
    db = tmp_path / "data" / "mnw.db"  # the directory does not exist yet
    p, _, out, _ = start_app(procs, base, db)
    assert "applied migration 1 init" in out.read_text()
    assert migrations_in(db) == [(1, "init", 1)]
    assert {"notes", "note_tags", "_sqlx_migrations"} <= tables_in(db)
    procs.stop(p)
    # A second start has nothing to apply.
    _, _, out2, _ = start_app(procs, base, db)
    assert "applied migration" not in out2.read_text()
    assert migrations_in(db) == [(1, "init", 1)]


def test_crash_at_start_build_exits_1(stand_in, procs, tmp_path):
    crash = stand_in.variants["crash"]
    port = free_port()
    p, out, err = procs.start([crash.server], app_env(tmp_path / "mnw.db", f"127.0.0.1:{port}"), "crash")
    assert p.wait(10) == 1
    assert "crash-at-start build: exiting" in err.read_text()
    assert "listening" not in out.read_text()
    assert not port_open(port)
    # The admin tool of that build still works.
    assert run([crash.admin, "version"]).stdout.split() == [crash.version, crash.commit]


def test_bad_migration_exits_3_and_does_not_listen(stand_in, procs, tmp_path):
    bad = stand_in.variants["bad-migration"]
    db = tmp_path / "mnw.db"
    port = free_port()
    p, out, err = procs.start([bad.server], app_env(db, f"127.0.0.1:{port}"), "bad")
    assert p.wait(10) == 3
    assert re.search(r"^migration 2 failed: .*table_that_does_not_exist", err.read_text(), re.M), err.read_text()
    assert "crash-at-start" not in err.read_text()  # `mutate fix` was picked up
    assert "listening" not in out.read_text()
    assert not port_open(port)
    # 0001 applied, 0002 rolled back entirely.
    assert migrations_in(db) == [(1, "init", 1)]


# ---------------------------------------------------------------------------
# mnw-admin
# ---------------------------------------------------------------------------


def test_admin_version_and_usage(stand_in):
    for v in stand_in.variants.values():
        cp = run([v.admin, "version"])
        assert cp.stdout == f"{v.version} {v.commit}\n"
    cp = run([stand_in.variants["base"].admin, "frobnicate"], check=False)
    assert cp.returncode == 2 and "usage" in cp.stderr
    cp = run([stand_in.variants["base"].admin, "migrate", "--bogus"], check=False)
    assert cp.returncode == 2 and "usage" in cp.stderr


def test_admin_dry_run(stand_in, tmp_path):
    v = stand_in.variants
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    db = dbdir / "mnw.db"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(scratch)}

    def admin(variant: str, *args: str) -> subprocess.CompletedProcess:
        return run([v[variant].admin, "migrate", *args], env=env, check=False)

    cp = admin("base", "--database", str(db))
    assert cp.returncode == 0 and cp.stdout == "applied 1 init\nmigrate ok\n"
    with closing(sqlite3.connect(db)) as c:
        c.execute("INSERT INTO note_tags (note_id, tag) VALUES (1, 'x')")
        c.commit()
    digest, mtime = sha256(db), db.stat().st_mtime_ns
    files = sorted(os.listdir(dbdir))

    # Nothing pending for the base build.
    cp = admin("base", "--dry-run", "--database", str(db))
    assert (cp.returncode, cp.stdout) == (0, "dry-run ok\n")

    # Destructive migration: reported, refused (4) unless allowed.
    cp = admin("destructive", "--dry-run", "--database", str(db))
    assert cp.returncode == 4, cp
    assert cp.stdout == "pending 2 drop note tags [destructive]\ndestructive migration pending\n"
    cp = admin("destructive", "--dry-run", "--allow-destructive", f"--database={db}")
    assert cp.returncode == 0, cp
    assert cp.stdout == "pending 2 drop note tags [destructive]\ndry-run ok\n"

    # Failing migration: 3.
    cp = admin("bad-migration", "--dry-run", "--database", str(db))
    assert cp.returncode == 3, cp
    assert cp.stdout.splitlines()[0] == "pending 2 bad migration"
    assert cp.stdout.splitlines()[-1].startswith("dry-run failed at 2: ")
    assert "table_that_does_not_exist" in cp.stdout

    # The real database was never touched, and no temp copy is left behind.
    assert (sha256(db), db.stat().st_mtime_ns) == (digest, mtime)
    assert sorted(os.listdir(dbdir)) == files
    assert migrations_in(db) == [(1, "init", 1)]
    assert os.listdir(scratch) == []

    # DATABASE_PATH is the default; a missing database is not created.
    missing = dbdir / "missing.db"
    cp = run([v["destructive"].admin, "migrate", "--dry-run"], env={**env, "DATABASE_PATH": str(missing)},
             check=False)
    assert cp.returncode == 4
    assert cp.stdout.splitlines() == [
        "pending 1 init", "pending 2 drop note tags [destructive]", "destructive migration pending",
    ]
    assert not missing.exists()

    # The real migration applies it.
    cp = admin("destructive", "--database", str(db))
    assert cp.returncode == 0 and "applied 2 drop note tags" in cp.stdout
    assert "note_tags" not in tables_in(db)
    assert [m[0] for m in migrations_in(db)] == [1, 2]


def test_older_build_starts_on_newer_database(stand_in, procs, tmp_path):
    """Rollback: the base build starts on a database with migration 2 (warning only)."""
    db = tmp_path / "mnw.db"
    run([stand_in.variants["destructive"].admin, "migrate", "--database", db])
    _, _, _, err = start_app(procs, stand_in.variants["base"], db)
    assert "migration 2 was applied to the database but is unknown to this build" in err.read_text()
    p, out, err2 = procs.start([stand_in.variants["base"].server],
                               app_env(db, MNW_STRICT_MIGRATIONS="1"), "strict")
    assert p.wait(10) == 3


# ---------------------------------------------------------------------------
# deploy files
# ---------------------------------------------------------------------------


def test_backup_db_script(stand_in, tmp_path):
    db = tmp_path / "mnw.db"
    run([stand_in.variants["base"].admin, "migrate", "--database", db])
    backups = tmp_path / "backups"
    backups.mkdir()
    for day in range(1, 16):  # 15 old dumps
        (backups / f"mnw-202001{day:02d}T000000Z.sql.gz").write_bytes(gzip.compress(b"old"))
    env = {"PATH": os.environ["PATH"], "DATABASE_PATH": str(db), "BACKUP_DIR": str(backups)}
    cp = run(["bash", EXAMPLE / "server" / "deploy" / "backup-db.sh"], env=env)
    newest = Path(cp.stdout.strip().split("backup: ", 1)[1])
    dumps = sorted(backups.glob("mnw-*.sql.gz"))
    assert len(dumps) == 14 and dumps[-1] == newest
    assert (backups / "latest.sql.gz").stat().st_ino == newest.stat().st_ino
    sql = gzip.decompress(newest.read_bytes()).decode()
    assert "CREATE TABLE notes" in sql and "_sqlx_migrations" in sql
    # A missing database is an error, not an empty dump.
    cp = run(["bash", EXAMPLE / "server" / "deploy" / "backup-db.sh"],
             env={**env, "DATABASE_PATH": str(tmp_path / "nope.db")}, check=False)
    assert cp.returncode != 0 and not (tmp_path / "nope.db").exists()


def test_deploy_inventory():
    deploy = EXAMPLE / "server" / "deploy"
    for name in ("Caddyfile", "makenotwork.service", "sshd-git.conf", "fail2ban-sshd.conf",
                 "setup-firewall.sh", "backup-db.sh", "error-pages/404.html",
                 "error-pages/502.html", "error-pages/503.html"):
        assert (deploy / name).is_file(), name
    unit = (deploy / "makenotwork.service").read_text()
    for line in ("EnvironmentFile=-/etc/makenotwork/makenotwork.env", "WorkingDirectory=/opt/makenotwork",
                 "ExecStart=/opt/makenotwork/current/makenotwork", "Restart=on-failure",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    assert not re.search(r"^User=", unit, re.M)
    for script in ("setup-firewall.sh", "backup-db.sh"):
        run(["bash", "-n", deploy / script])
        assert os.access(deploy / script, os.X_OK)


def test_mutate_usage(tmp_path):
    cp = run([EXAMPLE / "scripts" / "mutate", "nonsense"], cwd=EXAMPLE, check=False)
    assert cp.returncode == 2 and "bump LABEL" in cp.stderr


# ---------------------------------------------------------------------------
# Caddy
# ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (apt-get install caddy)")
def test_caddy_proxy_error_pages_and_reload(stand_in, procs, tmp_path):
    base, bump = stand_in.variants["base"], stand_in.variants["bump"]
    _, bump_port, _, _ = start_app(procs, bump, tmp_path / "a.db")
    base_proc, base_port, _, _ = start_app(procs, base, tmp_path / "b.db")

    root = tmp_path / "root"
    (root / "opt" / "makenotwork").mkdir(parents=True)
    link = root / "opt" / "makenotwork" / "error-pages"
    link.symlink_to(bump.pages)
    http_port, admin_port = free_port(), free_port()
    caddyfile = EXAMPLE / "server" / "deploy" / "Caddyfile"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "CADDY_ADMIN": f"127.0.0.1:{admin_port}",
        "MNW_HTTP_ADDR": f":{http_port}",
        "MNW_UPSTREAM": f"127.0.0.1:{bump_port}",
        "MNW_ROOT": str(root),
    }
    caddy, out, err = procs.start(["caddy", "run", "--adapter", "caddyfile", "--config", caddyfile],
                                  env, "caddy")

    def error_page():
        if caddy.poll() is not None:
            raise AssertionError(f"caddy exited {caddy.returncode}:\n{err.read_text()}")
        try:
            return request("GET", "127.0.0.1", http_port, "/__mnw_error_test")
        except OSError:
            return None

    status, body = wait_for(error_page, timeout=15, what="caddy")
    assert status == 503
    assert "<!-- mnw-error-page version: label-two -->" in body and "Service unavailable" in body
    status, body = request("GET", "127.0.0.1", http_port, "/__mnw_error_test/404")
    assert status == 404 and "version: label-two" in body and "Not found" in body

    status, body = request("GET", "127.0.0.1", http_port, "/")
    assert status == 200
    assert json.loads(body) == {"name": "makenotwork", "version": bump.version, "commit": bump.commit,
                                "label": "label-two"}

    # Switch release: new symlink target, new upstream, `caddy reload`.
    tmp_link = link.with_name("error-pages.new")
    tmp_link.symlink_to(base.pages)
    os.replace(tmp_link, link)
    run(["caddy", "reload", "--adapter", "caddyfile", "--config", caddyfile,
         "--address", f"127.0.0.1:{admin_port}"],
        env={**env, "MNW_UPSTREAM": f"127.0.0.1:{base_port}"}, timeout=30)
    status, body = request("GET", "127.0.0.1", http_port, "/")
    assert status == 200 and json.loads(body)["commit"] == base.commit
    status, body = request("GET", "127.0.0.1", http_port, "/__mnw_error_test")
    assert status == 503 and "<!-- mnw-error-page version: dev -->" in body

    # App down: Caddy serves the 502 page.
    procs.stop(base_proc)
    status, body = request("GET", "127.0.0.1", http_port, "/")
    assert status == 502 and "<!-- mnw-error-page version: dev -->" in body and "Bad gateway" in body
