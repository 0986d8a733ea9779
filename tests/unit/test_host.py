"""providers/host.py's pure parts: the plan host.sh gets, its stdin, what counts as a change on the
node (drift, Caddy down), and the operator's one-line failures. The script itself runs on real
nodes in tests/e2e/test_node.py."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from sando_components import scripts
from sando_components.providers import host
from sando_components.providers.base import HostState, NodeState, host_probe, parse_host_state


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


FILES = {  # as Pulumi hands them to the provider: keys sorted
    "cron": {"path": "/etc/cron.d/mnw-backup", "mode": 0o644, "source": "sando:bootstrap.backupSchedule",
             "content": "17 3 * * * root /usr/local/sbin/backup-db.sh\n"},
    "sshdGit": {"path": "/etc/ssh/sshd_config.d/mnw-git.conf", "mode": 0o644, "source": "deploy/sshd.conf",
                "content": "Match User git\n", "legacy": "/etc/ssh/sshd_config.d/sshd-git.conf"},
    "unit": {"path": "/etc/systemd/system/mnw.service", "mode": 0o644, "source": "deploy/mnw.service",
             "content": "[Service]\n"},
    "caddyfile": {"path": "/etc/caddy/Caddyfile", "mode": 0o644, "source": "deploy/Caddyfile", "content": ":80\n"},
    "backup": {"path": "/usr/local/sbin/backup-db.sh", "mode": 0o755, "source": "deploy/backup-db.sh",
               "content": "#!/bin/sh\n"},
}
PROPS = {"node": "n1", "service": "mnw", "releaseRoot": "/opt/mnw", **FILES, "ref": "host-7",
         "commit": "3f2a" + "0" * 36, "connection": {"host": "10.0.0.1", "port": 22}}


def state(files: dict | None = None, active: str = "active", enabled: str = "enabled") -> NodeState:
    return NodeState(live="v1", previous=None, free_kib=1, zstd=True, active=True,
                     host=HostState(files or {}, active, enabled))


def installed() -> dict:
    return {f["path"]: (sha(f["content"]), f["mode"]) for f in FILES.values()}


def test_plan_is_in_apply_order_caddy_first_with_modes_sources_and_legacy_paths():
    assert host.plan(PROPS) == "\n".join([
        "caddyfile 644 /etc/caddy/Caddyfile deploy/Caddyfile -",
        "unit 644 /etc/systemd/system/mnw.service deploy/mnw.service -",
        "sshdGit 644 /etc/ssh/sshd_config.d/mnw-git.conf deploy/sshd.conf /etc/ssh/sshd_config.d/sshd-git.conf",
        "backup 755 /usr/local/sbin/backup-db.sh deploy/backup-db.sh -",
        "cron 644 /etc/cron.d/mnw-backup sando:bootstrap.backupSchedule -",
    ])


@pytest.mark.parametrize("token", [None, "tok-SECRET"])
def test_payload_is_the_bearer_line_then_a_tar_of_the_files(token):
    data = host.payload(PROPS, token)
    head, _, rest = data.partition(b"\n")
    assert head == (f"Authorization: Bearer {token}".encode() if token else b"")
    with tarfile.open(fileobj=io.BytesIO(rest)) as tar:
        got = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert got == {item: f["content"] for item, f in FILES.items()}
    assert b"tok-SECRET" not in rest


def test_the_token_never_reaches_the_script_text():
    props = {**PROPS, "token": "tok-SECRET", "warning": {"url": "http://127.0.0.1:3000/w", "seconds": 5}}
    text = host.script(props, "apply", True)
    assert "tok-SECRET" not in text and "WARN_SECONDS=5" in text and "RESTART_UNIT=1" in text


def test_nothing_differs_when_the_node_has_every_file():
    assert host.drift(PROPS, state(installed())) == []
    assert host.caddy_down(PROPS, state(installed())) is None


def test_a_hand_edit_a_mode_a_missing_file_and_an_old_identical_copy_are_drift():
    have = installed()
    have["/etc/caddy/Caddyfile"] = (sha(":80\n# hotfix by hand\n"), 0o644)
    have["/usr/local/sbin/backup-db.sh"] = (have["/usr/local/sbin/backup-db.sh"][0], 0o777)
    del have["/etc/cron.d/mnw-backup"]
    have["/etc/ssh/sshd_config.d/sshd-git.conf"] = (sha("Match User git\n"), 0o644)
    assert sorted(host.drift(PROPS, state(have))) == ["backup", "caddyfile", "cron", "sshdGit"]


def test_an_old_copy_that_differs_is_no_drift_it_is_left_alone():
    have = {**installed(), "/etc/ssh/sshd_config.d/sshd-git.conf": (sha("the operator's own\n"), 0o644)}
    assert host.drift(PROPS, state(have)) == []


@pytest.mark.parametrize("active, enabled, why", [
    ("inactive", "enabled", "caddy is inactive"), ("failed", "enabled", "caddy is failed"),
    ("active", "disabled", "caddy is disabled (it would not start at boot)")])
def test_caddy_down_or_disabled_is_a_change_when_the_caddyfile_is_managed(active, enabled, why):
    assert host.caddy_down(PROPS, state(installed(), active, enabled)) == why
    unmanaged = host.with_files(PROPS, {k: v for k, v in FILES.items() if k != "caddyfile"})
    assert host.caddy_down(unmanaged, state(installed(), active, enabled)) is None


def test_the_node_probe_reads_every_path_sando_may_manage_and_parses_back():
    text = host_probe("mnw")
    for path in ("/etc/caddy/Caddyfile", "/etc/systemd/system/mnw.service", "/etc/ssh/sshd_config.d/mnw-git.conf",
                 "/etc/fail2ban/jail.d/mnw-sshd.conf", "/etc/cron.d/mnw-backup", "/etc/fail2ban/jail.d/sshd.conf"):
        assert path in text
    out = ('{"@":"host-file","v":"%s 644 /etc/caddy/Caddyfile"}\n@current releases/v1\n'
           '{"@":"host-caddy","v":"inactive enabled"}\n' % ("a" * 64))
    assert parse_host_state(out) == HostState({"/etc/caddy/Caddyfile": ("a" * 64, 0o644)}, "inactive", "enabled")


@pytest.mark.parametrize("shown, said", [
    ("ActiveState=active\nUnitFileState=enabled\n", ("active", "enabled")),
    ("UnitFileState=disabled\nActiveState=failed\n", ("failed", "disabled")),  # in whatever order systemd prints
    ("ActiveState=inactive\nUnitFileState=\n", ("inactive", "unknown")),  # no unit file: is-enabled says nothing
])
def test_the_node_probe_asks_systemd_once_whether_caddy_runs_and_starts_at_boot(tmp_path, shown, said):
    """One `systemctl show` for what `is-active` and `is-enabled` said (a systemctl less on every run)."""
    import subprocess

    calls = tmp_path / "calls"
    script = scripts.render_inline(
        scripts.params(FILES="", CADDY=1),
        f'systemctl() {{ echo "$*" >> {str(calls)!r}; printf {shown!r}; }}\n' + scripts.source("host-probe.sh"))
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert calls.read_text() == "show -p ActiveState -p UnitFileState caddy\n"
    state = parse_host_state(res.stdout)
    assert (state.caddy_active, state.caddy_enabled) == said


def report(*entries: tuple[str, str]) -> scripts.Report:
    return scripts.Report(tuple(entries))


def test_a_failed_check_quotes_the_tool_and_names_node_source_ref_and_path():
    msg = host.failure(PROPS, scripts.code("EX_HOST_CHECK"), report(
        ("check-failed", "caddyfile Error: adapting config using caddyfile: deploy/Caddyfile:3: unrecognized "
                         "directive: nope")), "")
    assert msg == ("n1: deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref host-7 (3f2a00000000) "
                   "fails caddy validate: Error: adapting config using caddyfile: deploy/Caddyfile:3: unrecognized "
                   "directive: nope; the live file is unchanged. Fix it in the server repo, commit, and point "
                   "sando:bootstrap.ref at it")


def test_a_failed_reload_and_a_failed_unit_restart_say_what_is_back():
    msg = host.failure(PROPS, scripts.code("EX_HOST_RELOAD"), report(
        ("reload-failed", "caddyfile caddy: Job failed; the previous /etc/caddy/Caddyfile is back and caddy runs it")),
        "")
    assert msg.startswith("n1: deploy/Caddyfile -> /etc/caddy/Caddyfile at sando:bootstrap.ref host-7 (3f2a00000000) "
                          "was not taken: caddy: Job failed; the previous /etc/caddy/Caddyfile is back")
    msg = host.failure(PROPS, scripts.code("EX_HOST_HEALTH"), report(
        ("restarted", "mnw its unit file changed"), ("health", "fail http://127.0.0.1:3000/ HTTP 000 refused"),
        ("unit-reverted", "the previous unit is back and mnw is healthy with it")), "")
    assert msg == ("n1: mnw failed after its unit changed (deploy/mnw.service -> /etc/systemd/system/mnw.service at "
                   "sando:bootstrap.ref host-7 (3f2a00000000)): fail http://127.0.0.1:3000/ HTTP 000 refused; the "
                   "previous unit is back and mnw is healthy with it. (sando:healthCheck)")


def test_a_unit_restart_that_waited_for_the_switch_lock_in_vain_says_nothing_restarted():
    msg = host.failure(PROPS, scripts.code("EX_BUSY"), report(
        ("unit-restart", "a switch or restart still runs there (waited 60 s): the previous unit is back")), "")
    assert msg == ("n1: mnw's unit changed (deploy/mnw.service -> /etc/systemd/system/mnw.service at sando:bootstrap.ref "
                   "host-7 (3f2a00000000)), but a switch or restart still ran there after 60 s; the previous unit is "
                   "back, nothing restarted: run pulumi up again once it is done")
    assert "EX_BUSY" in host.OUTCOMES  # recorded as this node's failure, the node as it was
    assert "LOCK_WAIT=60" in host.script(PROPS, "apply", True)


def test_the_host_exit_codes_are_in_the_shared_table_and_unique():
    codes = [scripts.code(n) for n in ("EX_HOST_CHECK", "EX_HOST_RELOAD", "EX_HOST_HEALTH", "EX_HOST_INPUT",
                                       "EX_HOST_WARNING")]
    assert codes == [100, 101, 102, 103, 104]
    table = [c for c, _ in scripts.outcomes().values()]
    assert len(table) == len(set(table))


def test_a_create_on_a_node_with_the_files_says_it_adopts_them_and_what_the_deletes_are():
    """The preview of an upgrade from per-file resources (or a node adopted again after destroy)."""
    assert host.adoption(PROPS, state({})) is None  # a fresh node: nothing to say
    moved = {**installed(), FILES["sshdGit"]["legacy"]: (sha("Match User git\n"), 0o644)}
    del moved[FILES["sshdGit"]["path"]]
    said = host.adoption(PROPS, state(moved))
    assert said.startswith("n1: host config: every host file is on the node as committed at sando:bootstrap.ref "
                           "host-7; it is adopted as it is (nothing installed, reloaded or restarted); moved to the "
                           "names their headers say, same bytes, nothing reloaded: /etc/ssh/sshd_config.d/sshd-git.conf"
                           " -> /etc/ssh/sshd_config.d/mnw-git.conf. Deletes of the host-file resources of an earlier "
                           "sando (n1-layout, n1-caddyfile, "), said
    assert said.endswith("only drop them from the state: no file is removed, nothing runs on the node")
    edited = {**installed(), "/etc/caddy/Caddyfile": (sha(":81\n"), 0o644)}
    assert host.adoption(PROPS, state(edited)).startswith(
        "n1: host config: 4 of 5 host files are on the node as committed at sando:bootstrap.ref host-7, adopted as "
        "they are; installs /etc/caddy/Caddyfile. ")


def test_a_failed_host_step_is_recorded_with_the_files_the_node_has(monkeypatch):
    """Issue 19.3: a failure that leaves the node as it was is the node's outcome, not a crash of the
    run: the previous inputs' files are kept (the next run tries again), the failure is in `actions`,
    `installed` is what the node really has, and the pointer reads the outcome."""
    said = []
    monkeypatch.setattr(host.diagnostics, "log", lambda level, msg, **kw: said.append((level, msg)))
    before = {**FILES, "caddyfile": {**FILES["caddyfile"], "content": ":8080\n"}}
    olds = {**PROPS, **before, "installed": {"caddyfile": {"path": "/etc/caddy/Caddyfile", "sha256": "old", "mode": 420}},
            "owner": "mnw"}
    outs = host.HostConfigProvider._failed({**PROPS, "owner": "root"}, olds, "n1: Caddyfile was not taken", read=False)
    assert outs["caddyfile"]["content"] == ":8080\n" and outs["owner"] == "mnw"  # as before: tried again next run
    assert outs["actions"] == ["failed: n1: Caddyfile was not taken"]
    assert outs["outcome"] == {"ok": False, "node": "n1", "message": "n1: Caddyfile was not taken"}
    assert outs["installed"] == olds["installed"]
    assert said == [("warning", "n1: host config not applied (the error at the end says why)")]
    first = host.HostConfigProvider._failed(PROPS, {}, "n1: refused", read=False)  # a first deploy: no files kept
    assert host.files_of(first) == {} and first["outcome"]["ok"] is False
    assert set(host.OUTCOMES) <= set(scripts.outcomes())


def test_the_restart_warning_of_a_unit_change_is_said_in_sandos_one_time_format():
    """The host step's restart warning (a changed unit restarts the service) reads as the switch's
    does (issue 20.9: ISO 8601 UTC with Z), and a failure as the node said it."""
    props = {"warning": {"seconds": 30}}
    said = host._actions(props, scripts.Report((("warning-sent", "1700000000"), ("warning-failed", "HTTP 500 boom"))))
    assert said == ["restart warning sent at 2023-11-14T22:13:20Z, 30s before the restart",
                    "restart warning failed: HTTP 500 boom"]
