"""sando_components/node.py `bootstrap_sources(cfg, repo)`: every managed host file is read with git
at sando:bootstrap.ref (never the working tree, never outside the repo) and checked before __main__
declares any resource; a problem raises ConfigError naming sando:bootstrap.<item> or .ref."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sando_components import bootstrap_sources
from sando_components.config import BOOTSTRAP_ITEMS, ConfigError, load

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "examples" / "makenotwork" / "server" / "deploy"
# item -> the default source file (BootstrapConfig's defaults)
DEFAULT_FILES = {
    "caddyfile": "server/deploy/Caddyfile",
    "unit": "server/deploy/makenotwork.service",
    "sshdGit": "server/deploy/sshd-git.conf",
    "fail2ban": "server/deploy/fail2ban-sshd.conf",
    "firewall": "server/deploy/setup-firewall.sh",
    "backup": "server/deploy/backup-db.sh",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, msg: str = "change") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", msg)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A server repo with the example's deploy files, committed on main."""
    root = tmp_path / "makenotwork"
    shutil.copytree(DEPLOY, root / "server" / "deploy")
    git(root, "init", "-q", "-b", "main")
    commit(root, "v1")
    return root


def make_cfg(bootstrap: dict | None = None, **extra: str):
    raw = {
        "sando:nodes": json.dumps([{"name": "n1", "host": "127.0.0.2"}]),
        "sando:version": "v1",
        "sando:source": '{"repo": "/x"}',
        "sando:sshAgent": "true",
        "sando:insecureSkipHostKeyCheck": "true",
    }
    raw["sando:bootstrap"] = json.dumps({"ref": "main", **(bootstrap or {})})
    raw.update({f"sando:{k}": v for k, v in extra.items()})
    return load(raw)


def error_of(cfg, repo) -> str:
    with pytest.raises(ConfigError) as exc:
        bootstrap_sources(cfg, str(repo))
    return str(exc.value)


def test_reads_every_managed_file_at_the_ref_and_records_the_commit(repo):
    src = bootstrap_sources(make_cfg(), str(repo))
    assert list(src.files) == [*BOOTSTRAP_ITEMS, "cron"]
    for item, rel in DEFAULT_FILES.items():
        assert src.files[item] == (repo / rel).read_text(), item
        assert src.sources[item] == rel
    assert src.ref == "main" and src.commit == git(repo, "rev-parse", "main")
    assert "17 3 * * * root /usr/local/sbin/backup-db.sh" in src.files["cron"]


def test_uncommitted_edits_never_ship(repo):
    caddyfile = repo / DEFAULT_FILES["caddyfile"]
    committed = caddyfile.read_text()
    caddyfile.write_text(committed + "\n# uncommitted hotfix\n")
    (repo / DEFAULT_FILES["unit"]).unlink()  # a deleted but committed file is still read from git
    src = bootstrap_sources(make_cfg(), str(repo))
    assert src.files["caddyfile"] == committed
    assert "ExecStart=" in src.files["unit"]


def test_the_ref_pins_the_files_however_the_branch_moves(repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "host-1")
    caddyfile = repo / DEFAULT_FILES["caddyfile"]
    old = caddyfile.read_text()
    caddyfile.write_text(old + "\n# host-2\n")
    second = commit(repo)
    assert bootstrap_sources(make_cfg({"ref": "host-1"}), str(repo)).files["caddyfile"] == old
    assert bootstrap_sources(make_cfg({"ref": first}), str(repo)).commit == first
    assert bootstrap_sources(make_cfg({"ref": "main"}), str(repo)).commit == second


def test_an_unknown_ref_names_the_key(repo):
    msg = error_of(make_cfg({"ref": "host-99"}), repo)
    assert msg.startswith("sando:bootstrap.ref: 'host-99' is not a branch, tag or commit of ")


