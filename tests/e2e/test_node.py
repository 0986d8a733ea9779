"""Issue 4: Node bootstrap through the real engine on a test node, diffed, reloaded only on change."""

from __future__ import annotations

import stat

import pytest
from pulumi import automation as auto

from tests.support import AppRepo, run_preview, run_up

DEPLOY = "server/deploy"
INSTALLED = {  # source in the server repo -> (logical path on the node, mode)
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


def calls(node, verb, unit):
    return node.systemctl_log().count((verb, unit))


def test_bootstrap_installs_once_and_reloads_only_on_change(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, bootstrap={"backupSchedule": "5 4 * * *"})

    # 1. first up installs every item, byte-identical, right modes; one reload, one daemon-reload
    run_up(d)
    for src, (dest, mode) in INSTALLED.items():
        installed = node.path(dest)
        assert installed.read_bytes() == (node_app.path / DEPLOY / src).read_bytes(), dest
        assert stat.S_IMODE(installed.stat().st_mode) == mode, dest
    cron = node.path("/etc/cron.d/makenotwork-backup").read_text()
    assert "5 4 * * * root /usr/local/sbin/backup-db.sh" in cron
    assert (node.release_root / "releases").is_dir()
    assert calls(node, "reload", "caddy") == 1
    assert calls(node, "daemon-reload", "-") == 1
    log_after_first = node.systemctl_log()

    # 2. nothing changed: 0 resources changed, nothing reloaded or restarted
    res, changed = run_up(d)
    assert changed == {} and set(res.summary.resource_changes) == {"same"}
    assert node.systemctl_log() == log_after_first

    # 3. only the Caddyfile: preview lists exactly it (and its reload hook); up reloads caddy once
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# tuned by the operator\n")
    _, planned = run_preview(d)
    assert planned == {"node1-caddyfile": "update", "node1-caddy-reload": "update"}
    _, changed = run_up(d)
    assert changed == planned
    assert node.path("/etc/caddy/Caddyfile").read_text() == caddyfile.read_text()
    assert node.systemctl_log() == log_after_first + [("reload", "caddy")]

    # 4. only the unit: daemon-reload once, no caddy reload, no restart
    unit = node_app.path / DEPLOY / "makenotwork.service"
    unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSec=3"))
    _, changed = run_up(d)
    assert changed == {"node1-unit": "update", "node1-daemon-reload": "update"}
    assert node.systemctl_log() == log_after_first + [("reload", "caddy"), ("daemon-reload", "-")]

    # caddy really serves the live release's error pages after its reload
    status, body = node.fetch(node.caddyUrl + "__mnw_error_test")
    assert status == 503 and "mnw-error-page" in body


def _nodes(node, **change):
    cfg = node.config()
    cfg.update(change)
    return [{k: v for k, v in cfg.items() if v is not None}]


@pytest.mark.parametrize("key,mutate,expected", [
    ("host", lambda d, n: d.set(nodes=_nodes(n, host=None)), "sando:nodes[0].host: is required"),
    ("hostKey", lambda d, n: d.set(nodes=_nodes(n, hostKey="not-a-key AAAA")), "sando:nodes[0].hostKey"),
    ("port", lambda d, n: d.set(nodes=_nodes(n, port=70000)), "sando:nodes[0].port"),
    ("unknown", lambda d, n: d.set(bogusKey="x"), "sando:bogusKey: unknown key"),
    ("unknown-nested", lambda d, n: d.set(nodes=_nodes(n, hots="x")), "sando:nodes[0].hots: unknown key"),
    ("no-hostKey", lambda d, n: d.set(nodes=_nodes(n, hostKey=None)), "sando:nodes[0].hostKey: is required"),
])
def test_config_errors_fail_at_preview_naming_the_key(make_nodes, make_deploy, key, mutate, expected):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    mutate(d, node)
    with pytest.raises(auto.CommandError) as err:
        d.stack.preview(color="never")
    assert expected in str(err.value)
    with pytest.raises(auto.CommandError):
        d.stack.up(color="never")
    # nothing ran on the node
    assert node.systemctl_log() == []
    assert not node.path("/etc/caddy/Caddyfile").exists()
    assert not (node.release_root / "releases").exists()
