"""sando's operator commands (sando_components/cli.py) without an engine or nodes: the pure
decisions (from nodes as read now: fleet.NodeNow), the command line, and the command flows
against a fake Project."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest

from sando_components import cli, fleet, ssh
from sando_components.config import load
from sando_components.fleet import NodeNow, Probe
from sando_components.migrations import Migration
from sando_components.transfer import NodeRelease

A, B, C, D = "a" * 40, "b" * 40, "c" * 40, "d" * 40
COMMITS = {"v1": D, "v2": C, "v3": A, "v4": B}


def rec(version, result="ok", via="pulumi up", frm="", by="ann@box", at="2026-01-02T03:04:05Z", **extra):
    return {"at": at, "version": version, "commit": COMMITS.get(version, A), "from": frm, "result": result,
            "by": by, "via": via, "warning": "none configured", **extra}


def node(name="node1", live="v4", previous="v3", releases=("v3", "v4"), failed=(), history=None, unit="active running",
         health=200, caddy=200, applied=(("1", "init"),), backups=(), error=None, commits=None,
         files=None) -> NodeNow:
    if error:
        return NodeNow(name, "10.0.0.1", error=error)
    commits = {**COMMITS, **(commits or {})}
    held = {v: NodeRelease(v, commits[v], float(i), dict(files or {}), v in failed) for i, v in enumerate(releases)}
    return NodeNow(name, "10.0.0.1", live=live, previous=previous, releases=held, free_kib=2 * 1024 * 1024,
                   unit=unit, health=Probe(health, '{"version": "%s"}' % live) if health else Probe(0, "refused"),
                   caddy="active", caddy_health=Probe(caddy, "") if caddy else None, database="/var/lib/x.db",
                   db="ok", applied=list(applied), history=list(history if history is not None else
                                                               [rec("v3"), rec("v4", frm="v3")]),
                   backups=list(backups))


# --- promote: are the source's nodes healthy now, did the name move -----------------------------------


def test_healthy_source_is_promotable():
    assert cli.check_promotable("v4", B, [node(), node("node2")]) == []


def test_a_node_stopped_by_hand_is_named():
    problems = cli.check_promotable("v4", B, [node(), node("node2", unit="inactive dead", health=None)])
    assert problems == ["node2's service is inactive dead",
                        "node2's health check says no answer (refused)"]


def test_half_rolled_out_source_is_refused():
    problems = cli.check_promotable("v4", B, [node(), node("node2", live="v3")])
    assert problems == ["node2 runs v3 but the stack pins v4 (a failed or half-finished rollout?)"]


def test_node_on_another_commit_is_refused():
    problems = cli.check_promotable("v4", B, [node(commits={"v4": C})])
    assert problems == [f"node1 runs commit {C[:12]}, v4 is {B[:12]} in the stack's source repo (the tag moved?)"]


def test_unreachable_or_broken_caddy_source_is_refused():
    assert cli.check_promotable("v4", B, [node(error="cannot connect: refused")]) == [
        "node1 cannot be read (cannot connect: refused)"]
    assert cli.check_promotable("v4", B, [node(caddy=502)]) == ["node1 through Caddy says HTTP 502"]


def test_moved_tag_names_both_commits():
    assert cli.moved_tag("v4", B, B, "prod's source repo /r") is None
    msg = cli.moved_tag("v4", B, C, "prod's source repo /r")
    assert C[:12] in msg and B[:12] in msg and "prod's source repo /r" in msg
    assert "not a tag, branch or commit" in cli.moved_tag("v4", B, None, "x")


# --- rollback: where to -----------------------------------------------------------------------------


def test_rollback_to_the_last_good_version():
    plan = cli.rollback_plan("v4", [node(), node("node2")])
    assert (plan.version, plan.commit, plan.retained, plan.send, plan.pin_only) == (
        "v3", A, ["node1", "node2"], [], False)


def test_successive_rollbacks_walk_back_and_skip_a_failed_release():
    """v1, v2, crash (failed), v4, v5; a rollback to v4; the next goes to v2, not forward to v5."""
    h = [rec("v1"), rec("v2"), rec("crash", result="failed: switched back to v2"), rec("v4"), rec("v5"),
         rec("v4", via="sando rollback", frm="v5")]
    n = node(live="v4", previous="v5", releases=("v1", "v2", "crash", "v4", "v5"), failed=("crash",), history=h,
             commits={"crash": C, "v5": C})
    assert cli.rollback_plan("v4", [n]).version == "v2"
    first = node(live="v5", previous="v4", releases=("v1", "v2", "crash", "v4", "v5"), failed=("crash",),
                 history=h[:-1], commits={"crash": C, "v5": C})
    assert cli.rollback_plan("v5", [first]).version == "v4"
    after_v4_crash = node(live="v4", previous="crash", releases=("v2", "crash", "v4"), failed=("crash",),
                          history=[rec("v2"), rec("v4"), rec("crash", result="failed: switched back to v4")],
                          commits={"crash": C})
    assert cli.rollback_plan("v4", [after_v4_crash]).version == "v2"


def test_a_failed_release_needs_allow_failed():
    n = node(live="v4", releases=("v2", "crash", "v4"), failed=("crash",), commits={"crash": C})
    with pytest.raises(cli.Refused, match=r"crash failed on node1 .*--allow-failed"):
        cli.rollback_plan("v4", [n], "crash")
    assert cli.rollback_plan("v4", [n], "crash", allow_failed=True).version == "crash"


def test_pin_ahead_of_what_every_node_runs_pins_what_runs():
    """v3 failed and v2 is live again on every node: the rollback pins v2, restarting nothing."""
    nodes = [node(live="v2", previous="v1", releases=("v1", "v2", "v3"), failed=("v3",)),
             node("node2", live="v2", previous="v1", releases=("v1", "v2", "v3"), failed=("v3",))]
    plan = cli.rollback_plan("v3", nodes)
    assert (plan.version, plan.commit, plan.pin_only) == ("v2", C, True)
    assert "every node runs v2 but the stack pins v3" in plan.why and "nothing restarts" in plan.why


def test_a_new_node_without_history_gets_the_target_sent():
    fresh = node("prod2", previous=None, releases=("v4",), history=[])
    plan = cli.rollback_plan("v4", [node("prod"), fresh])
    assert (plan.version, plan.retained, plan.send) == ("v3", ["prod"], ["prod2"])


def test_a_node_whose_copy_was_removed_is_named_as_sent_to():
    plan = cli.rollback_plan("v4", [node(), node("node2", releases=("v4",))])
    assert (plan.version, plan.retained, plan.send) == ("v3", ["node1"], ["node2"])


def test_rollback_refused_when_nodes_disagree():
    n2 = node("node2", history=[rec("v2"), rec("v4")], releases=("v2", "v3", "v4"))
    with pytest.raises(cli.Refused, match=r"disagree.*node1: v3, node2: v2.*--to"):
        cli.rollback_plan("v4", [node(), n2])


def test_rollback_without_any_earlier_version():
    n = node(previous=None, releases=("v4",), history=[rec("v4")])
    with pytest.raises(cli.Refused, match=r"no earlier good version.*--to \(retained: node1: v4\)"):
        cli.rollback_plan("v4", [n])


def test_rollback_to_unknown_version_names_the_flag():
    with pytest.raises(cli.Usage, match=r"^--to: v99 is not retained on any node \(retained: node1: v3, v4\)$"):
        cli.rollback_plan("v4", [node()], "v99")


def test_rollback_needs_every_node():
    with pytest.raises(cli.Refused, match=r"cannot roll back without reading every node: node2: cannot connect"):
        cli.rollback_plan("v4", [node(), node("node2", error="cannot connect")])


def test_nodes_without_history_fall_back_to_previous():
    assert cli.rollback_plan("v4", [node(history=[])]).version == "v3"


def test_rollback_refused_when_nodes_built_the_version_from_different_commits():
    with pytest.raises(cli.Refused, match="not one commit on every node"):
        cli.rollback_plan("v4", [node(), node("node2", commits={"v3": C})])


# --- the database ahead of the target (issue 20.5) ------------------------------------------------


def test_migrations_ahead_name_the_destructive_ones_and_the_backup():
    n = node(applied=(("1", "init"), ("2", "add_x"), ("3", "drop_extra")),
             history=[rec("v1"), rec("v7", frm="v1")],
             backups=("/var/backups/m/pre-v7-20260102T0304Z.db", "/var/backups/m/pre-v6-20260101T0000Z.db"))
    known = {m.version: m for m in [Migration("1", "init", False), Migration("2", "add_x", False),
                                    Migration("3", "drop_extra", True)]}
    ahead = cli.migrations_ahead(n, [Migration("1", "init", False)], known)
    assert (ahead.migrations, ahead.destructive) == (["2 add_x", "3 drop_extra"], ["3 drop_extra"])
    assert cli.matching_backup(n, "v1") == "/var/backups/m/pre-v7-20260102T0304Z.db"
    assert cli.migrations_ahead(n, list(known.values()), known) is None
    assert cli.restore_command("mnw", "/var/lib/m.db", "/b/pre-v7-20260102T0304Z.db") == \
        'systemctl stop mnw && sqlite3 /var/lib/m.db ".restore /b/pre-v7-20260102T0304Z.db" && systemctl start mnw'
    assert cli.restore_command("mnw", "/var/lib/m.db", "/my b/x.db") == \
        "systemctl stop mnw && sqlite3 /var/lib/m.db '.restore '\"'\"'/my b/x.db'\"'\"'' && systemctl start mnw"


# --- after the up -------------------------------------------------------------------------------


def test_deployed_problems():
    assert cli.deployed_problems([node(), node("node2")], "v4", B) == []
    assert cli.deployed_problems([node(), node("node2", live="v3")], "v4", B) == [f"node2 runs v3 (commit {A[:12]})"]
    assert cli.deployed_problems([node(health=500)], "v4", B) == ["node1's health check says HTTP 500 (serves v4)"]
    assert cli.deployed_problems([node(error="boom")], "v4", B) == ["node1 cannot be read (boom)"]


# --- status --------------------------------------------------------------------------------------


def test_status_table():
    rows = cli.status_rows("prod", "v4", [node(), node("node2", live="v3", unit="inactive dead", health=None),
                                          node("node3", error="cannot connect: [Errno 111] Connection refused")],
                           [Migration("1", "init", False), Migration("2", "drop_x", True)])
    rows += cli.status_rows("testnot", None, [], error="no passphrase")
    lines = cli.render_status(rows).splitlines()
    assert lines[0].split() == ["STACK", "NODE", "LIVE", "PREVIOUS", "COMMIT", "UNIT", "HEALTH", "CADDY", "PENDING",
                                "MIGRATIONS", "FREE", "LAST", "DEPLOY"]
    assert lines[1].split() == ["prod", "node1", "v4", "v3", B[:7], "active", "ok", "(serves", "v4)", "active,", "ok",
                                "2", "drop_x", "(destructive)", "2.0", "GB", "v4", "2026-01-02T03:04Z", "by",
                                "ann@box", "(pulumi", "up)"]
    assert lines[2].split()[:7] == ["prod", "node2", "v3", "(pin", "v4)", "v3", A[:7]]
    assert "inactive dead" in lines[2] and "no answer (refused)" in lines[2]
    assert lines[3].split() == ["prod", "node3", "unreachable:", "cannot", "connect:", "[Errno", "111]", "Connection",
                                "refused"]
    assert lines[4].split() == ["testnot", "-", "cannot", "read", "the", "stack:", "no", "passphrase"]
    columns = lines[0].index("LIVE")
    assert all(line[columns - 2:columns] == "  " for line in lines)  # aligned


def test_last_deploy_names_who_how_and_a_skipped_warning():
    d = {**rec("v5", via="sando rollback", by="bob@desk"), "warning": "skipped (--now) by bob@desk"}
    assert cli.describe_deploy(d) == "v5 2026-01-02T03:04Z by bob@desk (sando rollback) no warning"
    assert cli.describe_deploy(rec("v6", result="failed: switched back to v5")) == \
        "v6 2026-01-02T03:04Z by ann@box (pulumi up) failed: switched back to v5"


def test_when():
    assert cli.when("2026-01-02T03:04:05+00:00") == "2026-01-02T03:04Z"
    assert cli.when("2026-01-02T04:04:05+01:00") == "2026-01-02T03:04Z"
    assert cli.when(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04Z"
    assert cli.when(None) is None and cli.when("soon") == "soon"


# --- pulumi's errors in one line ------------------------------------------------------------------

UP_FAILED = """Updating (prod):
 ~  sando:index:CurrentPointer prod-current **updating failed** error: prod: v4 failed its health check
    pulumi:pulumi:Stack sando-prod running error: update failed
