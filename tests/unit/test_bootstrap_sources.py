"""sando_components/node.py `bootstrap_sources(cfg, repo)`: every managed bootstrap file is read (from the
server repo's working tree) and checked before __main__ declares any resource; a problem raises
ConfigError naming sando:bootstrap.<item>."""

from __future__ import annotations

import json
import shutil
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


@pytest.fixture
def repo(tmp_path) -> Path:
    """A server repo working tree with the example's deploy files (no git needed: sources are read
    from the working tree)."""
    root = tmp_path / "makenotwork"
    shutil.copytree(DEPLOY, root / "server" / "deploy")
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


def test_reads_every_managed_file(repo):
    sources = bootstrap_sources(make_cfg(), str(repo))
    assert list(sources) == list(BOOTSTRAP_ITEMS)
    for item, rel in DEFAULT_FILES.items():
        assert sources[item] == (repo / rel).read_text(), item


def test_missing_fail2ban_file_names_its_key(repo):
    (repo / DEFAULT_FILES["fail2ban"]).unlink()
    msg = error_of(make_cfg(), repo)
    assert msg.startswith("sando:bootstrap.fail2ban: ")
    assert "'server/deploy/fail2ban-sshd.conf' is not a file in" in msg and str(repo) in msg


@pytest.mark.parametrize("item", BOOTSTRAP_ITEMS)
def test_any_missing_file_names_its_item(repo, item):
    (repo / DEFAULT_FILES[item]).unlink()
    assert error_of(make_cfg(), repo).startswith(f"sando:bootstrap.{item}: ")


def test_a_directory_is_not_a_file(repo):
    (repo / DEFAULT_FILES["caddyfile"]).unlink()
    (repo / DEFAULT_FILES["caddyfile"]).mkdir()
    assert error_of(make_cfg(), repo).startswith("sando:bootstrap.caddyfile: ")


def test_unit_not_running_release_root_current_is_refused(repo):
    unit = repo / DEFAULT_FILES["unit"]
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/usr/local/bin/"))
    msg = error_of(make_cfg(), repo)
    assert msg.startswith("sando:bootstrap.unit: ")
    assert "/opt/makenotwork/current/" in msg and "sando:releaseRoot" in msg


def test_unit_check_follows_release_root(repo):
    # the example unit runs /opt/makenotwork/current/..., which is not under /srv/mnw
    assert error_of(make_cfg(releaseRoot="/srv/mnw"), repo).startswith("sando:bootstrap.unit: ")
    unit = repo / DEFAULT_FILES["unit"]
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/srv/mnw/current/"))
    assert "/srv/mnw/current/makenotwork" in bootstrap_sources(make_cfg(releaseRoot="/srv/mnw"), str(repo))["unit"]


def test_manage_subset_reads_only_those_files(repo):
    for item, rel in DEFAULT_FILES.items():
        if item not in ("caddyfile", "sshdGit"):
            (repo / rel).unlink()  # would fail if read
    sources = bootstrap_sources(make_cfg({"manage": ["sshdGit", "caddyfile"]}), str(repo))
    assert set(sources) == {"caddyfile", "sshdGit"}
    assert sources["sshdGit"] == (repo / DEFAULT_FILES["sshdGit"]).read_text()


def test_unmanaged_unit_is_not_checked(repo):
    unit = repo / DEFAULT_FILES["unit"]
    unit.write_text("[Service]\nExecStart=/usr/local/bin/elsewhere\n")
    sources = bootstrap_sources(make_cfg({"manage": ["caddyfile"]}), str(repo))
    assert list(sources) == ["caddyfile"]


def test_empty_manage_reads_nothing(tmp_path):
    assert bootstrap_sources(make_cfg({"manage": []}), str(tmp_path / "no-such-repo")) == {}


def test_configured_paths_are_read(repo):
    (repo / "ops").mkdir()
    (repo / "ops" / "jail.local").write_text("[sshd]\nenabled = true\n")
    cfg = make_cfg({"fail2ban": "ops/jail.local", "manage": ["fail2ban"]})
    assert bootstrap_sources(cfg, str(repo)) == {"fail2ban": "[sshd]\nenabled = true\n"}
    cfg = make_cfg({"fail2ban": "ops/missing.local", "manage": ["fail2ban"]})
    assert "sando:bootstrap.fail2ban: 'ops/missing.local' is not a file" in error_of(cfg, repo)
