"""Release on real-systemd nodes: built at the pinned commit, sent as a verified delta, immutable,
never lost to a config edit, pruned by keepReleases from what the node holds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sando_components import build, elf
from tests.support import AppRepo, run_preview, run_up


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def releases(node) -> list[str]:
    return sorted(p.name for p in (node.release_root / "releases").iterdir())


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """A repo with v1..v5, each a real commit of the stand-in."""
    repo = AppRepo(tmp_path_factory.mktemp("relapp") / "makenotwork")
    for v in ("v2", "v3", "v4", "v5"):
        repo.version(v)
    return repo


def built(engine, repo, version) -> Path:
    return Path(engine["SANDO_CACHE_DIR"]) / "builds" / repo.commit(version) / "artifacts"


def test_release_is_the_pinned_build_byte_for_byte_and_the_same_pin_sends_nothing(make_nodes, make_deploy,
                                                                                  versions, engine):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    rel = node.release_root / "releases" / "v1"
    manifest = json.loads((rel / ".sando" / "manifest.json").read_text())
    assert manifest["commit"] == versions.commit("v1")
    local = built(engine, versions, "v1")
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert files == ["error-pages/404.html", "error-pages/502.html", "error-pages/503.html", "makenotwork",
                     "mnw-admin"]
    out = d.node_out(node)
    for f in files:  # every file byte for byte the local build of the pinned commit
        assert sha(rel / f) == sha(local / f) == manifest["files"][f]
        assert (rel / f).stat().st_mode & 0o777 == (local / f).stat().st_mode & 0o777
    assert out["sha256"] == {b: sha(local / b) for b in ("makenotwork", "mnw-admin")}
    assert out["lastTransfer"]["full"] == 5 and 0 < out["lastTransfer"]["bytesSent"] < sum(
        (local / f).stat().st_size for f in files)  # compressed
    node.exec("sh", "-c", "cd /opt/makenotwork/releases/v1 && sha256sum --check --strict --quiet .sando/SHA256SUMS")

    res, changed = run_up(d)  # the same pin: nothing to do
    assert changed == {} and set(res.summary.resource_changes) == {"same"}

    d2 = make_deploy([node], repo=versions)  # a new stack meeting the release on the node: 0 bytes
    run_up(d2)
    assert d2.node_out(node)["lastTransfer"]["bytesSent"] == 0
    # the server repo was only read: no build worktree of sando's is registered in it
    listed = subprocess.run(["git", "-C", str(versions.path), "worktree", "list", "--porcelain"],
                            capture_output=True, text=True, check=True).stdout
    assert [ln for ln in listed.splitlines() if ln.startswith("worktree ")] == [f"worktree {versions.path}"]


def test_a_new_version_is_a_verified_delta_against_the_live_release(make_nodes, make_deploy, versions, engine):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    t = d.node_out(node)["lastTransfer"]
    assert (t["version"], t["patched"]) == ("v2", 2)  # both binaries as zstd deltas against v1
    v2 = built(engine, versions, "v2")
    full = sum((v2 / b).stat().st_size for b in ("makenotwork", "mnw-admin"))
    assert t["bytesSent"] < full / 5
    rel = node.release_root / "releases" / "v2"
    for b in ("makenotwork", "mnw-admin"):
        assert sha(rel / b) == sha(v2 / b)
    assert node.served()["version"] == "v2"


def test_a_delta_that_rebuilds_wrong_bytes_never_lands_and_whole_files_are_sent(make_nodes, make_deploy, versions,
                                                                               engine):
    """The live release's binary was changed on the node: the delta made against the real bytes
    rebuilds something else there, the sha256 check on the node refuses it, and sando sends
    whole files."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    live = node.release_root / "releases" / "v1" / "makenotwork"
    data = bytearray(live.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed = live.with_name("changed")
    changed.write_bytes(bytes(data))
    os.replace(changed, live)  # (it is running: a new file in its place)
    d.set(version="v2")
    run_up(d)
    t = d.node_out(node)["lastTransfer"]
    assert t["patched"] == 0 and t["full"] >= 1
    assert "a delta of v2 did not match its sha256; sent whole files" in "\n".join(d.log)
    assert sha(node.release_root / "releases" / "v2" / "makenotwork") == sha(built(engine, versions, "v2") /
                                                                              "makenotwork")
    assert not [p for p in (node.release_root / "releases").iterdir() if p.name.startswith(".staging")]


def test_keep_releases_never_prunes_live_or_rollback_target(make_nodes, make_deploy, versions):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions, keepReleases=2)
    for v in ("v1", "v2", "v3", "v4"):
        d.set(version=v)
        run_up(d)
    assert releases(node) == ["v3", "v4"]  # exactly the 2 newest
    d.set(version="v3")  # rollback: v3 live, v4 the rollback target
    run_up(d)
    assert releases(node) == ["v3", "v4"]
    d.set(keepReleases=1)  # even a window of 1 keeps the live one and the rollback target
    run_up(d)
    assert releases(node) == ["v3", "v4"]
    d.set(keepReleases=2, version="v5")
    run_up(d)
    assert releases(node) == ["v3", "v4", "v5"]  # v5 live, v3 rollback target, v4 among the 2 newest
    d.set(keepReleases=1)
    run_up(d)
    assert releases(node) == ["v3", "v5"]
    assert [r["version"] for r in d.node_out(node)["releases"]] == ["v3", "v5"]  # the state knows each one

    foreign = node.release_root / "releases" / "handmade"  # never anything sando did not make
    foreign.mkdir()
    d.set(version="v4")  # v4 was pruned: it is sent again
    run_up(d)
    assert "handmade" in releases(node) and node.served()["version"] == "v4"
    assert d.node_out(node)["foreign"] == ["handmade"]