Diagnostics:
  pulumi:pulumi:Stack (sando-prod):
    error: update failed
    error: Resource monitor has terminated, shutting down

  pulumi-python:dynamic:Resource (prod-current-pointer):
    error: prod: v4 failed its health check (HTTP 500); v3 is live again

Resources:
    1 errored
"""

TRACEBACK = """Diagnostics:
  pulumi-python:dynamic:Resource (tn2-current):
    error: Traceback (most recent call last):
      File "x.py", line 1, in update
    Exception: tn2: v4 failed

Resources:
"""


def test_engine_error_of_the_verdict_is_each_node_error():
    text = ("Diagnostics:\n  pulumi-python:dynamic:Resource (verdict):\n    error: the deploy failed on tn1, tn2:\n"
            "    tn1: v4 failed its health check (HTTP 500); v3 is live again\n"
            "    tn2: v4 failed its health check (HTTP 500); v3 is live again\n\n"
            "  pulumi:pulumi:Stack (sando-prod):\n    error: update failed\n")
    assert cli.engine_error(text) == ("tn1: v4 failed its health check (HTTP 500); v3 is live again; "
                                      "tn2: v4 failed its health check (HTTP 500); v3 is live again")


def test_engine_error_picks_the_specific_line():
    assert cli.engine_error(UP_FAILED) == "prod: v4 failed its health check (HTTP 500); v3 is live again"
    assert cli.engine_error(TRACEBACK) == "Exception: tn2: v4 failed"
    assert cli.engine_error("Diagnostics:\n    error: update failed\n") is None
    command_error = "\n code: 255\n stdout: \n stderr: error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE"
    assert cli.one_line(command_error) == "passphrase must be set with PULUMI_CONFIG_PASSPHRASE"
    assert cli.one_line("\n code: 1\n stdout: \n stderr: something odd\n") == "something odd"


# --- the command line ---------------------------------------------------------------------------


def run(*argv, stdin=None, project=None):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err, stdin=stdin or io.StringIO(), project=project or FakeProject)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [[], ["promote"], ["status"], ["rollback"]])
def test_help_fits_a_screen(command):
    code, out, err = run(*command, "--help")
    assert code == 0 and err == ""
    assert out.startswith("usage: sando") and "Exit codes: 0 ok" in out
    assert len(out.splitlines()) < 40


@pytest.mark.parametrize("argv, flag", [
    (["rollback"], "-s/--stack"),
    (["promote", "--from", "testnot"], "--to"),
    (["promote", "--from", "a", "--to", "a", "--yes"], "--to: is the same stack as --from"),
    (["rollback", "-s", "prod", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
    (["rollback", "-s", "prod"], "--yes: no terminal"),  # stdin is not a TTY
    (["promote", "--from", "testnot", "--to", "prod"], "--yes: no terminal"),
])
def test_argument_errors_name_the_flag(argv, flag):
    code, out, err = run(*argv)
    assert code == 2 and err.startswith("sando: ") and flag in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cwd_must_be_a_pulumi_project(tmp_path):
    code, _, err = run("--cwd", str(tmp_path), "status", project=cli.Project)
    assert code == 2 and err == f"sando: --cwd: {tmp_path} is not a Pulumi project (no Pulumi.yaml)\n"


# --- the command line ---------------------------------------------------------------------------


def run(*argv, stdin=None, project=None):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err, stdin=stdin or io.StringIO(), project=project or FakeProject)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [[], ["promote"], ["status"], ["rollback"]])
def test_help_fits_a_screen(command):
    code, out, err = run(*command, "--help")
    assert code == 0 and err == ""
    assert out.startswith("usage: sando") and "Exit codes: 0 ok" in out
    assert len(out.splitlines()) < 40


@pytest.mark.parametrize("argv, flag", [
    (["rollback"], "-s/--stack"),
    (["promote", "--from", "testnot"], "--to"),
    (["promote", "--from", "a", "--to", "a", "--yes"], "--to: is the same stack as --from"),
    (["rollback", "-s", "prod", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
    (["rollback", "-s", "prod"], "--yes: no terminal"),  # stdin is not a TTY
    (["promote", "--from", "testnot", "--to", "prod"], "--yes: no terminal"),
])
def test_argument_errors_name_the_flag(argv, flag):
    code, out, err = run(*argv)
    assert code == 2 and err.startswith("sando: ") and flag in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cwd_must_be_a_pulumi_project(tmp_path):
    code, _, err = run("--cwd", str(tmp_path), "status", project=cli.Project)
    assert code == 2 and err == f"sando: --cwd: {tmp_path} is not a Pulumi project (no Pulumi.yaml)\n"


# --- the command flows against a fake engine ------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self):
        return True


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def config(version, *names, **extra):
    nodes = "[" + ",".join('{"name": "%s", "host": "10.0.0.1", "hostKey": "%s"}' % (n, KEY) for n in names) + "]"
    return load({"sando:nodes": nodes, "sando:version": version, "sando:source": '{"repo": "../app"}',
                 "sando:sshAgent": "true", "sando:bootstrap": '{"ref": "main"}', **{f"sando:{k}": v for k, v in extra.items()}},
                frozenset({"sando:cliServiceToken"}))


class FakeProject:
    """Stands in for cli.Project: each stack's config and nodes in memory; an up moves the nodes
    to the pin (or to `after_up`)."""

    stacks: dict[str, dict] = {}
    after_up: dict[str, list] = {}
    up_fails: str | None = None  # the up fails (before anything switched) with this
    release: list = [Migration("1", "init", False)]

    def __init__(self, directory):
        self.dir = Path(directory)
        self.calls = []
        FakeProject.last = self

    def stack_names(self):
        return list(self.stacks)

    def stack(self, name, flag):
        if name not in self.stacks:
            raise cli.Usage(flag, f"no stack {name!r}")
        return name

    def config(self, name):
        return self.stacks[name]["config"]

    def nodes_now(self, cfg):
        return next(s["nodes"] for s in self.stacks.values() if s["config"].nodes == cfg.nodes)

    def source_repo(self, cfg):
        return Path("/")

    def commit_of(self, cfg, version):
        return COMMITS.get(version)

    def migrations(self, cfg, commit):
        return self.release

    def pin(self, name, version, host=cli.Project._KEEP, verified=cli.Project._KEEP):
        self.calls.append(("pin", name, version))
        if verified is not cli.Project._KEEP:
            self.calls.append(("verified", name, verified))
        s = self.stacks[name]
        s["config"] = s["config"].model_copy(update={"version": version})

    def preview(self, name, out, err, env=None):
        self.calls.append(("preview", name, env))
        out.write("Previewing update\n")

    def up(self, name, out, err, message, env=None):
        self.calls.append(("up", name, message, env))
        if self.up_fails:  # as Project.up: the engine's error in its output, then said to have failed
            err.write(f"error: {self.up_fails}\n")
            raise cli.Refused(f"pulumi up of {name} failed (its error is above)")
        version = self.stacks[name]["config"].version
        self.stacks[name]["nodes"] = self.after_up.get(name) or [
            node(n.name, live=version, previous=n.live, releases=tuple(sorted({*n.releases, version})))
            for n in self.stacks[name]["nodes"]]

    def host_commit(self, name):
        return None  # these stacks track no host config

    def sent(self, name):
        return {n.name: 0 for n in self.stacks[name]["nodes"]}


@pytest.fixture
def fake(monkeypatch):
    FakeProject.stacks = {
        "testnot": {"config": config("v4", "node1", "node2"), "nodes": [node(), node("node2")]},
        "prod": {"config": config("v3", "prod"),
                 "nodes": [node("prod", "v3", "v2", releases=("v2", "v3"), history=[rec("v2"), rec("v3")])]},
    }
    FakeProject.after_up = {}
    FakeProject.up_fails = None
    FakeProject.release = [Migration("1", "init", False)]
    monkeypatch.setattr(cli, "git_commit", lambda repo, ref: COMMITS.get(ref))
    return FakeProject


def test_promote_deploys_and_checks_the_commit(fake):
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert (code, err) == (0, "")
    assert [c[0] for c in fake.last.calls] == ["pin", "verified", "preview", "up"]
    assert fake.last.calls[1][2] == {"from": "testnot", "version": "v4", "commit": B, "files": {}}
    assert fake.last.calls[3][2].startswith(f"sando promote testnot -> prod: v4 ({B[:12]}) by ")
    assert fake.last.calls[3][3]["SANDO_VIA"] == "sando promote" and "SANDO_NOW" not in fake.last.calls[3][3]
    assert f"prod runs v4 ({B[:12]}) on every node (prod), healthy now; 0 bytes sent" in out


def test_promote_to_a_stack_on_its_first_deploy_says_it_runs_nothing(fake):
    """A target whose nodes have nothing live yet (a first deploy): "nothing", not Python's None."""
    fake.stacks["prod"]["nodes"] = [node("prod", live=None, previous=None, releases=(), history=[])]
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert (code, err) == (0, "")
    assert "healthy on every testnot node now; prod runs nothing now\n" in out and "None" not in out, out
    assert cli._live([node("a", live=None), node("b", live="v2"), node("c", error="refused")]) == "nothing, v2"


