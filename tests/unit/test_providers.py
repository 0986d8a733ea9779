"""The providers' pure parts: pointer.to_prune (the retention policy), base.parse_state, the
restart warning's step/stdin/status, ReleaseProvider's no-space message, and the rollout pause.
(The scripts they compose run for real in test_switch.py, test_receive.py and test_gate.py.)"""

from __future__ import annotations

import json
import random
import shlex
import time
from types import SimpleNamespace

import pytest

from sando_components import commands, scripts, times, transfer
from sando_components.scripts import Report
from sando_components.errors import OperatorError
from sando_components.providers import base, pointer, warning
from sando_components.providers.base import NodeState, parse_state
from sando_components.providers.pointer import PointerProvider, to_prune
from sando_components.providers.release import ReleaseProvider
from sando_components.transfer import NodeRelease

from fakenode import connection


def r(version: str, created: float, failed: bool = False) -> NodeRelease:
    return NodeRelease(version, f"c-{version}", created, {}, failed)


def held(*rs: NodeRelease) -> dict[str, NodeRelease]:
    return {x.version: x for x in rs}


# --- to_prune ---------------------------------------------------------------------------------------


def test_keeps_the_newest_by_created_at_not_by_name():
    rs = held(r("v10", 10), r("v9", 9), r("v2", 2), r("v1", 1), r("v11", 0.5))
    assert to_prune(rs, "v10", "v9", 3) == ["v1", "v11"]


def test_always_keeps_live_and_previous_even_when_oldest():
    rs = held(r("v1", 1), r("v2", 2), r("v3", 3), r("v4", 4), r("v5", 5))
    assert to_prune(rs, "v1", "v2", 2) == ["v3"]  # v5, v4 newest; v1 live; v2 the rollback target
    assert to_prune(rs, "v5", None, 1) == ["v1", "v2", "v3", "v4"]


def test_failed_releases_go_first():
    rs = held(r("v1", 1), r("v2", 2), r("v3", 3, failed=True), r("v4", 4, failed=True))
    assert to_prune(rs, "v2", "v1", 2) == ["v3", "v4"]
    assert to_prune(rs, "v2", "v1", 3) == ["v3"]  # the newest failed one fills the third place
    assert to_prune(held(r("v4", 4, failed=True)), "v4", None, 1) == []  # live, failed or not


def test_live_or_previous_not_held_and_empty():
    assert to_prune({}, None, None, 5) == []
    assert to_prune(held(r("v1", 1), r("v2", 2)), "gone", None, 1) == ["v1"]


def test_to_prune_properties_over_random_histories():
    rnd = random.Random(1234)
    for _ in range(2000):
        n = rnd.randint(0, 12)
        rs = held(*(r(f"v{i}", rnd.choice([rnd.random() * 100, 7.0]), rnd.random() < 0.25) for i in range(n)))
        names = list(rs) + [None, "not-held"]
        live, previous, keep = rnd.choice(names), rnd.choice(names), rnd.randint(1, 6)
        out = to_prune(rs, live, previous, keep)
        left = set(rs) - set(out)
        assert out == sorted(out) and set(out) <= set(rs)
        assert live not in out and previous not in out
        assert len(left) <= keep + 2
        assert len(left) >= min(keep, len(rs))
        ranked = sorted(rs.values(), key=lambda x: (x.failed, -x.created_at, x.version))
        assert {x.version for x in ranked[:keep]} <= left  # the newest good ones stay
        for gone in out:  # nothing pruned ranks above something kept for its rank
            for kept in left - {live, previous}:
                assert (rs[kept].failed, -rs[kept].created_at, kept) < (rs[gone].failed, -rs[gone].created_at, gone)


def test_the_switch_prunes_as_if_the_new_release_is_good_and_reverts_as_if_failed():
    """PointerProvider._script: prune_ok with the pin live and the old live as previous; prune_failed
    with the pin failed and current/previous unchanged."""
    state = NodeState(live="v3", previous="v2", free_kib=0, zstd=True, active=True,
                      releases=held(r("v1", 1), r("v2", 2), r("v3", 3), r("v4", 4)))
    props = {"version": "v4", "releaseRoot": "/opt/m", "service": "m", "commit": "c-v4", "keepReleases": 1,
             "healthCheck": {"url": "http://h/", "timeoutSeconds": 1, "intervalSeconds": 1, "expectVersion": False}}
    script, timeout = PointerProvider()._script(props, state)
    text = shlex.split(script)[2]  # sh -c TEXT sando-switch
    assert scripts.params(PRUNE_OK="v1\nv2") in text  # ok: v4 live, v3 previous
    assert scripts.params(PRUNE_FAILED="v1\nv4") in text  # failed: v3 live, v2 previous, v4 ranked last
    assert timeout == 900 + 2 * (120 + 1)


