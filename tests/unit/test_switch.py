"""The switch of a node (sh/switch.sh with its parts health, warning, prune; commands.switch), run
for real in a tmp dir standing for the release root, with
stand-in systemctl/curl/sleep (fakenode.py): the app "runs" the release `current` pointed at when
it was last restarted, and answers its version. Scripts are composed as the provider composes
them (PointerProvider._script, from what commands.probe read); then PointerProvider end to end
with ssh.run running locally, for its outputs and failure messages."""

from __future__ import annotations


import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from sando_components import commands, paths, scripts
from sando_components.errors import OperatorError
from sando_components.providers import base, warning
from sando_components.providers.base import parse_state, releases_of
from sando_components.providers.pointer import PointerProvider, VerdictProvider

from fakenode import FakeNode, connection

TOKEN = "tok-S3CRET-value"
WARNING = {"url": "http://127.0.0.1:3000/api/internal/restart-warning", "seconds": 1, "onFailure": "warn"}


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(tmp_path)


def props(node: FakeNode, version: str, *, expect: bool = False, keep: int = 5, warn: dict | None = None,
          token: str | None = None, gate: dict | None = None, commit: str | None = None, timeout: float = 0,
          rollout: dict | None = None, caddy: str | None = None) -> dict:
    return {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
            "service": "makenotwork", "version": version, "commit": commit or f"c-{version}",
            "release": str(node.root / "releases" / version), "keepReleases": keep,
            "healthCheck": {"url": "http://127.0.0.1:3000/health", "timeoutSeconds": timeout, "intervalSeconds": 0.1,
                            "expectVersion": expect, **({"caddyUrl": caddy} if caddy else {})},
            "warning": warn, "token": token if warn else None, "gate": gate or {}, "rollout": rollout or {}}


def script(node: FakeNode, version: str, *, root: str | None = None, service: str = "makenotwork", expect: str = "",
           url: str = "http://127.0.0.1:3000/", commit: str = "c", prune_ok=(), prune_failed=()) -> str:
    """A switch script composed by hand (health timeout 1 s, no gate, no warning)."""
    return commands.switch(release_root=root or str(node.root), version=version, service=service, expect=expect,
                           health=commands.health_params(url, 1, 0.1, commit), prune_ok=prune_ok,
                           prune_failed=prune_failed)


def switch(node: FakeNode, version: str, shell: str = "/bin/sh", **kw):
    """Compose the switch script as the provider does, from what the node holds now, and run it."""
    p = props(node, version, **kw)
    state = parse_state(node.run(commands.probe(str(node.root), "makenotwork")).out)
    script, _ = PointerProvider()._script(p, state)
    node.clear_calls()
    return node.run(script, stdin=warning.stdin(p["warning"], p["token"]) or b"", shell=shell)


def live_v1(node: FakeNode, *more: str) -> None:
    """v1 live and running, v2 (and `more`) received."""
    node.release("v1", created_at=1)
    node.release("v2", created_at=2)
    for i, v in enumerate(more):
        node.release(v, created_at=3 + i)
    node.point(current="v1")
    node.start("v1")


def final(res):
    return releases_of(res.parsed, "final-")[0]


# --- the switch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_switch_v1_to_v2(node, shell):
    live_v1(node)
    (node.root / "releases" / "v2" / paths.FAILED).write_text("an earlier try failed\n")
    res = switch(node, "v2", shell=shell)
    assert res.rc == 0, res.out + res.err
    assert node.readlink("current") == "releases/v2"
    assert node.readlink("previous") == "releases/v1"
    assert node.readlink(paths.ERROR_PAGES) == "current/error-pages"
    assert (node.root / paths.ERROR_PAGES / "502.html").read_text() == "502 of v2"
    assert node.calls("systemctl") == [["reset-failed", "makenotwork"], ["reload-or-restart", "makenotwork"]]
    assert node.running() == "v2"
    assert (res.get("live-before"), res.get("previous-before")) == ("releases/v1", "")
    assert res.get("switched").isdigit()
    assert res.get("health").startswith('ok {"name":"makenotwork","version":"v2"')
    assert res.get("restart") == "0 "
    assert res.rc == scripts.code("EX_OK")
    assert not (node.root / "releases" / "v2" / paths.FAILED).exists()  # a good release now
    assert sorted(final(res)) == ["v1", "v2"] and not final(res)["v2"].failed
    assert [c[-1] for c in node.calls("curl")] == ["http://127.0.0.1:3000/health"]
    assert res.rc == 0 and "reverted" not in res.keys()


def test_first_switch_with_nothing_live(node):
    node.release("v1")
    res = switch(node, "v1")
    assert res.rc == 0, res.out + res.err
    assert node.readlink("current") == "releases/v1"
    assert node.readlink("previous") is None
    assert node.restarts() == 1