def test_promote_now_skips_the_warning(fake):
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes", "--now")
    assert (code, err) == (0, "") and fake.last.calls[3][3]["SANDO_NOW"] == "1"


def test_promote_refuses_a_moved_tag(fake, monkeypatch):
    monkeypatch.setattr(cli, "git_commit", lambda repo, ref: C)
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and C[:12] in err and B[:12] in err and fake.last.calls == []


def test_promote_refuses_a_source_stopped_by_hand(fake):
    fake.stacks["testnot"]["nodes"] = [node(), node("node2", unit="inactive dead", health=None)]
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and err == ("sando: testnot is not promotable (read from its nodes now): node2's service is "
                                 "inactive dead; node2's health check says no answer (refused)\n")


def test_promote_fails_loudly_when_the_target_does_not_run_the_commit(fake):
    fake.after_up["prod"] = [node("prod", commits={"v4": C})]
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and f"prod does NOT run v4 at {B[:12]}" in err


def test_declined_deploy_puts_the_pin_back(fake):
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", stdin=Tty("n\n"))
    assert code == 1 and "back to v3" in err and "Deploy v4" in out
    assert fake.stacks["prod"]["config"].version == "v3"
    assert [c[0] for c in fake.last.calls] == ["pin", "verified", "preview", "pin", "verified"]