# --- parse_state ------------------------------------------------------------------------------------


PROBE_OUT = r"""{"@":"active","v":"reloading"}
{"@":"zstd","v":"no"}
{"@":"root","v":"ok"}
{"@":"current","v":"releases/v2"}
{"@":"previous","v":"/opt/makenotwork/releases/v1/"}
{"@":"free","v":"123456"}
{"@":"release","v":"v1\t{\"commit\":\"c1\",\"createdAt\":5,\"files\":{\"makenotwork\":\"aa\"}}"}
{"@":"release","v":"v2\t{\"commit\":\"c2\",\"createdAt\":6,\"files\":{}}"}
{"@":"failed","v":"v2"}
{"@":"foreign","v":"zz"}
{"@":"foreign","v":"aa"}
"""


def line(key: str, value: str) -> str:
    return json.dumps({"@": key, "v": value}) + "\n"


BASE = line("root", "ok") + line("free", "100")


def test_parse_state():
    s = parse_state(PROBE_OUT)
    assert (s.live, s.previous, s.free_kib, s.zstd, s.active) == ("v2", "v1", 123456, False, True)
    assert s.releases == {"v1": NodeRelease("v1", "c1", 5.0, {"makenotwork": "aa"}, False),
                          "v2": NodeRelease("v2", "c2", 6.0, {}, True)}
    assert s.foreign == ("aa", "zz")


@pytest.mark.parametrize("active, up", [("active", True), ("activating", True), ("reloading", True),
                                        ("inactive", False), ("failed", False), ("", False), ("unknown", False)])
def test_parse_state_service(active, up):
    assert parse_state(line("active", active) + BASE).active is up


def test_parse_state_of_nothing():
    s = parse_state(line("root", "missing") + line("free", "7"))
    assert (s.live, s.previous, s.free_kib, s.zstd, s.active, s.releases, s.foreign, s.root_missing) == \
        (None, None, 7, False, False, {}, (), True)


@pytest.mark.parametrize("out, error", [
    (line("root", "ok") + line("free", "1") + line("free", "2"), "'free' 2 times"),
    (line("root", "ok") + line("free", ""), "cannot read the free space"),
    (line("free", "1"), "did not say whether"),
    (BASE + line("release", "v1 no tab"), "'release' without a name"),
    (BASE + line("release", "v1\t{}") + line("release", "v1\t{}"), "'release' twice for 'v1'"),
    (BASE + '{"@":"current","v":"releases/v1"\n', "cannot be read"),
])
def test_parse_state_refuses_a_report_it_cannot_trust(out, error):
    with pytest.raises(OperatorError, match=error):
        parse_state(out, 0, "node1")


def test_with_release_does_not_change_the_original():
    s = parse_state(PROBE_OUT)
    s2 = s.with_release(r("v3", 7))
    assert sorted(s2.releases) == ["v1", "v2", "v3"] and sorted(s.releases) == ["v1", "v2"]


def test_changed_public_refresh_auth():
    assert base.changed({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}, ["a", "b", "c"]) == ["b", "c"]
    assert base.public({"x": 1, "__provider": "blob"}) == {"x": 1}
    olds = {"version": "v1", "connection": {"host": "a"}, "privateKey": "old", "__provider": "p"}
    news = {"version": "v2", "connection": {"host": "b"}, "privateKey": "new"}
    assert base.refresh_auth(olds, news) == {"version": "v1", "connection": {"host": "b"}, "privateKey": "new"}
    assert base.node_of({"node": "n1", "connection": {"host": "h"}}) == "n1"
    assert base.node_of({"connection": {"host": "h"}}) == "h"


# --- the restart warning ---------------------------------------------------------------------------------


W = {"url": "http://127.0.0.1:3000/api/internal/restart-warning", "seconds": 30, "onFailure": "warn"}


