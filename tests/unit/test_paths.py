"""sando_components/paths.py: the real production paths on a node (no root prefix: test nodes are
real hosts too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sando_components import paths
from sando_components.paths import NodePaths

PROD = NodePaths("/opt/makenotwork")


def test_release_paths_are_the_real_ones():
    assert PROD.releases == "/opt/makenotwork/releases"
    assert PROD.release("v1") == "/opt/makenotwork/releases/v1"


def test_service_data_defaults():
    assert paths.for_service(paths.DEFAULT_DATABASE, "makenotwork") == "/var/lib/makenotwork/makenotwork.db"
    assert paths.for_service(paths.DEFAULT_ENV_FILE, "makenotwork") == "/etc/makenotwork/makenotwork.env"
    assert paths.for_service(paths.DEFAULT_BACKUP_DIR, "mnw") == "/var/backups/mnw"


def test_other_release_root():
    np = NodePaths("/srv/mnw")
    assert np.releases == "/srv/mnw/releases"
    assert np.release("v2.1.0") == "/srv/mnw/releases/v2.1.0"


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