def test_failed_preview_puts_the_pin_back(fake, monkeypatch):
    def broken(self, name, out, err, env=None):
        raise cli.Refused(f"{name}: pulumi preview failed: sando:nodes[0].hostKey: is required")
    monkeypatch.setattr(FakeProject, "preview", broken)
    code, _, err = run("rollback", "-s", "prod", "--yes")
    assert code == 1 and err == "sando: prod: pulumi preview failed: sando:nodes[0].hostKey: is required\n"
    assert fake.stacks["prod"]["config"].version == "v3"


def test_rollback_confirmed_on_a_terminal(fake):
    code, out, err = run("rollback", "-s", "prod", stdin=Tty("y\n"))
    assert (code, err) == (0, "")
    assert "roll prod back from v3 to v2" in out and "retained on prod: nothing sent there" in out
    assert "prod runs v2" in out and fake.stacks["prod"]["config"].version == "v2"
    assert fake.last.calls[-1][3]["SANDO_VIA"] == "sando rollback"


def test_rollback_to_not_retained_names_the_flag(fake):
    code, _, err = run("rollback", "-s", "prod", "--to", "v99", "--yes")
    assert (code, err) == (2, "sando: --to: v99 is not retained on any node (retained: prod: v2, v3)\n")


def test_rollback_across_a_destructive_migration_needs_a_second_flag(fake, monkeypatch):
    fake.stacks["prod"]["nodes"] = [node("prod", "v3", "v2", releases=("v2", "v3"),
                                         applied=(("1", "init"), ("2", "drop_x")),
                                         history=[rec("v2"), rec("v3", frm="v2")],
                                         backups=("/var/backups/makenotwork/pre-v3-20260102T0304Z.db",))]
    monkeypatch.setattr(FakeProject, "migrations", lambda self, cfg, commit: [Migration("1", "init", False)] + (
        [Migration("2", "drop_x", True)] if commit == A else []))
    code, out, err = run("rollback", "-s", "prod", "--yes")
    assert code == 1 and "--accept-destructive" in err and fake.last.calls == []
    assert ("WARNING prod: the database (/var/lib/x.db) is ahead of v2 by migration(s) 2 drop_x; DESTRUCTIVE: "
            "2 drop_x. The backup from before them: /var/backups/makenotwork/pre-v3-20260102T0304Z.db; to restore it "
            "after the rollback: sando ssh -s prod prod -- ") in out
    code, out, err = run("rollback", "-s", "prod", "--yes", "--accept-destructive")
    assert (code, err) == (0, "")