def test_switch_prunes_old_releases_but_never_current_previous_or_foreign(node):
    for i, v in enumerate(["v0", "v0a", "v0b", "v1", "v2"]):
        node.release(v, created_at=i)
    node.foreign("hand-made")
    node.point(current="v1", previous="v0")  # rolled back to v1 once: v0 is the rollback target
    node.start("v1")
    res = switch(node, "v2", keep=2)
    assert res.rc == 0, res.out + res.err
    assert sorted(v for k, v in res.report if k == "pruned") == ["v0", "v0a", "v0b"]
    assert node.versions() == ["hand-made", "v1", "v2"]


def test_prune_list_given_is_applied_at_switch_time(node):
    """The node re-reads current/previous when it prunes: whatever the list says, neither goes, and
    neither does a directory without sando's manifest."""
    live_v1(node, "v3")
    node.foreign("hand-made")
    res = node.run(script(node, "v2", prune_ok=["v1", "v2", "v3", "hand-made"]))
    assert res.rc == 0, res.out + res.err
    assert [v for k, v in res.report if k == "pruned"] == ["v3"]
    assert node.versions() == ["hand-made", "v1", "v2"]


def test_already_live_and_running_does_nothing(node):
    node.release("v1")
    node.release("v2")
    node.point(current="v2", previous="v1")
    node.start("v2")
    res = switch(node, "v2")
    assert res.rc == 0, res.out + res.err
    assert node.calls("systemctl") == [["is-active", "makenotwork"]]
    assert "switched" not in res.keys() and res.get("health").startswith("ok ")
    assert (node.readlink("current"), node.readlink("previous")) == ("releases/v2", "releases/v1")


def test_already_live_but_stopped_is_restarted_once(node):
    node.release("v2")
    node.point(current="v2")
    node.start("v2")
    node.stop()
    res = switch(node, "v2")
    assert res.rc == 0, res.out + res.err
    assert node.calls("systemctl") == [["is-active", "makenotwork"], ["reset-failed", "makenotwork"],
                                       ["reload-or-restart", "makenotwork"]]
    assert node.running() == "v2" and "switched" not in res.keys()


def test_already_live_but_unhealthy_exits_23(node):
    node.release("v2")
    node.point(current="v2")
    node.start("v2")
    node.serve("v2", error=True)
    res = switch(node, "v2")
    assert res.rc == scripts.code("EX_LIVE_UNHEALTHY") == 23
    assert res.get("health").startswith("fail curl: (22)")
    assert node.readlink("current") == "releases/v2" and node.restarts() == 0


def test_already_live_through_an_absolute_link(node):
    node.release("v1")
    node.release("v2")
    node.link("current", str(node.root / "releases" / "v2"))
    node.point(previous="v1")
    node.start("v2")
    res = switch(node, "v2")
    assert res.rc == 0
    assert node.restarts() == 0
    assert os.path.realpath(node.root / "previous") == str(node.root / "releases" / "v1")


# --- failures: switched back ----------------------------------------------------------------------------


def test_unhealthy_release_is_switched_back(node):
    node.release("v0", created_at=0)
    live_v1(node)
    node.point(previous="v0")
    node.serve("v2", error=True)
    res = switch(node, "v2")
    assert res.rc == scripts.code("EX_SWITCHED_BACK") == 51
    assert (node.readlink("current"), node.readlink("previous")) == ("releases/v1", "releases/v0")
    assert node.running() == "v1" and node.restarts() == 2
    assert (node.root / "releases" / "v2" / paths.FAILED).read_text() == \
        "curl: (22) The requested URL returned error: 500\n"
    keys = res.keys()
    assert keys.index("switched") < keys.index("failed") < keys.index("reverted")
    assert res.get("failed") == "v2"
    health = [v for k, v in res.report if k == "health"]
    assert health[0].startswith("fail ") and health[-1].startswith('ok {"name":"makenotwork","version":"v1"')
    assert final(res)["v2"].failed is True


def test_switched_back_without_a_previous_removes_previous(node):
    live_v1(node)
    node.serve("v2", error=True)
    res = switch(node, "v2")
    assert res.rc == 51
    assert node.readlink("current") == "releases/v1" and node.readlink("previous") is None


def test_failing_restart_is_switched_back(node):
    live_v1(node)
    node.fail_restart("v2")
    res = switch(node, "v2")
    assert res.rc == 51
    assert node.readlink("current") == "releases/v1"
    assert node.running() == "v1"
    assert (node.root / "releases" / "v2" / paths.FAILED).read_text() == (
        "restart failed: Job for makenotwork.service failed because the control process exited with error code.\n")
    restarts = [v for k, v in res.report if k == "restart"]
    assert restarts[0].startswith("1 Job for makenotwork.service failed") and restarts[1] == "0 "
    assert not any(k == "health" and v.startswith("fail") for k, v in res.report)  # no check of a dead service
    # reset-failed before each restart: a crash-looping release must not block the one switched back to
    assert [c[0] for c in node.calls("systemctl")] == ["reset-failed", "reload-or-restart"] * 2


