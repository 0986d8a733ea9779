"""Tests for tests/realistic.py (the realistic makenotwork fixture as a git repo).

The fast tests only assemble repos (git, no cargo). Building the fixture takes ~2 minutes
cold (tokio, axum, sqlx with a bundled SQLite), so that test runs only with
SANDO_REALISTIC_BUILD=1:
    SANDO_REALISTIC_BUILD=1 python3 -m pytest -q tests/harness/test_realistic.py
"""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.realistic import BIN_NAMES, REALISTIC, STAND_IN_DEPLOY, bump, build, git, make_realistic_repo


def test_repo_layout_tag_and_one_line_bump(tmp_path):
    repo = make_realistic_repo(tmp_path / "mnw")
    files = set(git(repo, "ls-files").split())
    assert {"server/Cargo.toml", "server/Cargo.lock", "server/build.rs", "server/migrations/0001_init.sql",
            "server/src/lib.rs", "server/src/bin/makenotwork.rs", "server/src/bin/mnw-admin.rs",
            "server/deploy/Caddyfile", "server/deploy/makenotwork.service",
            "server/deploy/error-pages/503.html", ".gitignore"} <= files
    assert not any("/target/" in f for f in files)
    deploy = sorted(p.relative_to(STAND_IN_DEPLOY).as_posix() for p in STAND_IN_DEPLOY.rglob("*") if p.is_file())
    assert sorted(f[len("server/deploy/"):] for f in files if f.startswith("server/deploy/")) == deploy
    assert os.access(repo / "server" / "deploy" / "backup-db.sh", os.X_OK)  # modes kept
    assert git(repo, "status", "--porcelain") == ""
    v1 = git(repo, "rev-parse", "v1^{commit}").strip()
    assert git(repo, "describe", "--tags", "--always").strip() == "v1"

    c2 = bump(repo, "v2")
    assert c2 == git(repo, "rev-parse", "HEAD").strip() != v1
    assert git(repo, "describe", "--tags", "--always").strip() == "v2"
    assert git(repo, "diff", "--numstat", "v1", "v2").split() == ["1", "1", "server/src/lib.rs"]
    diff = [ln for ln in git(repo, "diff", "-U0", "v1", "v2").splitlines() if ln[:1] in "+-" and ln[:3] not in
            ("+++", "---")]
    assert diff == ['-pub const LABEL: &str = "";', '+pub const LABEL: &str = "v2";']
    bump(repo, "v3")
    assert git(repo, "tag", "--list").split() == ["v1", "v2", "v3"]
    with pytest.raises(ValueError):
        bump(repo, "bad tag")
    with pytest.raises(FileExistsError):
        make_realistic_repo(repo)


def test_fixture_declares_the_crates_of_a_real_service():
    toml = (REALISTIC / "Cargo.toml").read_text()
    lock = (REALISTIC / "Cargo.lock").read_text()
    for crate in ("tokio", "axum", "sqlx", "serde", "serde_json", "tracing"):
        assert f'\n{crate} = ' in toml
        assert f'name = "{crate}"' in lock
    assert 'sqlx::migrate!("./migrations")' in (REALISTIC / "src" / "lib.rs").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(os.environ.get("SANDO_REALISTIC_BUILD") != "1" or not shutil.which("cargo"),
                    reason="builds tokio/axum/sqlx (~2 min cold): set SANDO_REALISTIC_BUILD=1")
def test_build_serve_and_admin(tmp_path):
    repo = make_realistic_repo(tmp_path / "mnw")
    bump(repo, "v2")
    bins = build(repo)
    assert [b.name for b in bins] == BIN_NAMES and all(os.access(b, os.X_OK) for b in bins)
    commit = git(repo, "rev-parse", "HEAD").strip()
    admin = subprocess.run([str(bins[1]), "version"], capture_output=True, text=True, check=True)
    assert admin.stdout == f"v2 {commit}\n"

    port = free_port()
    db = tmp_path / "var" / "mnw.db"
    env = {**os.environ, "MNW_BIND": f"127.0.0.1:{port}", "DATABASE_PATH": str(db), "CLI_SERVICE_TOKEN": "t0k"}
    proc = subprocess.Popen([str(bins[0])], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline() == "applied migration 1 init\n"
        assert proc.stdout.readline() == f"makenotwork v2 ({commit}) listening on 127.0.0.1:{port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            body = r.read()
        assert json.loads(body) == {"name": "makenotwork", "version": "v2", "commit": commit, "label": "v2"}
        assert body.startswith(b'{"name":"makenotwork","version":"v2","commit":')

        def warn(token):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/internal/restart-warning",
                                         data=b'{"seconds":30}', method="POST",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert (warn("t0k"), warn("nope"), warn(None)) == (200, 401, 401)
        dry = subprocess.run([str(bins[1]), "migrate", "--dry-run", "--database", str(db)], capture_output=True,
                             text=True)
        assert (dry.returncode, dry.stdout) == (0, "dry-run ok\n")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    t0 = time.monotonic()
    assert build(repo)  # nothing changed: cargo has nothing to do
    assert time.monotonic() - t0 < 10