def test_status_of_all_stacks(fake):
    code, out, err = run("status")
    assert (code, err) == (0, "")
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [  # in `pulumi stack ls` order
        ["testnot", "node1", "v4"], ["testnot", "node2", "v4"], ["prod", "prod", "v3"]]


def test_status_json(fake):
    fake.stacks["prod"]["nodes"].append(node("prod2", error="cannot connect"))
    code, out, err = run("status", "prod", "--json")
    assert code == 1 and err == "sando: could not read prod/prod2\n"
    import json
    [st] = json.loads(out)["stacks"]
    assert (st["stack"], st["version"], st["commit"]) == ("prod", "v3", A)
    assert st["nodes"][1] == {"node": "prod2", "host": "10.0.0.1", "reachable": False, "error": "cannot connect"}
    n = st["nodes"][0]
    assert n["liveVersion"] == "v3" and n["pendingMigrations"] == [] and n["lastDeploy"]["via"] == "pulumi up"
    assert n["releases"][0]["createdAt"] == "1970-01-01T00:00:01Z" or n["releases"][0]["createdAt"] is None


def test_status_of_unknown_stack(fake):
    code, _, err = run("status", "nope")
    assert (code, err) == (2, "sando: STACK: no stack 'nope'\n")


def test_failures_are_one_line_without_traceback(fake, monkeypatch):
    def boom(self, name):
        raise RuntimeError("\n code: 255\n stdout: \n stderr: error: the backend is unreachable")
    monkeypatch.setattr(FakeProject, "config", boom)
    code, _, err = run("rollback", "-s", "prod", "--yes")
    assert (code, err) == (1, "sando: the backend is unreachable\n")
    monkeypatch.setenv("SANDO_DEBUG", "1")
    assert "Traceback" in run("rollback", "-s", "prod", "--yes")[2]