def test_unhealthy_with_nothing_to_switch_back_to_exits_50(node):
    node.release("v1")
    node.serve("v1", error=True)
    res = switch(node, "v1")
    assert res.rc == scripts.code("EX_NO_PREVIOUS") == 50
    assert node.readlink("current") == "releases/v1"  # nothing else to point at
    assert (node.root / "releases" / "v1" / paths.FAILED).exists()
    assert "reverted" not in res.keys() and final(res)["v1"].failed


def test_changed_release_files_exit_22_and_nothing_switches(node):
    live_v1(node)
    (node.root / "releases" / "v2" / "makenotwork").write_bytes(b"changed by hand")
    res = switch(node, "v2", warn=WARNING, token=TOKEN)
    assert res.rc == scripts.code("EX_CHANGED") == 22
    assert res.get("changed").startswith("makenotwork: FAILED")
    assert node.readlink("current") == "releases/v1"
    assert node.calls("systemctl") == [] and node.calls("curl") == []


def test_missing_release_exits_21(node):
    live_v1(node)
    res = switch(node, "v9")
    assert res.rc == scripts.code("EX_MISSING") == 21
    assert res.report == [("live-before", "releases/v1"), ("previous-before", ""), ("error", "missing")]
    assert node.readlink("current") == "releases/v1" and node.calls() == []


def test_missing_release_root_exits_20(node, tmp_path):
    assert node.run(script(node, "v1", root=str(tmp_path / "nowhere"))).rc == scripts.code("EX_NO_ROOT") == 20


# --- the health check ----------------------------------------------------------------------------------


def health(node: FakeNode, body: str, expect: str, commit: str = "0" * 40):
    """health EXPECT against an app answering `body` (one try: timeout 0)."""
    node.start("vX")
    node.serve("vX", body)
    return run_health(node, 0, commit, expect)


def run_health(node: FakeNode, timeout: float, commit: str, expect: str):
    """sh/health.sh's `health EXPECT` on its own."""
    text = scripts.render_inline(scripts.params(**commands.health_params("http://127.0.0.1:3000/", timeout, 0.1,
                                                                         commit), EXPECT=expect),
                                 scripts.source("health.sh") + '\nhealth "$EXPECT"')
    return node.run(text)


@pytest.mark.parametrize("body, expect", [
    ('{"name":"makenotwork","version":"v1","commit":"abc"}', "v1"),
    ('{"version" : "v1"}', "v1"),
    ('{"version":\t"v1" }', "v1"),
    ('{\n  "name": "makenotwork",\n  "version": "v1.2.3-rc.1+b5"\n}\n', "v1.2.3-rc.1+b5"),
    ('not json at all', ""),  # no pin: any 2xx
])
def test_health_accepts(node, body, expect):
    res = health(node, body, expect)
    assert res.rc == 0, res.out
    assert res.get("health").startswith("ok ")


@pytest.mark.parametrize("body, expect", [
    ('{"version":"v10","commit":"abc"}', "v1"),  # v1 must not accept v10
    ('{"version":"v1"}', "v10"),
    ('{"version":"xv1"}', "v1"),
    ('{"name":"makenotwork"}', "v1"),
    ('{"version":"V1"}', "v1"),
])
def test_health_refuses_another_version(node, body, expect):
    res = health(node, body, expect)
    assert res.rc == 1
    v = body.split('"version":"')[1].split('"')[0] if '"version":"' in body else ""
    assert res.get("health") == f"fail serves version '{v}', not '{expect}'"


def test_health_accepts_the_pinned_commit_whatever_the_version(node):
    commit = "a" * 40
    assert health(node, f'{{"version":"main","commit":"{commit}"}}', "v1", commit=commit).rc == 0
    assert health(node, f'{{"version":"main","commit":"{commit[:12]}"}}', "v1", commit=commit).rc == 1


def test_health_reads_the_top_level_version(node):
    res = health(node, '{"version":"v1","commit":"abc","db":{"version":"3.40.1"}}', "v1")
    assert res.rc == 0


def test_health_gives_up_after_the_timeout_with_the_last_error(node):
    started = time.monotonic()
    res = run_health(node, 2, "c", "")
    assert time.monotonic() - started >= 1  # `date +%s` ticks: at least timeout - 1 s of retries
    assert res.rc == 1
    assert res.get("health") == "fail curl: (7) Failed to connect to 127.0.0.1 port 3000: Connection refused"
    assert len(node.calls("curl")) >= 2  # it retried, every interval
    assert all(c == ["-fsS", "--max-time", "3", "http://127.0.0.1:3000/"] for c in node.calls("curl"))
    sleeps = [c[0] for c in node.calls("sleep")]
    assert sleeps[0] == "0.05" and set(sleeps[1:]) == {"0.1"}  # fast first, then every interval


