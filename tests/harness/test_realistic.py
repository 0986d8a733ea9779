"""Tests for tests/realistic.py (the realistic makenotwork fixture as a git repo): they only
assemble repos (git, no cargo). Building the fixture takes ~2 minutes cold (tokio, axum, sqlx
with a bundled SQLite): `make bench` builds it, deploys it through sando and checks that each
version serves its label; the tests' fast path never builds it."""

import os

import pytest

from tests.realistic import REALISTIC, STAND_IN_DEPLOY, bump, git, make_realistic_repo


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