def test_logs_command_by_exact_string():
    import shlex

    from sando_components import fleet, scripts
    cmd = fleet.logs_command("makenotwork", "/opt/makenotwork", 100)
    argv = shlex.split(cmd)
    assert argv[0:2] == ["sh", "-c"] and argv[3:] == ["sando-logs"]
    assert ("\nSERVICE=makenotwork\nRELEASE_ROOT=/opt/makenotwork\nN_LINES=100\nSINCE=''\nFOLLOW=0\n"
            in argv[2])
    assert argv[2].endswith(scripts.source("logs.sh"))
    follow = shlex.split(fleet.logs_command("mnw", "/srv/mnw", None, "1 hour ago", True))[2]
    assert "\nSERVICE=mnw\nRELEASE_ROOT=/srv/mnw\nN_LINES=''\nSINCE='1 hour ago'\nFOLLOW=1\n" in follow


def _run_logs(tmp_path: Path, *args, instance: str | None = None, unit_exists: bool = True) -> tuple[str, str]:
    """sh/logs.sh run for real, with stand-in journalctl (prints its argv) and systemctl (`cat`
    succeeds when the instance unit exists) on PATH: (journalctl's argv, stderr)."""
    import os
    import shlex
    import subprocess

    from sando_components import fleet
    bin_dir, root = tmp_path / "bin", tmp_path / "root"
    bin_dir.mkdir(exist_ok=True)
    (root / ".sando").mkdir(parents=True, exist_ok=True)
    (bin_dir / "journalctl").write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\n')
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\nexit {0 if unit_exists else 1}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    if instance is not None:
        (root / ".sando" / "instance").write_text(instance + "\n")
    res = subprocess.run(shlex.split(fleet.logs_command("makenotwork", str(root), *args)), capture_output=True,
                         text=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=True)
    return res.stdout, res.stderr