def test_warning_params_and_stdin():
    assert warning.params(W, "tok") == {"WARN_URL": W["url"], "WARN_SECONDS": 30, "WARN_ABORT": 0}
    assert warning.params({**W, "onFailure": "abort"}, "tok") == {"WARN_URL": W["url"], "WARN_SECONDS": 30,
                                                                  "WARN_ABORT": 1}
    assert warning.stdin(W, "tok") == b"Authorization: Bearer tok\n"
    for w, token in ((None, "tok"), ({**W, "seconds": 0}, "tok"), (W, None), (W, "")):
        assert warning.params(w, token) is None and warning.stdin(w, token) is None


def rep(**kv: str) -> Report:
    return Report(tuple(kv.items()))


def test_warning_status():
    assert warning.status(None, rep(), True) == "disabled"
    assert warning.status({**W, "seconds": 0}, rep(warning="sent 1"), True) == "disabled"
    assert warning.status(W, rep(), False) == "not sent: nothing restarted"
    assert warning.status(W, rep(), True) == "not sent"
    assert warning.status(W, rep(warning="sent 1700000000"), True) == \
        "sent at 2023-11-14T22:13:20Z, 30s before the restart"
    assert warning.status(W, rep(warning="failed HTTP 500 boom"), True) == "failed HTTP 500 boom"
    assert warning.status(W, rep(warning="failed HTTP 000 "), True) == "failed HTTP 000"


def test_a_systemd_time_in_utc_is_said_in_sandos_one_format():
    """`sando status --json`'s unitSince said systemd's own "Sat 2026-12-05 22:12:37 UTC"."""
    assert times.from_systemd("Sat 2026-12-05 22:12:37 UTC\n") == "2026-12-05T22:12:37Z"
    assert times.from_systemd("") == ""  # never active
    assert times.from_systemd("Sat 2026-12-05 23:12:37 CET") == "Sat 2026-12-05 23:12:37 CET"  # not UTC: as it is


def test_a_sent_warning_is_said_with_its_time_not_the_epoch():
    """`sando restart` printed the node's raw report, "(warning: sent 1796508752)": both it and the
    outputs say the time in sando's one format, and the notice."""
    assert times.warning_sent("sent 1700000000", 5) == "sent at 2023-11-14T22:13:20Z, 5s before the restart"
    assert times.warning_sent("failed HTTP 500 boom", 5) == "failed HTTP 500 boom"
    assert times.warning_sent("sent soon", 5) == "sent soon"  # not an epoch: as the node said it


# --- ReleaseProvider: not enough space ---------------------------------------------------------------------


@pytest.mark.parametrize("free, need, text", [
    (12 * 1024, 64 * 1024, "node1: releases/ has 12 MB free, v7 needs 64 MB; "),
    (500, 2048, "node1: releases/ has 500 KB free, v7 needs 2 MB; "),
    (-5, 1536 * 1024, "node1: releases/ has 0 KB free, v7 needs 1536 MB; "),
    (2000, 2100, "node1: releases/ has 2000 KB free, v7 needs 2100 KB; "),  # both "2 MB": the exact numbers
])
def test_no_space_message(free, need, text):
    err = ReleaseProvider._no_space("node1", free, "v7", need)
    assert isinstance(err, OperatorError)
    assert str(err) == text + ("nothing was sent. Free space on the node (or lower sando:keepReleases) and run "
                               "pulumi up again")


def test_release_provider_checks_space_before_sending(provider_node, tmp_path, monkeypatch):
    """Free space as the probe read it is too little: refused before anything is built or sent."""
    node = provider_node
    props = {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
             "service": "makenotwork", "version": "v7", "commit": "c7", "binNames": ["makenotwork"],
             "build": {"repo": str(tmp_path), "command": "true", "binDir": "out", "errorPagesDir": "pages"}}
    base.remember(props, NodeState(live=None, previous=None, free_kib=100, zstd=True, active=False))

    class Art:
        root, files = str(tmp_path), (("makenotwork", "0" * 64, 0o755),)

        def size(self, rel):
            return 64 * 1024 * 1024

        def sums(self):
            return ""

    monkeypatch.setattr("sando_components.build.ensure_built", lambda *a, **k: Art())
    with pytest.raises(OperatorError, match=r"^node1: releases/ has 100 KB free, v7 needs 68 MB; nothing was sent"):
        ReleaseProvider()._ensure(props)
    assert node.scripts == []
    # as a resource: the node's failure is recorded for the verdict, the run goes on (issue 19.3)
    outs = ReleaseProvider().create(props).outs
    assert outs["outcome"]["ok"] is False and outs["outcome"]["node"] == "node1"
    assert outs["outcome"]["message"].startswith("node1: releases/ has 100 KB free, v7 needs 68 MB; nothing was sent")
    assert outs["lastTransfer"] is None and node.scripts == []