def test_expected_version_of_the_switch(node):
    live_v1(node)
    node.serve("v2", '{"version":"v20","commit":"other"}')
    res = switch(node, "v2", expect=True)
    assert res.rc == 51
    assert (node.root / "releases" / "v2" / paths.FAILED).read_text() == "serves version 'v20', not 'v2'\n"
    node.serve("v2", '{"version":"v2"}')
    assert switch(node, "v2", expect=True).rc == 0


# --- the restart warning ----------------------------------------------------------------------------


def test_warning_token_only_on_stdin_and_the_notice_is_waited_out(node):
    live_v1(node)
    res = switch(node, "v2", warn=WARNING, token=TOKEN)
    assert res.rc == 0, res.out + res.err
    assert res.get("warning").startswith("sent ") and res.get("warning").split()[1].isdigit()
    assert node.state_file("warn-stdin") == f"Authorization: Bearer {TOKEN}\n"
    (post,) = [c for c in node.calls("curl") if "POST" in c]
    assert post == ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", "POST", "-H", "@-",
                    "-H", "Content-Type: application/json", "--data", '{"seconds": 1}', WARNING["url"]]
    assert TOKEN not in node.state_file("warn-env")
    cmdlines = node.state_file("warn-cmdlines")
    assert len(cmdlines.splitlines()) >= 2 and TOKEN not in cmdlines  # curl, its shell(s), ...
    assert TOKEN not in (node.state / "calls").read_text()
    # the order: the warning, the notice, then the restart
    order = [(c[0], c[1]) for c in node.calls() if c[0] in ("sleep", "systemctl") or "POST" in c]
    # is the service running (users to warn)? the warning, the notice, then the restart
    assert order[:4] == [("systemctl", "is-active"), ("curl", "-sS"), ("sleep", "1"), ("systemctl", "reset-failed")]
    assert order[4] == ("systemctl", "reload-or-restart")


def test_failed_warning_in_warn_mode_goes_on(node):
    live_v1(node)
    node.warn_answer("503")
    res = switch(node, "v2", warn=WARNING, token=TOKEN)
    assert res.rc == 0, res.out + res.err
    assert res.get("warning") == "failed HTTP 503"
    assert node.readlink("current") == "releases/v2" and node.running() == "v2"
    assert ["1"] not in node.calls("sleep")  # no notice to wait out


def test_unreachable_warning_in_warn_mode_goes_on(node):
    live_v1(node)
    node.warn_answer(refused=True)
    res = switch(node, "v2", warn=WARNING, token=TOKEN)
    assert res.rc == 0
    assert res.get("warning") == "failed HTTP 000 curl: (7) Failed to connect to 127.0.0.1 port 3000: Connection refused"


def test_failed_warning_in_abort_mode_exits_40_before_anything_changes(node):
    live_v1(node)
    node.warn_answer("500")
    res = switch(node, "v2", warn={**WARNING, "onFailure": "abort"}, token=TOKEN)
    assert res.rc == scripts.code("EX_WARNING_FAILED") == 40
    assert res.get("warning") == "failed HTTP 500"
    assert node.readlink("current") == "releases/v1" and node.readlink("previous") is None
    assert [c for c in node.calls("systemctl") if c[0] != "is-active"] == []
    assert "switched" not in res.keys()


def test_no_warning_when_already_live(node):
    node.release("v2")
    node.point(current="v2")
    node.start("v2")
    res = switch(node, "v2", warn=WARNING, token=TOKEN)
    assert res.rc == 0 and "warning" not in res.keys() and node.calls("curl")[0][-1].endswith("/health")
    assert not [c for c in node.calls("curl") if "POST" in c]


# --- hostile names --------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", ["$(touch PWNED)", "x; touch PWNED", "x' ; touch PWNED ; '", "`touch PWNED`",
                                  "-rf", "*"])
def test_hostile_version_and_service_cannot_inject(node, evil):
    node.release("v1")
    node.release(evil)
    node.point(current="v1")
    node.start("v1")
    node.serve(evil, f'{{"version":"{evil}"}}')
    res = node.run(script(node, evil, service=evil, expect=evil, url=f"http://127.0.0.1:3000/{evil}", commit=evil,
                          prune_ok=[evil, "v1"]))
    assert res.rc == 0, res.out + res.err
    assert node.readlink("current") == f"releases/{evil}"
    assert ["reload-or-restart", evil] in node.calls("systemctl")
    assert not list(node.base.rglob("PWNED"))


# --- PointerProvider end to end (ssh.run runs locally) -------------------------------------------------