def test_logs_names_the_plain_unit_without_a_live_instance(tmp_path):
    assert _run_logs(tmp_path, 100) == ("[--no-pager][-u][makenotwork.service][-o][short-iso][-n][100]", "")
    assert _run_logs(tmp_path, None, "1 hour ago", True) == (
        "[--no-pager][-u][makenotwork.service][-o][short-iso][--since][1 hour ago][-f]", "")
    # a record whose instance unit systemd does not know is not a live instance
    assert _run_logs(tmp_path, 5, instance="3002", unit_exists=False)[0] == \
        "[--no-pager][-u][makenotwork.service][-o][short-iso][-n][5]"


def test_logs_on_a_blue_green_node_show_every_instance_and_name_the_live_one(tmp_path):
    out, err = _run_logs(tmp_path, 100, instance="3002")
    assert out == "[--no-pager][-u][makenotwork@*.service][-o][with-unit][-n][100]"
    assert err == (f"sando: makenotwork@3002.service is live (blueGreen, {tmp_path}/root/.sando/instance); the "
                   "journal of every makenotwork@ instance, each line after its unit\n")


def test_restart_stdin_carries_the_token_only_when_warning():
    from sando_components import fleet
    cfg = config("v1", "n1", restartWarningSeconds="30", cliServiceToken="s3cret")
    assert fleet.restart_stdin(cfg, True) == b"Authorization: Bearer s3cret\n"
    assert fleet.restart_stdin(cfg, False) == b"\n"
    assert "s3cret" not in fleet.restart_command(cfg, cfg.nodes[0], A, {"by": "x@y", "via": "sando restart"}, True)


def test_logs_says_a_nodes_failure_once_and_goes_on(fake, monkeypatch):
    """One node that cannot be read is said in one line naming it once; the others are printed."""
    def stream(c, command, out, err=None, prefix="", lock=None):
        if c.node == "node2":
            raise ssh.RemoteError(f"{c.label}: the SSH key was refused (sando:sshPrivateKey or sando:sshAgent)")
        if c.node == "node1":
            raise OSError("Connection reset by peer")
        out.write(f"{prefix}a line\n")
        return 0
    monkeypatch.setattr(fleet, "stream", stream)
    FakeProject.stacks["testnot"]["config"] = config("v4", "node1", "node2", "node3")
    code, out, err = run("logs", "-s", "testnot")
    assert (code, out) == (1, "node3 | a line\n")
    assert sorted(err.splitlines()) == [
        "sando: node1: Connection reset by peer",
        "sando: node2 (root@10.0.0.1:22): the SSH key was refused (sando:sshPrivateKey or sando:sshAgent)"]
    # a session that ends without an exit status (paramiko's -1: a follow whose connection dropped)
    monkeypatch.setattr(fleet, "stream", lambda c, *a, **k: -1)
    code, out, err = run("logs", "-s", "testnot", "node3", "-f")
    assert (code, out, err) == (1, "", "sando: node3: the journal's session ended before journalctl did (the "
                                "connection dropped, or it was killed); run `sando logs -s testnot node3` again\n")