def test_release_provider_reports_the_nodes_own_free_space_check(provider_node, tmp_path, monkeypatch):
    """The node says 75 (less free space than the probe saw): the message gives the node's figure."""
    node = provider_node
    props = {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
             "service": "makenotwork", "version": "v7", "commit": "c7", "binNames": ["makenotwork"],
             "build": {"repo": str(tmp_path), "command": "true", "binDir": "out", "errorPagesDir": "pages"}}
    (tmp_path / "makenotwork").write_bytes(b"x")
    base.remember(props, NodeState(live=None, previous=None, free_kib=1 << 60, zstd=True, active=False))
    from sando_components import build
    art = build.Artifacts(str(tmp_path), (("makenotwork", "0" * 64, 0o755),))
    monkeypatch.setattr(build, "ensure_built", lambda *a, **k: art)
    monkeypatch.setattr(transfer, "MARGIN", 1e18)
    with pytest.raises(OperatorError, match=r"^node1: releases/ has \d+ MB free, v7 needs \d+ MB; nothing was sent"):
        ReleaseProvider()._ensure(props)
    assert node.steps() == ["receive"]
    assert node.versions() == []


def test_a_release_refused_for_other_bytes_holds_the_node_out_of_the_run(provider_node, tmp_path, monkeypatch):
    """Issue 22.1: the bytes built here differ from the ones the source stack verified: nothing is
    sent, and the node is held out of the rest of the run, so its host config step (which waits for
    the release: stack.host_waits_for) changes nothing. Any other failure of the release holds nothing."""
    from sando_components import build
    from sando_components.providers.host import HostConfigProvider

    node = provider_node
    props = {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
             "service": "makenotwork", "version": "v7", "commit": "c7", "binNames": ["makenotwork"],
             "build": {"repo": str(tmp_path), "command": "true", "binDir": "out", "errorPagesDir": "pages"},
             "expect": {"from": "testnot", "to": "prod", "version": "v7", "commit": "c7",
                        "files": {"makenotwork": "1" * 64}}}
    (tmp_path / "makenotwork").write_bytes(b"x")
    base.remember(props, NodeState(live=None, previous=None, free_kib=1 << 30, zstd=True, active=False))
    monkeypatch.setattr(base, "_unreachable", {})
    monkeypatch.setattr(build, "from_objects", lambda *a, **k: None)  # testnot's own bytes are not here
    monkeypatch.setattr(build, "ensure_built", lambda *a, **k: build.Artifacts(
        str(tmp_path), (("makenotwork", "2" * 64, 0o755),)))
    outs = ReleaseProvider().create(props).outs
    message = outs["outcome"]["message"]
    assert outs["outcome"]["ok"] is False and message.startswith(
        "node1: v7 (c7) built here is not byte-identical to what testnot runs: makenotwork: built here 2222")
    assert node.scripts == []  # nothing sent
    assert base.unreachable(props) == message and base.held_why(props) == "refused (not testnot's bytes)"
    host = {k: props[k] for k in ("node", "connection", "privateKey", "releaseRoot", "service")}
    new = {**host, "caddyfile": {"path": "/etc/caddy/Caddyfile", "mode": 0o644, "source": "Caddyfile", "content": "new"}}
    assert not HostConfigProvider().diff("id", host, new).changes  # an update: nothing to do
    outs = HostConfigProvider().create(new).outs  # a first deploy: recorded, nothing installed
    assert outs["actions"] == ["not applied: refused (not testnot's bytes)"] and outs["installed"] == {}
    assert outs["outcome"] == {"ok": False, "node": "node1", "message": message}
    assert node.scripts == []

    monkeypatch.setattr(base, "_unreachable", {})  # another failure (no room): the node is not held
    base.remember(props, NodeState(live=None, previous=None, free_kib=1, zstd=True, active=False))
    outs = ReleaseProvider().create({**props, "expect": None}).outs
    assert outs["outcome"]["ok"] is False and "free" in outs["outcome"]["message"]
    assert base.unreachable(props) is None