def test_provider_outputs_after_a_switch(provider_node):
    node = provider_node
    live_v1(node)
    outs = PointerProvider().create(props(node, "v2", warn=WARNING, token=TOKEN)).outs
    assert (outs["liveVersion"], outs["previousVersion"], outs["liveCommit"]) == ("v2", "v1", "c-v2")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outs["switchedAt"]) and outs["health"] == "ok"
    assert [(r["version"], r["failed"]) for r in outs["releases"]] == [("v1", False), ("v2", False)]
    assert all(r["createdAt"] is None or r["createdAt"].endswith("Z") for r in outs["releases"])  # ISO UTC
    assert outs["restartWarning"].startswith("sent at ") and outs["restartWarning"].endswith(
        ", 1s before the restart")
    assert outs["migrations"] == {"database": None, "pending": [], "destructive": [], "dryRun": "not run",
                                  "backup": None}
    # the token went on stdin, not in the script
    (script, stdin), = [(s, i) for s, i in node.scripts if s.endswith(" sando-switch")]
    assert TOKEN not in script and stdin == f"Authorization: Bearer {TOKEN}\n".encode()


@pytest.mark.parametrize("setup, rc_message", [
    ("unhealthy", r"^node1: v2 failed its health check \(curl: \(22\) The requested URL returned error: 500\); "
                  r"v1 is live again$"),
    ("restart", r"^node1: v2 failed its health check \(restart failed: Job for makenotwork.service failed .*\); "
                r"v1 is live again$"),
    ("sums", r"^node1: files of releases/v2 no longer match its SHA256SUMS \(makenotwork: FAILED.*\); it was "
             r"changed on the node, so sando will not point at it and .*\. Remove .*/releases/v2 on "
             r"the node and run `pulumi up --refresh`$"),
    ("abort", r"^node1: the restart warning failed \(failed HTTP 500\) and sando:restartWarningOnFailure is abort; "
              r"nothing was restarted and v1 stays live$"),
])
def test_provider_failure_messages(provider_node, setup, rc_message):
    node = provider_node
    live_v1(node)
    warn = None
    if setup == "unhealthy":
        node.serve("v2", error=True)
    elif setup == "restart":
        node.fail_restart("v2")
    elif setup == "sums":
        (node.root / "releases" / "v2" / "makenotwork").write_bytes(b"changed")
    else:
        node.warn_answer("500")
        warn = {**WARNING, "onFailure": "abort"}
    outs = PointerProvider().create(props(node, "v2", warn=warn, token=TOKEN)).outs
    assert outs["outcome"]["ok"] is False and outs["outcome"]["node"] == "node1"
    assert re.match(rc_message, outs["outcome"]["message"]), outs["outcome"]["message"]
    assert outs["liveVersion"] == "v1"  # what the node serves now, in the outputs
    with pytest.raises(OperatorError) as exc:  # the Verdict fails the run with it, under a line of its own
        VerdictProvider().create({"outcomes": [outs["outcome"]]})
    assert str(exc.value).splitlines()[0] == "the deploy failed on node1:"
    assert re.match(rc_message, str(exc.value).split("\n", 1)[1]), str(exc.value)


@pytest.mark.parametrize("code, said", [
    ("502", "through Caddy http://caddy.test/: HTTP 502"),
    ("000", "through Caddy http://caddy.test/: HTTP 000 (curl: (7) Failed to connect to caddy.test port 80: "
            "Connection refused)"),
])
def test_a_switch_healthy_directly_but_not_through_caddy_goes_back(provider_node, code, said):
    """sando:healthCheck.caddyUrl: the app's URL passing is not enough; the site must answer 2xx
    through Caddy too, or the switch goes back like any unhealthy switch, saying which check failed."""
    node = provider_node
    live_v1(node)
    node.caddy_answers("v2", code)
    outs = PointerProvider().create(props(node, "v2", expect=True, caddy="http://caddy.test/")).outs
    assert outs["outcome"]["message"] == f"node1: v2 failed its health check ({said}); v1 is live again"
    assert outs["liveVersion"] == "v1" and node.running() == "v1"
    # v1 answers through Caddy: it goes live again as healthy; without caddyUrl v2 would have been taken
    outs = PointerProvider().create(props(node, "v2", expect=True)).outs
    assert outs["outcome"] == {"ok": True, "node": "node1"} and node.running() == "v2"


def test_provider_failure_with_nothing_to_switch_back_and_the_rollout_held_back(provider_node):
    node = provider_node
    node.release("v1")
    node.serve("v1", error=True)
    failed = PointerProvider().create(props(node, "v1")).outs["outcome"]
    assert failed["message"] == ("node1: v1 is not healthy (curl: (22) The requested URL returned error: 500) and "
                                 "there is no earlier release to switch back to")
    held = PointerProvider().create(props(node, "v1") | {"after": [failed]}).outs
    assert held["outcome"] == {"ok": False, "node": "node1", "heldBack": True}
    assert held["health"].startswith("held back")
    with pytest.raises(OperatorError) as exc:
        VerdictProvider().create({"outcomes": [failed, {"ok": False, "node": "n2", "heldBack": True},
                                               {"ok": False, "node": "n3", "heldBack": True}]})
    assert str(exc.value) == ("the deploy failed on node1:\n" + failed["message"]
                              + "\nRollout stopped: n2, n3 not switched (they keep their version).")
    VerdictProvider().create({"outcomes": [{"ok": True, "node": "node1"}]})  # all good: no error


