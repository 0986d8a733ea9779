"""Node bootstrap on a real-systemd node: installed once, diffed, hooks only on change, config
errors caught at preview before anything touches the node."""

from __future__ import annotations

import stat

import pytest

from tests.support import AppRepo, run_preview, run_up

DEPLOY = "server/deploy"
INSTALLED = {  # source in the server repo -> (path on the node, mode)
    "Caddyfile": ("/etc/caddy/Caddyfile", 0o644),
    "makenotwork.service": ("/etc/systemd/system/makenotwork.service", 0o644),
    "sshd-git.conf": ("/etc/ssh/sshd_config.d/sshd-git.conf", 0o644),
    "fail2ban-sshd.conf": ("/etc/fail2ban/jail.d/sshd.conf", 0o644),
    "setup-firewall.sh": ("/usr/local/sbin/setup-firewall.sh", 0o755),
    "backup-db.sh": ("/usr/local/sbin/backup-db.sh", 0o755),
}


@pytest.fixture(scope="module")
def node_app(tmp_path_factory):
    """Own copy: these tests edit the bootstrap sources in its working tree."""
    return AppRepo(tmp_path_factory.mktemp("nodeapp") / "makenotwork")


def test_bootstrap_installs_once_and_hooks_run_only_on_change(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, bootstrap={"backupSchedule": "5 4 * * *"})

    # 1. every item installed byte for byte with its mode; one caddy reload, one daemon-reload
    run_up(d)
    for src, (dest, mode) in INSTALLED.items():
        installed = node.path(dest)
        assert installed.read_bytes() == (node_app.path / DEPLOY / src).read_bytes(), dest
        assert stat.S_IMODE(installed.stat().st_mode) == mode, dest
    cron = node.path("/etc/cron.d/makenotwork-backup").read_text()
    assert "5 4 * * * root /usr/local/sbin/backup-db.sh" in cron
    assert (node.release_root / "releases").is_dir()
    events = node.unit_events()
    assert events.count(("reload", "caddy")) == 1 and events.count(("daemon-reload", "-")) == 1
    # real systemd accepted the unit, and real cron the backup entry
    assert node.exec("systemd-analyze", "verify", "/etc/systemd/system/makenotwork.service").returncode == 0

    # 2. nothing changed: 0 resources changed, no unit touched
    res, changed = run_up(d)
    assert changed == {} and set(res.summary.resource_changes) == {"same"}
    assert node.unit_events() == events

    # 3. only the Caddyfile: preview lists exactly it and its reload; up reloads caddy once
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# tuned by the operator\n")
    _, planned = run_preview(d)
    assert planned == {"node1-caddyfile": "update", "node1-caddy-reload": "update"}
    _, changed = run_up(d)
    assert changed == planned
    assert node.path("/etc/caddy/Caddyfile").read_text() == caddyfile.read_text()
    assert node.unit_events() == events + [("reload", "caddy")]

    # 4. only the unit: daemon-reload once, no caddy reload, no restart
    unit = node_app.path / DEPLOY / "makenotwork.service"
    unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSec=3"))
    _, changed = run_up(d)
    assert changed == {"node1-unit": "update", "node1-daemon-reload": "update"}
    assert node.unit_events() == events + [("reload", "caddy"), ("daemon-reload", "-")]
    assert node.exec("systemctl", "show", "-p", "RestartUSec", "makenotwork").stdout.strip() == "RestartUSec=3s"

    # caddy really serves the live release's error pages after its reload
    status, body = node.fetch(node.caddyUrl + "__mnw_error_test")
    assert status == 503 and "mnw-error-page" in body
    node.exec("systemctl", "restart", "cron")  # cron reads /etc/cron.d at start and logs what it refuses
    cron_log = node.journal("cron")
    assert "makenotwork-backup" not in cron_log, cron_log  # it names a file only to complain about it


