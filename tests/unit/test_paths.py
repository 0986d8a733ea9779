"""sando_components/paths.py: the real production paths on a node (no root prefix: test nodes are
real hosts too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sando_components import paths
from sando_components.paths import NodePaths

PROD = NodePaths("/opt/makenotwork")


def test_constants():
    assert paths.STAGING_PREFIX == ".staging-"
    assert paths.MANIFEST_DIR == ".sando"
    assert paths.MANIFEST == ".sando/manifest.json"
    assert paths.SUMS == ".sando/SHA256SUMS"
    assert paths.FAILED == ".sando/failed"
    assert paths.ERROR_PAGES == "error-pages"
    # under the release root, where the node scripts run
    assert (paths.RELEASES, paths.CURRENT, paths.PREVIOUS) == ("releases", "current", "previous")


def test_release_paths_are_the_real_ones():
    assert PROD.releases == "/opt/makenotwork/releases"
    assert PROD.release("v1") == "/opt/makenotwork/releases/v1"


def test_bootstrap_destinations_are_the_real_ones():
    assert paths.CADDYFILE == "/etc/caddy/Caddyfile"
    # where the files' own headers say they go
    assert paths.for_service(paths.SSHD_GIT, "makenotwork") == "/etc/ssh/sshd_config.d/makenotwork-git.conf"
    assert paths.for_service(paths.FAIL2BAN_JAIL, "makenotwork") == "/etc/fail2ban/jail.d/makenotwork-sshd.conf"
    assert paths.LEGACY == {"sshdGit": "/etc/ssh/sshd_config.d/sshd-git.conf",
                            "fail2ban": "/etc/fail2ban/jail.d/sshd.conf"}
    assert paths.FIREWALL_SCRIPT == "/usr/local/sbin/setup-firewall.sh"
    assert paths.BACKUP_SCRIPT == "/usr/local/sbin/backup-db.sh"
    assert paths.unit("makenotwork") == "/etc/systemd/system/makenotwork.service"
    assert paths.cron("makenotwork") == "/etc/cron.d/makenotwork-backup"
    assert paths.unit("mnw") == "/etc/systemd/system/mnw.service"


def test_service_data_defaults():
    assert paths.for_service(paths.DEFAULT_DATABASE, "makenotwork") == "/var/lib/makenotwork/makenotwork.db"
    assert paths.for_service(paths.DEFAULT_ENV_FILE, "makenotwork") == "/etc/makenotwork/makenotwork.env"
    assert paths.for_service(paths.DEFAULT_BACKUP_DIR, "mnw") == "/var/backups/mnw"


def test_other_release_root():
    np = NodePaths("/srv/mnw")
    assert np.releases == "/srv/mnw/releases"
    assert np.release("v2.1.0") == "/srv/mnw/releases/v2.1.0"


def test_there_is_no_root_prefix_any_more():
    with pytest.raises(TypeError):
        NodePaths("", "/opt/makenotwork")  # the old (root, release_root) form
    assert not hasattr(NodePaths, "at")


def test_link_target_is_relative():
    assert NodePaths.link_target("v1") == "releases/v1"
    assert PROD.link_target("v1") == "releases/v1"


@pytest.mark.parametrize("target, version", [
    ("releases/v1", "v1"),
    ("/opt/makenotwork/releases/v1/", "v1"),
    ("/opt/makenotwork/releases/v1", "v1"),
    ("releases/v1//", "v1"),
    ("garbage", None),
    ("", None),
    ("releases", None),
    ("releases/", None),
    ("/opt/makenotwork/releases", None),
    ("/opt/makenotwork/other/v1", None),
    ("releases/v1/extra", None),
])
def test_version_of_target(target, version):
    assert NodePaths.version_of_target(target) == version


def test_version_of_target_inverts_link_target():
    for v in ("v1", "2024.05.01", "v1.2.3-rc.1+build"):
        assert NodePaths.version_of_target(NodePaths.link_target(v)) == v


def test_host_files_are_installed_where_their_headers_say():
    """Issue 18.6: the example's sshd drop-in and jail name their installed path in their first line."""
    deploy = Path(__file__).resolve().parents[2] / "examples" / "makenotwork" / "server" / "deploy"
    for src, template in (("sshd-git.conf", paths.SSHD_GIT), ("fail2ban-sshd.conf", paths.FAIL2BAN_JAIL)):
        header = (deploy / src).read_text().splitlines()[0]
        assert header == "# " + paths.for_service(template, "makenotwork"), src