def test_provider_missing_release_message(provider_node):
    node = provider_node
    live_v1(node)
    message = PointerProvider().create(props(node, "v9")).outs["outcome"]["message"]
    assert re.match(r"^node1: release v9 is not on the node; nothing was switched, .*\. "
                    r"Run `pulumi up --refresh` to send it again$", message), message


@pytest.mark.parametrize("version", ["v9", "v2"])
def test_provider_says_which_release_stays_live_when_the_release_is_missing_or_changed(provider_node, version):
    node = provider_node
    live_v1(node)
    (node.root / "releases" / "v2" / "makenotwork").write_bytes(b"changed")
    assert "v1 stays live" in PointerProvider().create(props(node, version)).outs["outcome"]["message"]


def test_provider_diff_puts_back_a_hand_moved_current_and_starts_a_stopped_service(provider_node):
    node = provider_node
    live_v1(node)
    p = props(node, "v1")
    assert PointerProvider().diff("id", p, p).changes is False
    base._states.clear()
    node.point(current="v2")
    assert PointerProvider().diff("id", p, p).changes is True
    base._states.clear()
    node.point(current="v1")
    node.stop()
    assert PointerProvider().diff("id", p, p).changes is True


def test_provider_state_from_before_the_switch_setting_is_no_change_unless_blue_green(provider_node):
    """A sando before issue 23 recorded no `switch` input: the restart strategy is what it did, so
    no update (the first up after upgrading sando changes nothing); blueGreen is a change."""
    node = provider_node
    live_v1(node)
    olds = props(node, "v1")
    assert "switch" not in olds
    news = {**olds, "switch": {"strategy": "restart", "ports": [3001, 3002], "bindEnv": "MNW_BIND"}}
    assert PointerProvider().diff("id", olds, news).changes is False
    base._states.clear()
    blue = {**news, "switch": {**news["switch"], "strategy": "blueGreen"}}
    with pytest.raises(OperatorError, match=r"^node1: sando:switch.strategy is blueGreen, whose switch moves an nft "
                                            r"rule, but nft is not installed on the node: apt-get install nftables"):
        PointerProvider().check(olds, blue)  # this fake node has no nft
    base._states.clear()
    (node.bin / "nft").write_text("#!/bin/sh\nexit 0\n")
    (node.bin / "nft").chmod(0o755)
    assert PointerProvider().diff("id", olds, blue).changes is True
    base._states.clear()


def test_provider_a_rotated_key_alone_records_it_and_runs_nothing_on_the_node(provider_node, monkeypatch):
    """Issue 18.8: only how sando connects changed: an update that only records the new credentials
    (said once per node), no switch script; with the node off its pin it is a real switch again."""
    said = []
    monkeypatch.setattr(base, "_said_auth", set())
    monkeypatch.setattr("sando_components.diagnostics.log", lambda level, msg: said.append(msg))
    node = provider_node
    live_v1(node)
    olds = {**props(node, "v1"), "liveVersion": "v1", "health": "ok"}
    news = {**props(node, "v1"), "privateKey": "rotated"}
    assert PointerProvider().diff("id", olds, news).changes is True
    assert PointerProvider().diff("id", olds, news).changes is True
    assert said == ["node1: only how sando connects changed (its SSH key); nothing on the node changes: its resources "
                    "record the new credentials (for later refreshes and deletes)"]
    node.scripts.clear()
    outs = PointerProvider().update("id", olds, news).outs
    assert outs["privateKey"] == "rotated" and outs["liveVersion"] == "v1" and outs["health"] == "ok"
    assert not [sc for sc, _ in node.scripts if sc.endswith(" sando-switch")]
    node.stop()
    base._states.clear()
    PointerProvider().update("id", olds, news)
    assert [sc for sc, _ in node.scripts if sc.endswith(" sando-switch")] and node.running() == "v1"


# --- a lost connection (Ctrl-C, a dropped SSH session) never leaves a node half-switched ---------------