@pytest.mark.parametrize("command", [["logs"], ["ssh"], ["restart"]])
def test_new_commands_help_fits_a_screen(command):
    code, out, err = run(*command, "--help")
    assert code == 0 and err == "" and len(out.splitlines()) < 40


def test_promote_refuses_a_source_whose_nodes_run_different_bytes(fake):
    fake.stacks["testnot"]["nodes"] = [node(files={"makenotwork": "a" * 64}), node("node2", files={"makenotwork": "b" * 64})]
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and err == ("sando: testnot is not promotable: its nodes run v4 with different bytes (node1 / node2 "
                                 "differ in makenotwork); redeploy it from one build first\n") and fake.last.calls == []


def test_promote_shows_the_gate_and_refuses_before_the_up_when_the_target_would(fake):
    fake.stacks["prod"]["config"] = config("v3", "prod", migrations='{"refuseDestructive": true}')
    fake.release = [Migration("1", "init", False), Migration("2", "drop_notes", True)]
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and fake.last.calls == []
    assert ("sando: migration gate on prod for v4: prod refuses destructive migrations "
            "(sando:migrations.refuseDestructive) and v4 is not in sando:migrations.allowDestructive\n"
            "  prod: pending 2 drop_notes; destructive: 2 drop_notes\n") in out
    assert err == ("sando: prod would refuse v4: destructive migrations pending on prod (2 drop_notes), and prod refuses "
                   "them (sando:migrations.refuseDestructive); nothing was changed. If the data loss is intended: pulumi "
                   "config set --path 'sando:migrations.allowDestructive[0]' v4 -s prod, then promote again\n")
    # allowed for that version: shown, and it goes on
    fake.stacks["prod"]["config"] = config("v3", "prod", migrations='{"refuseDestructive": true, "allowDestructive": ["v4"]}')
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 0, err
    assert "prod allows them for v4 (sando:migrations.allowDestructive)" in out


def test_a_failed_up_where_no_node_switched_puts_the_pins_back(fake):
    fake.up_fails = "node prod: refused"
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and "no node of prod switched: its sando:version is back to v3 (nothing to commit)" in err
    assert fake.stacks["prod"]["config"].version == "v3"
    assert fake.last.calls[-1] == ("verified", "prod", None)


def test_a_failed_up_where_a_node_switched_keeps_the_pin(fake):
    fake.up_fails = "node2 failed"
    fake.stacks["prod"]["nodes"].append(node("prod2", "v3", "v2", releases=("v2", "v3")))
    real_nodes_now = FakeProject.nodes_now
    calls = []

    def nodes_now(self, cfg):
        calls.append(1)
        nodes = real_nodes_now(self, cfg)
        if len(calls) > 2:  # after the up: prod switched to v4, prod2 did not
            return [node("prod", "v4", "v3"), nodes[1]]
        return nodes
    FakeProject.nodes_now = nodes_now
    try:
        code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    finally:
        FakeProject.nodes_now = real_nodes_now
    assert code == 1 and "prod's sando:version stays v4 (was v3)" in err
    assert fake.stacks["prod"]["config"].version == "v4"


def test_status_flags_a_node_whose_bytes_differ_from_its_peers_on_the_same_version():
    same = {"makenotwork": "a" * 64, "error-pages/404.html": "c" * 64}
    other = {**same, "makenotwork": "b" * 64}
    nodes = [node("node1", files=same), node("node2", files=other), node("node3", files=same),
             node("node4", live="v3", files=other)]
    assert cli.odd_bytes(nodes) == {"node2": "its v4 differs from node1's: makenotwork"}
    rows = cli.status_rows("prod", "v4", nodes)
    assert [r["live"] for r in rows] == ["v4", "v4 (other bytes!)", "v4", "v3 (pin v4)"]
    assert cli.odd_bytes(nodes[:1] + nodes[2:]) == {}


def test_a_release_file_is_fetched_as_base64_by_an_exact_command():
    from sando_components import fleet
    assert fleet.fetch_command("/opt/makenotwork/releases/v2/error-pages/404.html") == \
        "base64 -w0 -- /opt/makenotwork/releases/v2/error-pages/404.html"
    assert fleet.fetch_command("/opt/x y/releases/v2/a") == "base64 -w0 -- '/opt/x y/releases/v2/a'"
