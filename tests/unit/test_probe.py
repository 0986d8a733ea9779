"""commands.probe run for real against a release root in a tmp dir (stand-in systemctl), read back
with providers.base.parse_state: what a node holds, in one round trip."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sando_components import commands
from sando_components.providers.base import parse_state

from fakenode import FakeNode, sha


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(tmp_path)


def probe(node: FakeNode, root=None, service="makenotwork", **env):
    res = node.run(commands.probe(str(root or node.root), service), **env)
    assert res.rc == 0, res.err
    return res, parse_state(res.out)


def free_kib(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


def test_empty_root(node):
    res, state = probe(node)
    assert "missing" not in res.keys()
    assert (res.get("current"), res.get("previous")) == ("", "")
    assert (state.live, state.previous, state.releases, state.foreign) == (None, None, {}, ())
    assert state.zstd is True
    assert state.active is False and res.get("active") == "inactive"
    assert abs(state.free_kib - free_kib(node.root)) <= max(64 * 1024, free_kib(node.root) // 20)


def test_missing_root(node):
    res, state = probe(node, root=node.base / "no such" / "root")
    assert "missing" in res.keys()
    assert (state.live, state.previous, state.releases, state.foreign) == (None, None, {}, ())
    assert state.free_kib > 0  # measured somewhere (/): an upload can still be planned


def test_releases_links_foreign_failed_and_staging(node):
    node.release("v1", commit="c1" * 20, created_at=100.5)
    node.release("v2", commit="c2" * 20, created_at=200.0, failed=True)
    node.foreign("hand-made")
    node.foreign("with space")
    node.foreign(".old")  # hidden, not staging: foreign
    (node.root / "releases" / ".staging-v3-0a1b" / ".sando").mkdir(parents=True)  # an upload in progress
    (node.root / "releases" / ".staging-v3-0a1b" / ".sando" / "manifest.json").write_text("{}")
    (node.root / "releases" / "a-file").write_text("not a dir")
    os.symlink("v1", node.root / "releases" / "link-to-v1")
    node.point(current="v2", previous="v1")
    node.start("v2")

    res, state = probe(node)
    assert (res.get("current"), res.get("previous")) == ("releases/v2", "releases/v1")
    assert (state.live, state.previous) == ("v2", "v1")
    assert state.active is True
    assert sorted(state.releases) == ["v1", "v2"]
    v1, v2 = state.releases["v1"], state.releases["v2"]
    assert (v1.commit, v1.created_at, v1.failed) == ("c1" * 20, 100.5, False)
    assert (v2.commit, v2.created_at, v2.failed) == ("c2" * 20, 200.0, True)
    assert v1.files == {"makenotwork": sha(b"binary v1"), "error-pages/502.html": sha(b"502 of v1")}
    assert state.foreign == (".old", "hand-made", "with space")
    assert [r.version for r in state.held()] == ["v2", "v1"]


def test_held_orders_live_previous_then_newest(node):
    for v, t in (("v1", 1), ("v2", 2), ("v3", 3), ("v4", 4)):
        node.release(v, created_at=t)
    node.point(current="v2", previous="v1")
    _, state = probe(node)
    assert [r.version for r in state.held()] == ["v2", "v1", "v4", "v3"]


def test_manifest_spread_over_lines_and_broken_manifest(node):
    d = node.release("v1", commit="abc", created_at=5)
    (d / ".sando" / "manifest.json").write_text(json.dumps({"commit": "abc", "createdAt": 5, "files": {}}, indent=2))
    d2 = node.release("v2")
    (d2 / ".sando" / "manifest.json").write_text("{not json")
    _, state = probe(node)
    assert (state.releases["v1"].commit, state.releases["v1"].created_at) == ("abc", 5.0)
    assert (state.releases["v2"].commit, state.releases["v2"].files) == ("", {})  # sando's, but unreadable


def test_absolute_link_written_by_hand(node):
    node.release("v1")
    node.link("current", str(node.root / "releases" / "v1"))
    node.link("previous", "garbage")
    _, state = probe(node)
    assert (state.live, state.previous) == ("v1", None)


def test_service_name_is_one_argument(node):
    probe(node, service="it's a b")
    assert node.calls("systemctl") == [["is-active", "it's a b"]]


def test_without_zstd(node, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in ("readlink", "df", "awk", "tr", "cat", "mawk"):
        if shutil.which(t):
            os.symlink(shutil.which(t), tools / t)
    res = node.run(commands.probe(str(node.root), "makenotwork"), PATH=f"{node.bin}:{tools}")
    assert res.rc == 0, res.err
    assert parse_state(res.out).zstd is False and res.get("zstd") == "no"