# --- rollout: the pause before a later batch ----------------------------------------------------------------


@pytest.mark.parametrize("rollout, live, earlier_switched, slept", [
    ({"batch": 1, "pauseSeconds": 7}, "v1", True, [7.0]),
    ({"batch": 1, "pauseSeconds": 7}, "v1", False, []),  # the earlier batch switched nothing in this run
    ({"batch": 0, "pauseSeconds": 7}, "v1", True, []),  # the first batch does not wait
    ({"batch": 2, "pauseSeconds": 0}, "v1", True, []),
    ({"batch": 1, "pauseSeconds": 7}, "v2", True, []),  # nothing to switch: no pause
])
def test_rollout_pause(provider_node, monkeypatch, rollout, live, earlier_switched, slept):
    node = provider_node
    node.release("v1")
    node.release("v2")
    node.point(current=live)
    node.start(live)
    naps = []
    monkeypatch.setattr(pointer, "time", SimpleNamespace(sleep=naps.append, time=time.time))
    props = {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
             "service": "makenotwork", "version": "v2", "commit": "c-v2", "keepReleases": 5,
             "healthCheck": {"url": "http://h/", "timeoutSeconds": 0, "intervalSeconds": 0.1, "expectVersion": False},
             "warning": None, "token": None, "gate": {}, "rollout": rollout, "after": [{"ok": True, "node": "node0"}]}
    monkeypatch.setattr(pointer, "_switched", {"node0"} if earlier_switched else set())
    outs = PointerProvider().create(props).outs
    assert outs["liveVersion"] == "v2" and naps == slept


def test_quote_lines_keeps_whole_lines():
    from sando_components.providers.release import quote_lines
    tar = ("tar: ./a/file-one: Cannot open: No space left on device\n"
           "tar: ./a/file-two: Cannot open: No space left on device\n"
           "tar: Exiting with failure status due to previous errors\n")
    assert quote_lines(tar) == ("tar: ./a/file-one: Cannot open: No space left on device; "
                                "tar: ./a/file-two: Cannot open: No space left on device; and 1 more line")
    assert quote_lines("x\nx\n") == "x" and quote_lines("") == "no output"


def test_skips_preview_unreachable_node_is_recorded_for_its_resources(monkeypatch):
    """Issue 19.3: in an up that skips its preview, Reach records a node it cannot reach (instead of
    ending the run); its other resources then change nothing and its pointer carries the message."""
    from sando_components import diagnostics
    from sando_components.providers import base, reach

    props = {"node": "n9", "connection": {"host": "10.9.9.9", "port": 2222, "user": "root"}, "releaseRoot": "/opt/x", "service": "x"}

    def refused(_props, **_kw):
        raise OperatorError("n9 (root@10.9.9.9:2222): cannot connect: Connection refused")

    monkeypatch.setattr(reach, "node_state", refused)
    monkeypatch.setattr(base, "prefetch", lambda _props: None)  # no connection from a unit test
    monkeypatch.setattr(base, "_unreachable", {})
    monkeypatch.setattr(diagnostics, "skips_preview", lambda: False)
    with pytest.raises(OperatorError):  # a preview stops at once
        reach.ReachProvider().check({}, props)
    assert base.unreachable(props) is None
    monkeypatch.setattr(diagnostics, "skips_preview", lambda: True)
    reach.ReachProvider().check({}, props)
    assert base.unreachable(props) == "n9 (root@10.9.9.9:2222): cannot connect: Connection refused"
    assert pointer.PointerProvider().diff("id", {}, props).changes
    said = []
    monkeypatch.setattr(pointer.diagnostics, "log", lambda level, msg, **kw: said.append(msg))
    outs = pointer.PointerProvider()._apply({**props, "version": "v2"}, {**props, "liveVersion": "v1", "version": "v1"})
    assert outs["liveVersion"] == "v1" and outs["outcome"] == {
        "ok": False, "node": "n9", "message": "n9 (root@10.9.9.9:2222): cannot connect: Connection refused"}
    assert said == ["n9: not reached, nothing changed here (the error at the end says why)"]
