"""Issue 10's migration gate on real-systemd nodes: a failing dry run stops a node before anything
user-visible, destructive migrations are refused unless allowed, the live database is backed up
before a migrating release first starts, and the verdict is in the outputs."""

from __future__ import annotations

import os
import re

import pytest

from tests.support import AppRepo, run_up


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("migapp") / "makenotwork")
    r.version("v2", ("good-migration",))                   # adds table extra_0002
    base = r.commit("v2")
    r.version("v3", ("bad-migration",))                    # 0003 fails
    r.git("reset", "-q", "--hard", base)
    r.version("v4", ("destructive-migration",))            # 0003 drops extra_0002
    r.git("reset", "-q", "--hard", base)
    r.version("v5", ("good-migration",), ("crash-at-start",))  # migrates, then never starts
    r.git("reset", "-q", "--hard", base)
    r.version("v6", ("good-migration",))
    return r


def warnings_received(node) -> int:
    return len(re.findall(r"restart-warning: received", node.journal("makenotwork")))


def tables(node, db="/var/lib/makenotwork/makenotwork.db") -> set[str]:
    out = node.exec("sqlite3", db, "SELECT name FROM sqlite_master WHERE type='table'").stdout
    return set(out.split())


def test_a_failing_migration_stops_at_the_gate(make_nodes, make_deploy, repo):
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, version="v2", restartWarningSeconds=2)
    d.set_secret("cliServiceToken", token)
    run_up(d)
    starts, warned = len(node.restart_times("makenotwork")), warnings_received(node)
    d.set(version="v3")
    (error,) = d.errors(d.up_fails())
    assert error.startswith("node1: v3's migrations fail on a copy of the live database (dry-run failed at 3: ")
    assert "no such table: table_that_does_not_exist" in error and "nothing was restarted and v2 stays live" in error
    assert len(node.restart_times("makenotwork")) == starts and warnings_received(node) == warned  # nothing seen
    assert node.served()["version"] == "v2" and "extra_0002" in tables(node)
    assert not node.exec("sh", "-c", "ls /var/lib/makenotwork/.sando-scratch* 2>/dev/null").stdout  # copy removed
    d.set(version="v6")
    run_up(d)
    assert node.served()["version"] == "v6"


def test_destructive_migrations_refused_unless_allowed(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, version="v2", migrations={"refuseDestructive": True})
    run_up(d)
    d.set(version="v4")
    (error,) = d.errors(d.up_fails())
    assert error == ("node1: v4 has destructive migrations pending (3 drop_extra_0002), refused by "
                     "sando:migrations.refuseDestructive; nothing was restarted and v2 stays live. To deploy it, "
                     "add v4 to sando:migrations.allowDestructive")
    assert "extra_0002" in tables(node)
    d.set(migrations={"refuseDestructive": True, "allowDestructive": ["v4"]})
    run_up(d)
    assert node.served()["version"] == "v4" and "extra_0002" not in tables(node)
    m = d.node_out(node)["migrations"]
    assert m["pending"] == ["3"] and m["destructive"] == ["3 drop_extra_0002"]


def test_the_live_database_is_backed_up_before_a_migrating_release_starts(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1: a fresh database (nothing to back up)
    assert d.node_out(node)["migrations"].get("backup") is None  # (Pulumi drops a null output)
    d.set(version="v2")
    run_up(d)
    m = d.node_out(node)["migrations"]
    assert m["pending"] == ["2"] and m["dryRun"] == "dry-run ok" and m["database"] == "/var/lib/makenotwork/makenotwork.db"
    backup = m["backup"]
    assert re.fullmatch(r"/var/backups/makenotwork/pre-v2-\d{8}T\d{4}Z\.db", backup), backup
    assert "extra_0002" not in tables(node, backup) and "extra_0002" in tables(node)  # taken before v2 migrated
    made = float(node.exec("stat", "-c", "%Y", backup).stdout)
    assert made <= node.restart_times("makenotwork")[-1]
    run_up(d)  # nothing pending any more: no new backup
    assert len(node.exec("ls", "/var/backups/makenotwork").stdout.split()) == 1


def test_a_failed_start_after_migrations_names_the_backup(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, healthCheck={"timeoutSeconds": 4, "intervalSeconds": 0.2,
                                                    "expectVersion": True})
    run_up(d)
    d.set(version="v5")
    error, *_ = d.errors(d.up_fails())  # then the journal lines it quotes
    m = re.search(r"The database was backed up before v5's migrations: (\S+); to restore it: systemctl stop "
                  r"makenotwork && sqlite3 /var/lib/makenotwork/makenotwork.db \"\.restore '(\S+)'\" && "
                  r"systemctl start makenotwork", error)
    assert m and m.group(1) == m.group(2), error
    assert node.exec("test", "-f", m.group(1)).returncode == 0
    assert node.served()["version"] == "v1"


def test_the_database_path_comes_from_the_units_env_file(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    node.exec("sh", "-c", "sed -i 's|^DATABASE_PATH=.*|DATABASE_PATH=\"/srv/mnw/data.db\"|' "
                          "/etc/makenotwork/makenotwork.env && mkdir -p /srv/mnw")
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    m = d.node_out(node)["migrations"]
    assert m["database"] == "/srv/mnw/data.db" and m["pending"] == ["2"]
    assert "extra_0002" in tables(node, "/srv/mnw/data.db")


def test_every_file_sando_writes_on_a_node_has_the_mode_it_needs(make_nodes, make_deploy, repo):
    """After a deploy with a pending migration: release files readable by the service and Caddy
    (directories 0755, binaries 0755, pages and sando's manifest 0644); the pre-migration backup
    0600 and owned like the live database; no temp file, scratch copy or staging dir left behind."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    root = "/opt/makenotwork"

    def listing(*paths: str) -> dict[str, tuple[str, str, str]]:
        out = node.exec("find", *paths, "-printf", r"%p\t%y\t%m\t%u:%g\n", check=True).stdout
        return {p: (kind, mode, owner) for p, kind, mode, owner in (line.split("\t") for line in out.splitlines())}

    files = listing(f"{root}/releases")
    assert {p.split("/")[4] for p in files if p.count("/") >= 4} == {"v1", "v2"}
    for p, (kind, mode, owner) in files.items():
        rel = p[len(f"{root}/releases/v1/"):] if p.count("/") >= 4 else ""
        if kind == "d":
            expected = "755"
        elif "/" not in rel:  # a binary of the release
            expected = "755"
        else:  # error pages, SHA256SUMS, manifest
            expected = "644"
        assert (kind, mode) == ("d" if kind == "d" else "f", expected), (p, kind, mode, owner)
    links = listing(f"{root}/current", f"{root}/previous", f"{root}/error-pages")
    assert {p: k for p, (k, _, _) in links.items()} == {f"{root}/current": "l", f"{root}/previous": "l",
                                                        f"{root}/error-pages": "l"}
    # the pre-migration backup: a copy of the whole database, private and owned like it
    backup = d.node_out(node)["migrations"]["backup"]
    db = "/var/lib/makenotwork/makenotwork.db"
    (_, b_mode, b_owner), (_, _, db_owner) = listing(backup)[backup], listing(db)[db]
    assert (b_mode, b_owner) == ("600", db_owner)
    # nothing of sando's left on the way
    leftovers = node.exec("sh", "-c", f"find {root} /var/lib/makenotwork /var/backups/makenotwork /etc /usr/local/sbin "
                                      r"\( -name '*.sando-tmp*' -o -name '.sando-scratch*' -o -name '.sando-backup*' "
                                      r"-o -name '.staging-*' \) -print").stdout
    assert leftovers == ""