@pytest.mark.parametrize("item", BOOTSTRAP_ITEMS)
def test_a_file_missing_at_the_ref_names_its_item(repo, item):
    git(repo, "rm", "-q", DEFAULT_FILES[item])
    commit(repo)
    msg = error_of(make_cfg(), repo)
    assert msg.startswith(f"sando:bootstrap.{item}: '{DEFAULT_FILES[item]}' is not a file at sando:bootstrap.ref main")


def test_a_directory_is_not_a_file(repo):
    path = repo / DEFAULT_FILES["caddyfile"]
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")
    commit(repo)
    assert "is a directory" in error_of(make_cfg(), repo)


def test_a_symlink_in_the_repo_is_refused(repo, tmp_path):
    """A committed symlink could point anywhere (the operator's ~/.ssh): refused, naming the key."""
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    path = repo / DEFAULT_FILES["caddyfile"]
    path.unlink()
    os.symlink(secret, path)
    commit(repo)
    msg = error_of(make_cfg(), repo)
    assert msg.startswith("sando:bootstrap.caddyfile: 'server/deploy/Caddyfile' is a symlink in the repo")
    assert "PRIVATE KEY" not in msg


def test_a_symlinked_directory_on_the_way_is_refused(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "jail.local").write_text("[sshd]\n")
    os.symlink(outside, repo / "ops")
    commit(repo)
    msg = error_of(make_cfg({"fail2ban": "ops/jail.local"}), repo)
    assert msg.startswith("sando:bootstrap.fail2ban: 'ops' is a symlink in the repo")


def test_a_path_leaving_the_repo_fails_at_config(repo):
    with pytest.raises(ConfigError) as exc:
        make_cfg({"caddyfile": "../../../root/.ssh/id_ed25519"})
    assert str(exc.value).startswith("sando:bootstrap.caddyfile: must be a relative path inside the server repo")


def test_unit_not_running_release_root_current_is_refused(repo):
    unit = repo / DEFAULT_FILES["unit"]
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/usr/local/bin/"))
    commit(repo)
    msg = error_of(make_cfg(), repo)
    assert msg.startswith("sando:bootstrap.unit: ")
    assert "/opt/makenotwork/current/" in msg and "sando:releaseRoot" in msg


def test_unit_check_follows_release_root(repo):
    assert error_of(make_cfg(releaseRoot="/srv/mnw"), repo).startswith("sando:bootstrap.unit: ")
    unit = repo / DEFAULT_FILES["unit"]
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/srv/mnw/current/"))
    commit(repo)
    assert "/srv/mnw/current/makenotwork" in bootstrap_sources(make_cfg(releaseRoot="/srv/mnw"), str(repo)).files["unit"]


def test_manage_subset_reads_only_those_files(repo):
    for item, rel in DEFAULT_FILES.items():
        if item not in ("caddyfile", "sshdGit"):
            git(repo, "rm", "-q", rel)  # would fail if read
    commit(repo)
    src = bootstrap_sources(make_cfg({"manage": ["sshdGit", "caddyfile"]}), str(repo))
    assert set(src.files) == {"caddyfile", "sshdGit"}
    assert src.files["sshdGit"] == (repo / DEFAULT_FILES["sshdGit"]).read_text()


def test_empty_manage_reads_nothing(tmp_path):
    src = bootstrap_sources(make_cfg({"manage": []}), str(tmp_path / "no-such-repo"))
    assert src.files == {} and src.commit is None


def test_configured_paths_are_read(repo):
    (repo / "ops").mkdir()
    (repo / "ops" / "jail.local").write_text("[sshd]\nenabled = true\n")
    commit(repo)
    cfg = make_cfg({"fail2ban": "ops/jail.local", "manage": ["fail2ban"]})
    assert bootstrap_sources(cfg, str(repo)).files == {"fail2ban": "[sshd]\nenabled = true\n"}
    cfg = make_cfg({"fail2ban": "ops/missing.local", "manage": ["fail2ban"]})
    assert "sando:bootstrap.fail2ban: 'ops/missing.local' is not a file" in error_of(cfg, repo)
