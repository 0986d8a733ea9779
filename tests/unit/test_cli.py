"""sando's operator commands (sando_components/cli.py) without an engine: the pure decisions,
the command line, and the command flows against a fake Project."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest

from sando_components import cli

A, B, C = "a" * 40, "b" * 40, "c" * 40


def node(live="v4", commit=B, previous="v3", health="ok", releases=(("v3", A), ("v4", B)), batch=0, **extra):
    return {"host": "10.0.0.1", "batch": batch, "liveVersion": live, "liveCommit": commit,
            "previousVersion": previous, "switchedAt": "2026-01-02T03:04:05+00:00", "health": health,
            "releases": [{"version": v, "commit": c, "createdAt": i, "failed": False}
                         for i, (v, c) in enumerate(releases)],
            "lastTransfer": {"version": live, "bytesSent": 0},
            "migrations": {"pending": [], "destructive": [], "dryRun": "not needed", "backup": None,
                           "database": None}, **extra}


def stack(version="v4", commit=B, **nodes):
    return {"version": version, "commit": commit, "nodes": nodes or {"node1": node(), "node2": node()}}


OK = {"when": "2026-01-02 03:04Z", "kind": "update", "result": "succeeded", "message": None, "author": None}


# --- promote: is the source promotable, did the name move --------------------------------------


def test_healthy_source_is_promotable():
    assert cli.check_promotable(stack(), OK) == []


def test_unhealthy_node_is_named():
    problems = cli.check_promotable(stack(node1=node(), node2=node(health="failed")), OK)
    assert problems == ["node2's health is failed"]


def test_half_rolled_out_source_is_refused():
    problems = cli.check_promotable(stack(node1=node(), node2=node(live="v3", commit=A)), OK)
    assert len(problems) == 1 and "node2 runs v3 but the stack pins v4" in problems[0]


def test_node_on_another_commit_is_refused():
    problems = cli.check_promotable(stack(node1=node(commit=C)), OK)
    assert problems == [f"node1 runs commit {C[:12]}, the stack's is {B[:12]}"]


def test_failed_last_update_means_stale_outputs():
    problems = cli.check_promotable(stack(), {**OK, "result": "failed"})
    assert len(problems) == 1 and "last update (2026-01-02 03:04Z) failed" in problems[0]


def test_never_deployed_source():
    assert "never deployed" in cli.check_promotable({}, None)[0]
    assert "never deployed" in cli.check_promotable({"version": "v1", "commit": A, "nodes": {}}, OK)[0]


def test_moved_tag_names_both_commits():
    assert cli.moved_tag("v4", B, B, "prod's source repo /r") is None
    msg = cli.moved_tag("v4", B, C, "prod's source repo /r")
    assert C[:12] in msg and B[:12] in msg and "prod's source repo /r" in msg
    assert "not a tag, branch or commit" in cli.moved_tag("v4", B, None, "x")


# --- rollback: which version ------------------------------------------------------------------


def test_rollback_to_the_common_previous_version():
    assert cli.rollback_target(stack()) == ("v3", A)


def test_rollback_refused_when_previous_versions_disagree():
    outputs = stack(node1=node(), node2=node(previous="v2", releases=(("v2", C), ("v3", A), ("v4", B))))
    with pytest.raises(cli.Refused, match=r"disagree.*node1: v3, node2: v2.*--to"):
        cli.rollback_target(outputs)


def test_rollback_to_a_version_retained_everywhere():
    outputs = stack(node1=node(releases=(("v2", C), ("v3", A), ("v4", B))), node2=node())
    assert cli.rollback_target(outputs, "v3") == ("v3", A)
    with pytest.raises(cli.Usage) as exc:
        cli.rollback_target(outputs, "v2")
    assert str(exc.value) == "--to: v2 is not retained on node2 (retained: v3, v4)"


def test_rollback_to_unknown_version_names_the_flag():
    with pytest.raises(cli.Usage, match=r"^--to: v99 is not retained on node1 \(retained: v3, v4\)$"):
        cli.rollback_target(stack(), "v99")


def test_rollback_without_previous_version():
    outputs = stack(node1=node(previous=None, releases=(("v4", B),)))
    with pytest.raises(cli.Refused, match=r"no previous version.*--to \(retained: v4\)"):
        cli.rollback_target(outputs)


def test_rollback_previous_version_pruned_on_one_node():
    outputs = stack(node1=node(), node2=node(releases=(("v4", B),)))
    with pytest.raises(cli.Refused, match="v3 is not retained on node2"):
        cli.rollback_target(outputs)


def test_rollback_refused_when_nodes_built_the_version_from_different_commits():
    outputs = stack(node1=node(), node2=node(releases=(("v3", C), ("v4", B))))
    with pytest.raises(cli.Refused, match="not one commit on every node"):
        cli.rollback_target(outputs)


def test_failed_releases_are_marked_in_the_listing():
    n = node()
    n["releases"][0]["failed"] = True
    with pytest.raises(cli.Usage, match=r"retained: v3 \(failed\), v4"):
        cli.rollback_target(stack(node1=n), "v9")


# --- after the up -------------------------------------------------------------------------------


def test_deployed_problems():
    assert cli.deployed_problems(stack(), "v4", B) == []
    problems = cli.deployed_problems(stack(node1=node(), node2=node(live="v3", commit=A)), "v4", B)
    assert problems == [f"node2 runs v3 (commit {A[:12]})"]
    assert "commit is" in cli.deployed_problems(stack(commit=C), "v4", B)[0]
    assert cli.deployed_problems(stack(node1=node(health="failed")), "v4", B) == ["node1's health is failed"]


# --- status --------------------------------------------------------------------------------------


def test_status_table_with_missing_fields():
    last = {**OK, "message": "sando promote testnot -> prod: v4 by ann@box", "author": "Ann"}
    rows = cli.status_rows("prod", stack(node1=node(), node2={"liveVersion": "v3"}), last)
    rows += cli.status_rows("testnot", {}, None)
    text = cli.render_status(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["STACK", "NODE", "LIVE", "PREVIOUS", "COMMIT", "HEALTH", "SWITCHED", "PENDING",
                                "MIGRATIONS", "LAST", "UPDATE"]
    assert lines[1].split()[:9] == ["prod", "node1", "v4", "v3", B[:7], "ok", "2026-01-02", "03:04Z", "none"]
    assert '"sando promote testnot -> prod: v4 by ann@box" (git.author Ann)' in lines[1]
    assert lines[2].split() == ["prod", "node2", "v3", "(pin", "v4)", "-", "-", "-", "-", "-"]
    assert lines[3].split() == ["testnot", "-", "-", "-", "-", "-", "-", "-", "never", "updated"]
    columns = lines[0].index("LIVE")
    assert all(line[columns - 2:columns] == "  " for line in lines)  # aligned


def test_status_row_for_an_unreadable_stack_and_pending_migrations():
    n = node(migrations={"pending": ["0007_add", "0008_drop"], "destructive": ["0008_drop"]})
    assert cli.status_rows("prod", stack(node1=n))[0]["migrations"] == "0007_add, 0008_drop (1 destructive)"
    assert cli.status_rows("prod", {}, error="boom") == [{"stack": "prod", "last": "error: boom"}]
    held = node(health="held back: an earlier rollout batch failed (node1)")
    assert cli.status_rows("prod", stack(node1=held))[0]["health"] == "held back: an earlier rollout b…"


def test_when():
    assert cli.when("2026-01-02T03:04:05+00:00") == "2026-01-02 03:04Z"
    assert cli.when("2026-01-02T04:04:05+01:00") == "2026-01-02 03:04Z"
    assert cli.when(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04Z"
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


# --- the command flows against a fake engine ------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self):
        return True


class FakeProject:
    """Stands in for cli.Project: stacks as outputs, config and history in memory."""

    stacks: dict[str, dict] = {}
    after_up: dict[str, dict] = {}

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

    def outputs(self, name):
        return self.stacks[name]["outputs"]

    def last_update(self, name, kinds=()):
        return self.stacks[name].get("last", OK)

    def config(self, name, key):
        return self.stacks[name]["config"].get(key)

    def source_repo(self, name):
        return Path("/")

    def pin(self, name, version):
        self.calls.append(("pin", name, version))
        self.stacks[name]["config"]["sando:version"] = version

    def preview(self, name, out, err):
        self.calls.append(("preview", name))
        out.write("Previewing update\n")

    def up(self, name, out, err, message):
        self.calls.append(("up", name, message))
        return self.after_up[name]


@pytest.fixture
def fake(monkeypatch):
    FakeProject.stacks = {
        "testnot": {"outputs": stack(), "config": {"sando:version": "v4"}},
        "prod": {"outputs": stack("v3", A, prod=node("v3", A, "v2", releases=(("v2", C), ("v3", A)))),
                 "config": {"sando:version": "v3"}},
    }
    FakeProject.after_up = {"prod": stack(prod=node())}
    commits = {"v2": C, "v3": A, "v4": B}
    monkeypatch.setattr(cli, "git_commit", lambda repo, ref: commits.get(ref))
    return FakeProject


def test_promote_deploys_and_checks_the_commit(fake):
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert (code, err) == (0, "")
    assert [c[0] for c in fake.last.calls] == ["pin", "preview", "up"]
    assert fake.last.calls[2][2].startswith(f"sando promote testnot -> prod: v4 ({B[:12]}) by ")
    assert f"prod runs v4 ({B[:12]}) on every node (prod); 0 bytes sent" in out


def test_promote_refuses_a_moved_tag(fake, monkeypatch):
    monkeypatch.setattr(cli, "git_commit", lambda repo, ref: C)
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and C[:12] in err and B[:12] in err and fake.last.calls == []


def test_promote_refuses_an_unhealthy_source(fake):
    fake.stacks["testnot"]["outputs"] = stack(node1=node(), node2=node(health="unhealthy"))
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and err == "sando: testnot is not promotable: node2's health is unhealthy\n"


def test_promote_fails_loudly_when_the_target_does_not_run_the_commit(fake):
    fake.after_up["prod"] = stack(prod=node(commit=C))
    code, _, err = run("promote", "--from", "testnot", "--to", "prod", "--yes")
    assert code == 1 and f"prod does NOT run v4 at {B[:12]}" in err


def test_declined_deploy_puts_the_pin_back(fake):
    code, out, err = run("promote", "--from", "testnot", "--to", "prod", stdin=Tty("n\n"))
    assert code == 1 and "back to v3" in err and "Deploy v4" in out
    assert fake.stacks["prod"]["config"]["sando:version"] == "v3"
    assert [c[0] for c in fake.last.calls] == ["pin", "preview", "pin"]


def test_failed_preview_puts_the_pin_back(fake, monkeypatch):
    def broken(self, name, out, err):
        raise cli.Refused(f"{name}: pulumi preview failed: sando:nodes[0].hostKey: is required")
    monkeypatch.setattr(FakeProject, "preview", broken)
    code, _, err = run("rollback", "-s", "prod", "--yes")
    assert code == 1 and err == "sando: prod: pulumi preview failed: sando:nodes[0].hostKey: is required\n"
    assert fake.stacks["prod"]["config"]["sando:version"] == "v3"


def test_rollback_confirmed_on_a_terminal(fake):
    fake.after_up["prod"] = stack("v2", C, prod=node("v2", C, "v3", releases=(("v2", C), ("v3", A))))
    code, out, err = run("rollback", "-s", "prod", stdin=Tty("y\n"))
    assert (code, err) == (0, "")
    assert "roll prod back from v3 to v2" in out and "prod runs v2" in out
    assert fake.stacks["prod"]["config"]["sando:version"] == "v2"


def test_rollback_to_not_retained_names_the_flag(fake):
    code, _, err = run("rollback", "-s", "prod", "--to", "v99", "--yes")
    assert (code, err) == (2, "sando: --to: v99 is not retained on prod (retained: v2, v3)\n")


def test_status_of_all_stacks(fake):
    code, out, err = run("status")
    assert (code, err) == (0, "")
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [  # in `pulumi stack ls` order
        ["testnot", "node1", "v4"], ["testnot", "node2", "v4"], ["prod", "prod", "v3"]]


def test_status_of_unknown_stack(fake):
    code, _, err = run("status", "nope")
    assert (code, err) == (2, "sando: STACK: no stack 'nope'\n")


def test_failures_are_one_line_without_traceback(fake, monkeypatch):
    def boom(self, name):
        raise RuntimeError("\n code: 255\n stdout: \n stderr: error: the backend is unreachable")
    monkeypatch.setattr(FakeProject, "outputs", boom)
    code, _, err = run("rollback", "-s", "prod", "--yes")
    assert (code, err) == (1, "sando: the backend is unreachable\n")
    monkeypatch.setenv("SANDO_DEBUG", "1")
    assert "Traceback" in run("rollback", "-s", "prod", "--yes")[2]


def test_repo_path_of_either_form_of_sando_source(tmp_path):
    assert cli.repo_path(tmp_path, '{"repo":"../app"}') == (tmp_path / "../app").resolve()
    assert cli.repo_path(tmp_path, '{"repo": "/srv/mnw", "binDir": "x"}') == Path("/srv/mnw")
    assert cli.repo_path(tmp_path, None) is None
    assert cli.repo_path(tmp_path, '{"binDir": "x"}') is None
    assert cli.repo_path(tmp_path, "not json") is None