def wait_for(cond, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("step", [("sleep", "1"), ("systemctl", "reload-or-restart"), ("curl", "-fsS")],
                         ids=["during-the-warning-notice", "during-the-restart", "during-the-health-check"])
@pytest.mark.parametrize("cut", ["closed-pipes", "closed-pipes-and-sighup"])
def test_a_connection_lost_at_any_user_visible_step_still_runs_the_switch_to_its_end(node, step, cut):
    """Once users were warned, the switch goes on whatever happens to sando's connection: the script
    is stopped at a step (a stand-in waits), its stdout/stderr pipes are closed (every later report
    line hits EPIPE/SIGPIPE) and, as when the session is torn down, the whole process group gets
    SIGHUP; then it is let go. It still switches, restarts, checks and prunes (the last thing it
    does: v0 is gone). Without `trap '' HUP PIPE` in switch.sh the shell dies at the cut."""
    node.release("v0", created_at=0)
    live_v1(node)
    p = props(node, "v2", keep=2, warn=WARNING, token=TOKEN, timeout=5)
    state = parse_state(node.run(commands.probe(str(node.root), "makenotwork")).out)
    script, _ = PointerProvider()._script(p, state)
    reached, go = node.hang(*step)
    node.clear_calls()
    proc = subprocess.Popen(shlex.split(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=node.env(), cwd=node.base, start_new_session=True)
    proc.stdin.write(warning.stdin(p["warning"], p["token"]))
    proc.stdin.close()
    try:
        wait_for(reached.exists)
        proc.stdout.close()  # the connection is gone: nobody reads what the script says any more
        proc.stderr.close()
        if cut == "closed-pipes-and-sighup":
            os.killpg(proc.pid, signal.SIGHUP)
        go.touch()
        proc.wait(timeout=60)
        wait_for(lambda: group_gone(proc.pid))
    finally:
        go.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert node.readlink("current") == "releases/v2" and node.readlink("previous") == "releases/v1"
    assert node.running() == "v2" and node.restarts() == 1
    assert not (node.root / "releases" / "v2" / paths.FAILED).exists()
    assert node.versions() == ["v1", "v2"]  # pruned: the script's last step ran
    assert proc.returncode == scripts.code("EX_OK")


# --- a unit that dies while sando waits for it --------------------------------------------------------


def test_a_release_that_exits_at_start_ends_the_wait_at_once(node):
    """A long health timeout is not waited out: systemd's auto-restart ends the wait at once; the
    journal since the restart is reported; the previous release is live again."""
    live_v1(node)
    node.crash_at_start("v2")
    started = time.monotonic()
    res = switch(node, "v2", timeout=120)
    assert time.monotonic() - started < 20  # not the 120 s of the health timeout
    assert res.rc == scripts.code("EX_SWITCHED_BACK")
    tried = res.parsed.before("reverted")
    assert tried.all("crashed") == ["activating/auto-restart 1"]
    assert tried.all("journal") == ["Started makenotwork.service.", "crash-at-start build: exiting",
                                    "makenotwork.service: Main process exited, code=exited, status=1/FAILURE"]
    assert node.readlink("current") == "releases/v1" and node.running() == "v1"
    assert (node.root / "releases" / "v2" / paths.FAILED).read_text() == (
        "exited at start (makenotwork.service activating/auto-restart, restarted 1 times by systemd)\n")
    (since,) = {c[c.index("--since") + 1] for c in node.calls("journalctl", watching=True) if "--since" in c}
    assert since.startswith("@") and abs(int(since[1:]) - time.time()) < 60


def test_the_journal_quoted_holds_the_service_line_journald_read_late(node):
    """journald (systemd < 256) may read a dying service's stdout after PID 1's "Main process exited",
    and `journalctl --sync` does not wait for it: the quote waits (bounded) for the service's own line.
    (CI stop 29: the e2e crash test quoted only systemd's lines.)"""
    live_v1(node)
    node.crash_at_start("v2", late=True)
    res = switch(node, "v2", timeout=120)
    assert res.rc == scripts.code("EX_SWITCHED_BACK")
    assert res.parsed.before("reverted").all("journal") == [
        "Started makenotwork.service.", "makenotwork.service: Main process exited, code=exited, status=1/FAILURE",
        "crash-at-start build: exiting"]


def test_provider_message_of_a_release_that_exits_at_start(provider_node):
    node = provider_node
    live_v1(node)
    node.crash_at_start("v2")
    outs = PointerProvider().create(props(node, "v2", timeout=120)).outs
    assert outs["outcome"]["message"] == (
        "node1: v2 exited at start (makenotwork.service activating/auto-restart); v1 is live again. "
        "Last lines of its journal:\n"
        "  Started makenotwork.service.\n"
        "  crash-at-start build: exiting\n"
        "  makenotwork.service: Main process exited, code=exited, status=1/FAILURE")
    assert outs["liveVersion"] == "v1" and outs["health"] == "ok"


# --- no running service, no restart warning ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["warn", "abort"])
def test_no_warning_when_the_service_is_not_running(node, mode):
    node.release("v1")  # a first deploy: nothing runs yet
    res = switch(node, "v1", warn={**WARNING, "onFailure": mode}, token=TOKEN)
    assert res.rc == scripts.code("EX_OK"), res.out + res.err
    assert res.get("warning") == "not-needed"
    assert not [c for c in node.calls("curl") if "POST" in c] and ["1"] not in node.calls("sleep")
    assert warning.status(WARNING, res.parsed, True) == "not needed: service not running"
    assert node.running() == "v1"


# --- one switch at a time on a node -------------------------------------------------------------------


def _held_lock(node: FakeNode, then, after: float):
    """Hold the node's switch lock (a run stopped by a second Ctrl-C: its switch goes on on the node),
    call `then` after `after` seconds, then let go; the thread that does it."""
    import fcntl
    import threading

    lock = node.root / paths.SWITCH_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "a")  # noqa: SIM115 - closed by the thread
    fcntl.flock(fh, fcntl.LOCK_EX)

    def hold():
        time.sleep(after)
        then()
        fh.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_a_switch_waits_for_one_still_at_work_on_its_node_and_reads_what_it_left(node):
    """The re-run's script was made from a read that saw v1 live; the interrupted run's switch then
    finished v2 on the node: the re-run waits for it, finds v2 live, and neither warns nor restarts
    again (e2e: test_faults' Ctrl-C test with two interrupts, whose re-run used to warn users while
    the first run's restart was still to come)."""
    live_v1(node)
    p = props(node, "v2")
    script, _ = PointerProvider()._script(p, parse_state(node.run(commands.probe(str(node.root), "makenotwork")).out))
    thread = _held_lock(node, lambda: (node.point(current="v2", previous="v1"), node.start("v2")), 1.0)
    node.clear_calls()
    started = time.monotonic()
    res = node.run(script)
    thread.join()
    assert time.monotonic() - started >= 0.9  # it waited
    assert res.rc == scripts.code("EX_OK") and res.parsed.one("live-before") == "releases/v2"
    assert node.restarts() == 0


def test_a_switch_that_waits_too_long_for_another_changes_nothing(provider_node, monkeypatch):
    node = provider_node
    live_v1(node)
    monkeypatch.setattr(commands, "SWITCH_LOCK_WAIT", 1)
    thread = _held_lock(node, lambda: None, 3.0)
    outs = PointerProvider().create(props(node, "v2", timeout=5)).outs
    thread.join()
    assert outs["outcome"]["message"] == (
        f"node1: another switch still runs on the node ({node.root}/{paths.SWITCH_LOCK} held for 1 s); nothing "
        "was switched, v1 stays live. See `sando status`, then run pulumi up again")
    assert node.readlink("current") == "releases/v1" and node.restarts() == 0


def _restart_script(node: FakeNode) -> str:
    """`sando restart`'s script for this node (fleet.restart_command, no warning)."""
    from sando_components import fleet
    from sando_components.config import load

    cfg = load({"sando:nodes": '[{"name": "node1", "host": "10.0.0.1", "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}]',
                "sando:version": "v1", "sando:source": '{"repo": "../app"}', "sando:sshAgent": "true",
                "sando:bootstrap": '{"ref": "main"}', "sando:releaseRoot": str(node.root)}, frozenset())
    return fleet.restart_command(cfg, cfg.nodes[0], "c1", {"by": "op@host", "via": "sando restart"}, False)


def test_a_restart_waits_for_a_switch_at_work_on_its_node_then_restarts_what_it_left_live(node):
    """`sando restart` during a switch (another operator's, or one that goes on after a second Ctrl-C)
    waits for it, then restarts and checks what that switch left live: never a restart in its middle."""
    live_v1(node)
    thread = _held_lock(node, lambda: (node.point(current="v2", previous="v1"), node.start("v2")), 1.0)
    node.clear_calls()
    started = time.monotonic()
    res = node.run(_restart_script(node), stdin=b"\n")
    thread.join()
    assert res.rc == 0, res.out + res.err
    assert time.monotonic() - started >= 0.9  # it waited for the lock
    assert ["restart", "makenotwork.service"] in node.calls("systemctl") and node.running() == "v2"
    assert res.parsed.one("health").startswith("ok")
    # the history names what was restarted: v2 at its own commit (from its manifest), not the commit
    # of v1 the operator's read had seen before the lock
    assert '"version":"v2","commit":"c-v2"' in res.parsed.one("history"), res.parsed.one("history")
    assert '"result":"restarted"' in res.parsed.one("history")


def test_a_restart_that_waits_too_long_for_a_switch_restarts_nothing(node, monkeypatch):
    from sando_components import cli, fleet

    live_v1(node)
    monkeypatch.setattr(fleet, "RESTART_LOCK_WAIT", 1)
    thread = _held_lock(node, lambda: None, 3.0)
    node.clear_calls()
    res = node.run(_restart_script(node), stdin=b"\n")
    thread.join()
    assert res.rc == scripts.code("EX_BUSY") == 25 and res.parsed.one("busy") == f"{node.root}/{paths.SWITCH_LOCK}"
    assert not [c for c in node.calls("systemctl") if c[0] in ("restart", "reload-or-restart")]
    assert cli.RESTART_OUTCOMES[res.rc].startswith("a switch or restart still runs there")
