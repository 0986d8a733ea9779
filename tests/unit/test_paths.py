"""sando_components/paths.py: the real production paths, and the same under a test node's root prefix."""

from __future__ import annotations

import pytest

from sando_components import paths
from sando_components.paths import NodePaths

PROD = NodePaths("", "/opt/makenotwork")


def test_constants():
    assert paths.STAGING_PREFIX == ".staging-"
    assert paths.MANIFEST == ".sando/manifest.json"
    assert paths.SUMS == ".sando/SHA256SUMS"
    assert paths.ERROR_PAGES == "error-pages"


def test_prod_paths_are_the_real_ones():
    assert PROD.releases == "/opt/makenotwork/releases"
    assert PROD.release("v1") == "/opt/makenotwork/releases/v1"
    assert PROD.staging("v1", "0a1b2c3d") == "/opt/makenotwork/releases/.staging-v1-0a1b2c3d"
    assert PROD.manifest("v1") == "/opt/makenotwork/releases/v1/.sando/manifest.json"
    assert PROD.current == "/opt/makenotwork/current"
    assert PROD.previous == "/opt/makenotwork/previous"
    assert PROD.error_pages == "/opt/makenotwork/error-pages"
    assert PROD.unit("makenotwork") == "/etc/systemd/system/makenotwork.service"
    assert PROD.cron("makenotwork") == "/etc/cron.d/makenotwork-backup"
    assert PROD.at(paths.CADDYFILE) == "/etc/caddy/Caddyfile"
    assert PROD.at(paths.SSHD_GIT) == "/etc/ssh/sshd_config.d/sshd-git.conf"
    assert PROD.at(paths.FAIL2BAN_JAIL) == "/etc/fail2ban/jail.d/sshd.conf"
    assert PROD.at(paths.FIREWALL_SCRIPT) == "/usr/local/sbin/setup-firewall.sh"
    assert PROD.at(paths.BACKUP_SCRIPT) == "/usr/local/sbin/backup-db.sh"


@pytest.mark.parametrize("root", ["/srv/testnodes/n1", "/srv/testnodes/n1/"])
def test_root_prefix_is_prepended(root):
    np = NodePaths(root, "/opt/makenotwork")
    r = "/srv/testnodes/n1"
    assert np.releases == f"{r}/opt/makenotwork/releases"
    assert np.release("v1") == f"{r}/opt/makenotwork/releases/v1"
    assert np.staging("v1", "ff") == f"{r}/opt/makenotwork/releases/.staging-v1-ff"
    assert np.manifest("v1") == f"{r}/opt/makenotwork/releases/v1/.sando/manifest.json"
    assert np.current == f"{r}/opt/makenotwork/current"
    assert np.previous == f"{r}/opt/makenotwork/previous"
    assert np.error_pages == f"{r}/opt/makenotwork/error-pages"
    assert np.unit("makenotwork") == f"{r}/etc/systemd/system/makenotwork.service"
    assert np.cron("makenotwork") == f"{r}/etc/cron.d/makenotwork-backup"
    assert np.at(paths.CADDYFILE) == f"{r}/etc/caddy/Caddyfile"


def test_other_release_root_and_service():
    np = NodePaths("", "/srv/mnw")
    assert np.current == "/srv/mnw/current"
    assert np.release("v2.1.0") == "/srv/mnw/releases/v2.1.0"
    assert np.unit("mnw") == "/etc/systemd/system/mnw.service"
    assert np.cron("mnw") == "/etc/cron.d/mnw-backup"


def test_link_target_is_relative_and_root_independent():
    assert NodePaths.link_target("v1") == "releases/v1"
    assert NodePaths("/srv/n1", "/opt/makenotwork").link_target("v1") == "releases/v1"


@pytest.mark.parametrize(
    "target, version",
    [
        ("releases/v1", "v1"),
        ("/opt/makenotwork/releases/v1/", "v1"),
        ("/opt/makenotwork/releases/v1", "v1"),
        ("/srv/n1/opt/makenotwork/releases/v2.0.1", "v2.0.1"),
        ("releases/v1//", "v1"),
        ("garbage", None),
        ("", None),
        ("releases", None),
        ("releases/", None),
        ("/opt/makenotwork/releases", None),
        ("/opt/makenotwork/other/v1", None),
        ("releases/v1/extra", None),
    ],
)
def test_version_of_target(target, version):
    assert NodePaths.version_of_target(target) == version


def test_version_of_target_inverts_link_target():
    for v in ("v1", "2024.05.01", "v1.2.3-rc.1+build"):
        assert NodePaths.version_of_target(NodePaths.link_target(v)) == v