@pytest.mark.parametrize("edit", ["reorder-binNames", "drop-a-binary", "port", "rotate-key"])
def test_config_edits_never_delete_a_release(make_nodes, make_deploy, versions, edit, tmp_path):
    """Issue 9.1: an edit that leaves a release where it is never deletes it; rollbacks still work."""
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    if edit == "reorder-binNames":
        d.set(binNames=["mnw-admin", "makenotwork"])
    elif edit == "drop-a-binary":
        d.set(binNames=["makenotwork"])
    elif edit == "port":  # the node answers on another port too: a connection change
        node.sshd_config("ports", "Port 22\nPort 2222", ports=(22, 2222))
        cfg = node.config() | {"port": 2222}
        d.set(nodes=[cfg])
    else:
        new_key = tmp_path / "rotated"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)], check=True)
        node.path("/root/.ssh/authorized_keys").write_text(new_key.with_suffix(".pub").read_text())
        d.set_secret("sshPrivateKey", new_key.read_text())
    _, planned = run_preview(d)
    assert not [op for op in planned.values() if op in ("delete", "replace", "create-replacement",
                                                        "delete-replaced")], planned
    run_up(d)
    assert releases(node) == ["v1", "v2"]
    d.set(version="v1")  # a rollback to the other retained release works
    _, changed = run_up(d)
    assert node.served()["version"] == "v1" and d.node_out(node)["lastTransfer"]["bytesSent"] == 0
    assert releases(node) == ["v1", "v2"]


def test_a_release_changed_on_the_node_is_never_pointed_at(make_nodes, make_deploy, versions):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    tampered = node.release_root / "releases" / "v1" / "mnw-admin"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    d.set(version="v1")
    (error,) = d.errors(d.up_fails())
    assert error.startswith("node1: files of releases/v1 no longer match its SHA256SUMS (")
    assert "v2 stays live" in error
    assert os.readlink(node.release_root / "current") == "releases/v2" and node.served()["version"] == "v2"


@pytest.mark.parametrize("change,key", [
    ({"version": "a/b"}, "sando:version"),
    ({"version": "v 1"}, "sando:version"),
    ({"version": "$(id)"}, "sando:version"),
    ({"version": "v999"}, "sando:version"),
    ({"binNames": []}, "sando:binNames"),
    ({"binNames": ["bin/evil"]}, "sando:binNames"),
    ({"source": {"repo": "REPO", "errorPagesDir": "server/nope"}}, "sando:source.errorPagesDir"),
])
def test_release_config_errors_fail_at_preview(make_nodes, make_deploy, versions, change, key):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    if "source" in change:
        change = {"source": {**change["source"], "repo": str(versions.path)}}
    d.set(**change)
    text = d.up_fails()
    (error,) = d.errors(text)
    assert error.startswith(key + ": ") and "Traceback" not in text
    assert not (node.release_root / "releases").exists()
    assert node.unit_events() == []


def test_a_binary_the_build_does_not_make_is_one_line(make_nodes, make_deploy, versions):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions, binNames=["makenotwork", "server"])
    text = d.up_fails()
    assert "Traceback" not in text
    (error,) = d.errors(text)
    assert error.startswith("sando:binNames: server not built: no such file in server/target/release/")


def _shadow(node, tool: str, arg: str, says: str) -> None:
    """A tool placed first on the node's PATH (/usr/local/bin) that answers `tool arg` with `says`
    and runs the real one otherwise: the node reports an older glibc or another machine the way a
    real one would (it is what `getconf`/`uname` would print there); the build is the real one."""
    fake = node.path(f"/usr/local/bin/{tool}")
    fake.write_text(f'#!/bin/sh\nif [ "$1" = {arg} ]; then echo "{says}"; exit 0; fi\nexec /usr/bin/{tool} "$@"\n')
    fake.chmod(0o755)


def test_a_build_the_node_cannot_run_is_never_sent(make_nodes, make_deploy, versions, engine):
    """Issue 22.2: node1 reports glibc 2.17 (older than the build needs), node2 reports aarch64:
    each fails before a byte is sent, naming the binary, what it needs and what the node has."""
    node1, node2 = make_nodes(2)
    _shadow(node1, "getconf", "GNU_LIBC_VERSION", "glibc 2.17")
    _shadow(node2, "uname", "-m", "aarch64")
    d = make_deploy([node1, node2], repo=versions)
    text = d.up_fails()
    assert "Traceback" not in text
    need = elf.needs(str(built(engine, versions, "v1") / "makenotwork"))
    assert need.glibc > (2, 17)
    errors = d.errors(text)
    assert (f"node1: the build of v1 cannot run there: makenotwork needs {need.glibc_text}, the node has glibc 2.17; "
            f"mnw-admin needs {elf.needs(str(built(engine, versions, 'v1') / 'mnw-admin')).glibc_text}, the node has "
            "glibc 2.17; nothing was sent. Build on a machine matching the node (or a static build) and run pulumi up "
            "again") in errors
    assert ("node2: the build of v1 cannot run there: makenotwork is built for x86_64, the node is aarch64; "
            "mnw-admin is built for x86_64, the node is aarch64; nothing was sent. Build on a machine matching the "
            "node (or a static build) and run pulumi up again") in errors, text
    for node in (node1, node2):  # not a byte: no release, no staging dir, nothing started
        rels = node.release_root / "releases"
        assert not rels.exists() or list(rels.iterdir()) == []
        assert [e for e in node.unit_events() if "makenotwork" in e[1]] == []
    # the node as it really is (the shadow tools gone): the same build goes
    for node, tool in ((node1, "getconf"), (node2, "uname")):
        node.path(f"/usr/local/bin/{tool}").unlink()
    run_up(d)
    assert node1.served()["version"] == node2.served()["version"] == "v1"
