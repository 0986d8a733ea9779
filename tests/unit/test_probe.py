"""commands.probe (sh/probe.sh) run for real against a release root in a tmp dir (stand-in
systemctl), read back with providers.base.parse_state: what a node holds, in one round trip; and
what it cannot read is an error naming the node, not a default."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sando_components import commands, scripts
from sando_components.errors import OperatorError
from sando_components.providers.base import parse_state

from fakenode import FakeNode, sha


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(tmp_path)


def probe(node: FakeNode, root=None, service="makenotwork", **env):
    res = node.run(commands.probe(str(root or node.root), service), **env)
    assert res.rc == 0, res.err
    return res, parse_state(res.out, res.rc, "node1", str(root or node.root), res.err)


def free_kib(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


def test_empty_root(node):
    res, state = probe(node)
    assert res.get("root") == "ok" and not state.root_missing
    assert (res.get("current"), res.get("previous")) == ("", "")
    assert (state.live, state.previous, state.releases, state.foreign) == (None, None, {}, ())
    assert state.zstd is True
    assert state.active is False and res.get("active") == "inactive"
    assert abs(state.free_kib - free_kib(node.root)) <= max(64 * 1024, free_kib(node.root) // 20)


def test_missing_root(node):
    res, state = probe(node, root=node.base / "no such" / "root")
    assert res.get("root") == "missing" and state.root_missing  # nothing deployed yet: not an error
    assert (state.live, state.previous, state.releases, state.foreign) == (None, None, {}, ())
    # measured where the release root will be made (the nearest existing parent)
    assert abs(state.free_kib - free_kib(node.base)) <= max(64 * 1024, free_kib(node.base) // 20)


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


def test_manifest_spread_over_lines(node):
    d = node.release("v1", commit="abc", created_at=5)
    (d / ".sando" / "manifest.json").write_text(json.dumps({"commit": "abc", "createdAt": 5, "files": {}}, indent=2))
    _, state = probe(node)
    assert (state.releases["v1"].commit, state.releases["v1"].created_at) == ("abc", 5.0)


@pytest.mark.parametrize("text, why", [
    ("{not json", r"not JSON"),
    ('{"createdAt": 5, "files": {}}', r"no commit"),
    ('{"commit": "", "createdAt": 5, "files": {}}', r"no commit"),
    ('{"commit": "abc", "files": {}}', r"no createdAt"),
    ('{"commit": "abc", "createdAt": 5}', r"no files"),
    ("[1]", r"not a JSON object"),
])
def test_a_broken_manifest_is_an_error_naming_the_node_and_the_file(node, text, why):
    node.release("v1")
    (node.release("v2") / ".sando" / "manifest.json").write_text(text)
    res = node.run(commands.probe(str(node.root), "makenotwork"))
    with pytest.raises(OperatorError, match=rf"^node1: {node.root}/releases/v2/.sando/manifest.json is broken "
                                            rf"\({why}.*\); sando cannot tell which commit releases/v2 holds"):
        parse_state(res.out, res.rc, "node1", str(node.root))


def test_a_release_root_that_exists_but_cannot_be_entered_is_an_error(node, tmp_path):
    not_a_dir = tmp_path / "root-file"
    not_a_dir.write_text("a file where the release root should be")
    res = node.run(commands.probe(str(not_a_dir), "makenotwork"))
    assert res.rc == scripts.code("EX_UNREADABLE")
    with pytest.raises(OperatorError, match=rf"^node1: cannot read the release root {not_a_dir} \(not a directory\)"):
        parse_state(res.out, res.rc, "node1", str(not_a_dir))


def test_an_unreadable_free_space_figure_is_an_error_not_zero(node, tmp_path):
    broken = tmp_path / "broken-df"
    broken.mkdir()
    (broken / "df").write_text("#!/bin/sh\necho 'df: cannot read table of mounted file systems' >&2\nexit 1\n")
    (broken / "df").chmod(0o755)
    res = node.run(commands.probe(str(node.root), "makenotwork"), PATH=f"{broken}:{node.env()['PATH']}")
    assert res.rc == scripts.code("EX_UNREADABLE")
    with pytest.raises(OperatorError, match=rf"^node1: cannot read the free space under {node.root.parent}|"
                                            rf"^node1: cannot read the free space under \."):
        parse_state(res.out, res.rc, "node1", str(node.root))
    # and a report without a figure at all is no 0 either
    with pytest.raises(OperatorError, match=r"^node1: cannot read the free space"):
        parse_state('{"@":"root","v":"ok"}\n', 0, "node1", str(node.root))


def test_absolute_link_written_by_hand(node):
    node.release("v1")
    node.link("current", str(node.root / "releases" / "v1"))
    node.link("previous", "garbage")
    _, state = probe(node)
    assert (state.live, state.previous) == ("v1", None)


def test_service_name_is_one_argument(node):
    probe(node, service="it's a b")
    # one systemctl: its state (is-active's word) and, for the database read, its env files
    assert node.calls("systemctl", watching=True) == [
        ["show", "-p", "ActiveState", "-p", "EnvironmentFiles", "it's a b.service"]]


def test_without_zstd(node, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in ("sh", "readlink", "df", "awk", "mawk", "tr", "cat", "sed", "head", "tail", "dirname", "id"):
        if shutil.which(t):
            os.symlink(shutil.which(t), tools / t)
    res = node.run(commands.probe(str(node.root), "makenotwork"), PATH=f"{node.bin}:{tools}")
    assert res.rc == 0, res.err
    assert parse_state(res.out).zstd is False and res.get("zstd") == "no"


def test_the_nodes_machine_and_glibc_are_read(node):
    """Issue 22.2: `uname -m` and `getconf GNU_LIBC_VERSION` of the node, as the node says them;
    a node without glibc (musl: getconf knows no GNU_LIBC_VERSION) says none."""
    import subprocess

    _, state = probe(node)
    assert state.arch == subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    assert state.glibc == subprocess.run(["getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True).stdout.strip()
    musl = node.base / "musl-bin"
    musl.mkdir()
    (musl / "getconf").write_text("#!/bin/sh\necho 'getconf: Unrecognized variable' >&2\nexit 1\n")
    (musl / "getconf").chmod(0o755)
    _, state = probe(node, PATH=f"{musl}:{node.env()['PATH']}")
    assert state.glibc == "none"


# --- with the migration gate on, the read takes the database's applied migrations (sh/db.sh) --------


def db_probe(node: FakeNode, **db):
    res = node.run(commands.probe(str(node.root), "makenotwork", db))
    assert res.rc == 0, res.err
    return res, parse_state(res.out, res.rc, "node1", str(node.root), res.err)


def test_without_the_gate_the_database_is_not_read(node):
    res, state = probe(node)
    assert "database" not in res.out and state.applied is None


def test_the_database_named_or_found_through_the_env_file_and_its_applied_migrations(node, tmp_path):
    from test_gate import make_db

    db = make_db(tmp_path / "data" / "mnw.db", applied=("1", "2", "10"), failed=("11",))
    res, state = db_probe(node, database=str(db), envFile="")
    assert res.get("database") == str(db) and res.get("db") == "ok"
    assert state.applied == ("1", "2", "10")  # a failed migration is not applied
    # no database named: DATABASE_PATH of the env file (the unit names none here), quoted as the service reads it
    env = tmp_path / "mnw.env"
    env.write_text(f'PORT=3000\nDATABASE_PATH="{db}"\n')
    res, state = db_probe(node, database="", envFile=str(env))
    assert res.get("database") == str(db) and state.applied == ("1", "2", "10")


@pytest.mark.parametrize("kind", ["missing", "no table", "not sqlite"])
def test_a_database_not_there_yet_has_applied_nothing_and_an_unreadable_one_is_unknown(node, tmp_path, kind):
    import sqlite3

    path = tmp_path / "mnw.db"
    if kind == "no table":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (body TEXT)")  # the service's own tables, no migration yet
        con.commit()
        con.close()
    elif kind == "not sqlite":
        path.write_text("this is not a database\n" * 100)
    res, state = db_probe(node, database=str(path), envFile="")
    assert res.get("db") == {"missing": "missing", "no table": "no migrations table",
                             "not sqlite": res.get("db")}[kind]
    if kind == "not sqlite":
        assert res.get("db").startswith("unreadable: ") and state.applied is None  # the status read decides
    else:
        assert state.applied == ()


def test_a_node_whose_current_is_the_pin_leaves_its_database_alone(node, tmp_path):
    """Nothing switches where `current` already is the pin, so there is nothing to warn of: the read
    (a no-op's one round trip) does not read the database; any other live release, it does."""
    from test_gate import make_db

    db = make_db(tmp_path / "mnw.db", applied=("1", "2"))
    releases = node.root / "releases"
    for v in ("v1", "v2"):
        (releases / v).mkdir(parents=True)
    (node.root / "current").symlink_to("releases/v2")
    where = {"database": str(db), "envFile": ""}
    res, state = db_probe(node, **where, pin="v2")
    assert res.get("db") is None and state.applied is None, res.out
    # an absolute target, as written by hand, is the pin too
    (node.root / "current").unlink()
    (node.root / "current").symlink_to(f"{releases}/v2/")
    res, state = db_probe(node, **where, pin="v2")
    assert res.get("db") is None and state.applied is None, res.out
    for pin in ("v1", "v", "2"):  # another release live (or a name that only ends like it): read
        res, state = db_probe(node, **where, pin=pin)
        assert res.get("db") == "ok" and state.applied == ("1", "2"), (pin, res.out)