def test_pinning_an_older_version_never_rolls_the_caddyfile_back(make_nodes, make_deploy, tmp_path):
    repo = AppRepo(tmp_path / "app")
    caddyfile = repo.path / DEPLOY / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# v2's Caddyfile\n")
    repo.version("v2")
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, version="v2")
    run_up(d)
    d.set(version="v1")  # v1's commit has the old Caddyfile; the working tree has v2's
    _, changed = run_up(d)
    assert "node1-caddyfile" not in changed
    assert "# v2's Caddyfile" in node.path("/etc/caddy/Caddyfile").read_text()
    assert node.served()["version"] == "v1"


def test_bootstrap_manage_subset_and_owner(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    node.exec("useradd", "--system", "mnw")
    d = make_deploy([node], repo=node_app, bootstrap={"manage": ["caddyfile", "unit"], "owner": "mnw:mnw"})
    run_up(d)
    assert node.path("/etc/caddy/Caddyfile").exists() and node.path("/etc/systemd/system/makenotwork.service").exists()
    for dest in ("/etc/ssh/sshd_config.d/sshd-git.conf", "/usr/local/sbin/backup-db.sh",
                 "/etc/cron.d/makenotwork-backup", "/usr/local/sbin/setup-firewall.sh"):
        assert not node.path(dest).exists(), dest
    owner = node.exec("stat", "-c", "%U:%G", "/opt/makenotwork/releases").stdout.strip()
    assert owner == "mnw:mnw"
    assert node.served()["version"] == "v1"


def _nodes(node, **change):
    cfg = node.config()
    cfg.update(change)
    return [{k: v for k, v in cfg.items() if v is not None}]


@pytest.mark.parametrize("mutate,expected", [
    (lambda d, n: d.set(nodes=_nodes(n, host=None)), "sando:nodes[0].host: is required"),
    (lambda d, n: d.set(nodes=_nodes(n, hostKey="not-a-key AAAA")), "sando:nodes[0].hostKey: must be an OpenSSH"),
    (lambda d, n: d.set(nodes=_nodes(n, port=70000)), "sando:nodes[0].port: must be between 1 and 65535"),
    (lambda d, n: d.set(bogusKey="x"), "sando:bogusKey: unknown key"),
    (lambda d, n: d.set(nodes=_nodes(n, hots="x")), "sando:nodes[0].hots: unknown key"),
    (lambda d, n: d.set(nodes=_nodes(n, hostKey=None)), "sando:nodes[0].hostKey: is required"),
    (lambda d, n: d.set(binNames="makenotwork"), "sando:binNames: must be a list of binary names"),
    (lambda d, n: d.set(binNames=["a b"]), "sando:binNames: 'a b' is not a binary name"),
    (lambda d, n: d.set(keepReleases="many"), "sando:keepReleases: must be a whole number"),
    (lambda d, n: d.set(version="main"), "sando:version: 'main' is a branch of "),
    (lambda d, n: d.set(rollout={"batchSize": 0}), "sando:rollout.batchSize: must be 1 or more"),
    (lambda d, n: d.set(migrations={"dryRunCommand": "mnw-admin migrate --database {database}"}),
     "sando:migrations.dryRunCommand: must run against {scratch}"),
])
def test_config_errors_fail_at_preview_naming_the_key(make_nodes, make_deploy, mutate, expected):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    mutate(d, node)
    log = []
    with pytest.raises(Exception) as err:
        d.stack.preview(color="never", on_output=log.append)
    text = "\n".join(log) + "\n" + str(err.value)
    errors = d.errors(text)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    for jargon in ("Traceback", "Input should be", "valid tuple", "Extra data", "JSON"):
        assert jargon not in text
    d.up_fails()
    assert node.unit_events() == []  # nothing ran on the node
    assert not node.path("/etc/caddy/Caddyfile").read_text().startswith("# Caddy v2 config of makenotwork")
    assert not (node.release_root / "releases").exists()
