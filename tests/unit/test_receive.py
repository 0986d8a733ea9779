"""commands.receive_release run for real in a tmp dir standing for a node's release root, fed the
real stream of transfer.stream(transfer.plan(...)): files land byte-identical with their modes,
unchanged files are hard links, changed ones zstd patches; every failure leaves nothing behind.
Then ReleaseProvider end to end against that node (ssh.run runs the scripts locally)."""

from __future__ import annotations

import io
import json
import random
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from sando_components import build, commands, paths, scripts, transfer
from sando_components.errors import OperatorError
from sando_components.providers import base
from sando_components.providers.base import parse_state
from sando_components.providers.release import ReleaseProvider

from fakenode import FakeNode, connection, sha
from unit_helpers import commit_all, init_repo

BIG = random.Random(7).randbytes(256 * 1024)  # above PATCH_MIN_BYTES


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return FakeNode(tmp_path, "opt/it's make notwork")


def artifacts(where: Path, files: dict[str, bytes], store: bool = True) -> build.Artifacts:
    """An Artifacts laid out by hand (as build._collect does), its bytes filed in the object store."""
    where.mkdir(parents=True)
    entries = []
    for rel, data in files.items():
        p = where / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        mode = build.FILE_MODE if rel.startswith(paths.ERROR_PAGES + "/") else build.BIN_MODE
        p.chmod(mode)
        entries.append((rel, sha(data), mode))
        if store:
            obj = build.object_path(sha(data))
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
    return build.Artifacts(str(where), tuple(entries))


def manifest_of(art: build.Artifacts, version: str, created_at: float = 1.0) -> dict:
    return {"sando": 2, "version": version, "commit": f"c-{version}", "createdAt": created_at,
            "bins": ["makenotwork"], "files": {rel: d for rel, d, _ in art.files}}


def held(node: FakeNode):
    state = parse_state(node.run(commands.probe(str(node.root), "makenotwork")).out)
    return state.held(), state.zstd


def send(node: FakeNode, art: build.Artifacts, version: str, *, zstd: bool = True, need_kib: int | None = None,
         data: bytes | None = None, token: str = "0a1b2c3d"):
    h, _ = held(node)
    plan = transfer.plan(art, manifest_of(art, version), h, zstd)
    compression = "zstd" if zstd else "gzip"
    if data is None:
        data = b"".join(transfer.stream(plan, compression)())
    script = commands.receive_release(str(node.root), version, token,
                                      plan.need_kib if need_kib is None else need_kib, plan.steps, compression)
    return plan, data, node.run(script, stdin=data)


def staging_dirs(node: FakeNode) -> list[str]:
    return [n for n in node.versions() if n.startswith(paths.STAGING_PREFIX)]


V1 = {"makenotwork": BIG, "mnw-admin": b"admin v1", "error-pages/502.html": b"<h1>502</h1>",
      "error-pages/sub dir/it's.html": b"nested"}


def test_first_release_lands_byte_identical_with_modes(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    plan, data, res = send(node, art, "v1")
    assert res.rc == 0, res.err
    assert res.report == [("received", "v1")]
    assert plan.counts == {"linked": 0, "patched": 0, "full": 4}
    rel = node.root / "releases" / "v1"
    for name, content in V1.items():
        assert (rel / name).read_bytes() == content, name
    assert stat.S_IMODE((rel / "makenotwork").stat().st_mode) == 0o755
    assert stat.S_IMODE((rel / "mnw-admin").stat().st_mode) == 0o755
    assert stat.S_IMODE((rel / "error-pages/502.html").stat().st_mode) == 0o644
    # the step runs under umask 077; what the service and Caddy read is made readable on purpose
    for d in (node.root / "releases", rel, rel / "error-pages", rel / "error-pages" / "sub dir", rel / ".sando"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    for f in ("error-pages/sub dir/it's.html", paths.SUMS, paths.MANIFEST):
        assert stat.S_IMODE((rel / f).stat().st_mode) == 0o644, f
    assert (rel / paths.SUMS).read_text() == art.sums()
    assert json.loads((rel / paths.MANIFEST).read_text()) == manifest_of(art, "v1")
    assert not (rel / paths.MANIFEST_DIR / "in").exists()
    assert node.versions() == ["v1"]  # the staging dir was renamed, nothing else left
    assert plan.need_kib == int(sum(len(b) for b in V1.values()) * transfer.MARGIN / 1024) + 1024


def test_second_release_links_unchanged_and_patches_changed_files(node, tmp_path):
    art1 = artifacts(tmp_path / "a1", V1)
    assert send(node, art1, "v1")[2].rc == 0
    big2 = bytearray(BIG)
    big2[1000:1010] = b"0123456789"  # a small change in a big binary
    v2 = {**V1, "makenotwork": bytes(big2), "mnw-admin": b"admin v2"}
    art2 = artifacts(tmp_path / "a2", v2)
    plan, data, res = send(node, art2, "v2")
    assert res.rc == 0, res.err
    assert plan.counts == {"linked": 2, "patched": 1, "full": 1}
    assert len(data) < 20_000  # the big binary travelled as a delta, not 256 KiB
    r1, r2 = node.root / "releases" / "v1", node.root / "releases" / "v2"
    for name, content in v2.items():
        assert (r2 / name).read_bytes() == content, name
    # unchanged: a hard link to v1's file, no bytes sent
    for name in ("error-pages/502.html", "error-pages/sub dir/it's.html"):
        assert (r2 / name).stat().st_ino == (r1 / name).stat().st_ino, name
    # changed and big: rebuilt from a zstd delta against v1's file, a file of its own
    assert (r2 / "makenotwork").stat().st_ino != (r1 / "makenotwork").stat().st_ino
    assert (r1 / "makenotwork").read_bytes() == BIG  # the base is untouched
    assert stat.S_IMODE((r2 / "makenotwork").stat().st_mode) == 0o755
    with tarfile.open(fileobj=io.BytesIO(subprocess.run(["zstd", "-d", "-c"], input=data, capture_output=True,
                                                        check=True).stdout)) as tar:
        names = tar.getnames()
    assert "makenotwork" not in names and "error-pages/502.html" not in names
    assert f"{paths.MANIFEST_DIR}/in/0.zst" in names and "mnw-admin" in names
    assert not (r2 / paths.MANIFEST_DIR / "in").exists()


def test_gzip_stream_for_a_node_without_zstd(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    plan, data, res = send(node, art, "v1", zstd=False)
    assert data[:2] == b"\x1f\x8b"  # gzip
    assert res.rc == 0, res.err
    assert plan.counts["patched"] == 0
    for name, content in V1.items():
        assert (node.root / "releases" / "v1" / name).read_bytes() == content


def test_corrupted_stream_fails_and_leaves_nothing(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    plan, good, _ = send(node, art, "v0")  # a good stream, to corrupt
    data = bytearray(b"".join(transfer.stream(plan, "zstd")()))
    data[len(data) // 2] ^= 0xFF
    _, _, res = send(node, art, "v1", data=bytes(data))
    assert res.rc != 0
    assert "received" not in res.keys()
    assert node.versions() == ["v0"]  # no v1, no staging dir


def test_truncated_stream_fails_and_leaves_nothing(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    plan = transfer.plan(art, manifest_of(art, "v1"), [], True)
    data = b"".join(transfer.stream(plan, "zstd")())
    _, _, res = send(node, art, "v1", data=data[: len(data) // 3])
    assert res.rc != 0
    assert node.versions() == []


class WrongSums(build.Artifacts):
    def sums(self) -> str:  # the SHA256SUMS sent do not match the files sent
        return "".join(f"{'0' * 64}  {rel}\n" for rel, _, _ in self.files)


def test_wrong_sums_fail_and_nothing_is_renamed(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    bad = WrongSums(art.root, art.files)
    _, _, res = send(node, bad, "v1")
    assert res.rc != 0
    assert "received" not in res.keys()
    assert not (node.root / "releases" / "v1").exists()


def test_wrong_sums_leave_no_staging_dir(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    _, _, res = send(node, WrongSums(art.root, art.files), "v1")
    assert res.rc != 0
    assert staging_dirs(node) == []


def test_patch_against_a_tampered_base_fails_and_leaves_no_staging_dir(node, tmp_path):
    _patch_against_tampered_base(node, tmp_path)
    assert staging_dirs(node) == []


def _patch_against_tampered_base(node, tmp_path):
    assert send(node, artifacts(tmp_path / "a1", V1), "v1")[2].rc == 0
    (node.root / "releases" / "v1" / "makenotwork").write_bytes(BIG[:-1] + b"!")  # changed on the node
    big2 = BIG[:5000] + b"changed" + BIG[5007:]
    plan, _, res = send(node, artifacts(tmp_path / "a2", {**V1, "makenotwork": big2}), "v2")
    assert plan.counts["patched"] == 1
    assert res.rc == scripts.code("EX_SUMS_FAILED")  # the provider then sends whole files
    assert not (node.root / "releases" / "v2").exists()


def test_patch_against_a_tampered_base_fails(node, tmp_path):
    _patch_against_tampered_base(node, tmp_path)


def test_too_little_space_exits_75_before_unpacking(node, tmp_path):
    art = artifacts(tmp_path / "a1", V1)
    (node.root / "releases").mkdir()
    _, _, res = send(node, art, "v1", need_kib=1 << 40)
    assert res.rc == 75
    free = res.get("free")
    assert free is not None and free.isdigit() and 0 < int(free) < 1 << 40
    assert node.versions() == []  # nothing unpacked, no staging dir


def test_existing_release_exits_17_and_is_left_alone(node, tmp_path):
    node.release("v1", {"makenotwork": b"the one on the node"})
    _, _, res = send(node, artifacts(tmp_path / "a1", V1), "v1")
    assert res.rc == 17
    assert res.report == [("exists", "v1")]
    assert (node.root / "releases" / "v1" / "makenotwork").read_bytes() == b"the one on the node"
    assert staging_dirs(node) == []


def test_leftover_staging_dirs_are_removed(node, tmp_path):
    rel = node.root / "releases"
    (rel / ".staging-v0-dead" / "x").mkdir(parents=True)
    (rel / ".staging-v9-beef").mkdir()
    (rel / ".staging-a-file").write_text("not a dir: left alone")
    (rel / "keep-me").mkdir()
    _, _, res = send(node, artifacts(tmp_path / "a1", V1), "v1")
    assert res.rc == 0, res.err
    assert node.versions() == [".staging-a-file", "keep-me", "v1"]


# --- ReleaseProvider end to end (ssh.run runs locally) ------------------------------------------------


@pytest.fixture
def server(tmp_path) -> dict:
    """A server repo whose build copies src/ into out/bin (binDir) and has error pages."""
    repo = init_repo(tmp_path / "server")
    (repo / "src").mkdir()
    (repo / "src" / "makenotwork").write_bytes(BIG)
    (repo / "src" / "mnw-admin").write_text("admin 1")
    (repo / "pages").mkdir()
    (repo / "pages" / "502.html").write_text("<h1>502</h1>")
    c1 = commit_all(repo, "one")
    (repo / "src" / "makenotwork").write_bytes(BIG[:-3] + b"two")
    c2 = commit_all(repo, "two")
    return {"path": repo, "c1": c1, "c2": c2}


def release_props(node: FakeNode, server: dict, version: str, commit: str) -> dict:
    return {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
            "service": "makenotwork", "version": version, "commit": commit, "binNames": ["makenotwork", "mnw-admin"],
            "build": {"repo": str(server["path"]), "command": "mkdir -p out/bin && cp src/* out/bin/",
                      "binDir": "out/bin", "errorPagesDir": "pages"}}


def test_release_provider_sends_then_deltas(provider_node, server):
    node = provider_node
    p = ReleaseProvider()
    outs1 = p.create(release_props(node, server, "v1", server["c1"])).outs
    assert outs1["path"] == f"{node.root}/releases/v1"
    assert outs1["sha256"] == {"makenotwork": sha(BIG), "mnw-admin": sha(b"admin 1")}
    assert {k: outs1["lastTransfer"][k] for k in ("linked", "patched", "full")} == \
        {"linked": 0, "patched": 0, "full": 3}
    outs2 = p.create(release_props(node, server, "v2", server["c2"])).outs
    assert {k: outs2["lastTransfer"][k] for k in ("linked", "patched", "full")} == \
        {"linked": 2, "patched": 1, "full": 0}
    assert outs2["lastTransfer"]["bytesSent"] < 20_000
    assert (node.root / "releases" / "v2" / "makenotwork").read_bytes() == BIG[:-3] + b"two"
    # the node's state was remembered, not read again: one probe for the whole run
    assert node.steps().count("probe") == 1


def test_release_provider_reuses_a_held_release_and_refuses_another_commit(provider_node, server):
    node = provider_node
    node.release("v1", {"makenotwork": b"x", "mnw-admin": b"y"}, commit=server["c1"])
    outs = ReleaseProvider().create(release_props(node, server, "v1", server["c1"])).outs
    assert outs["lastTransfer"]["bytesSent"] == 0 and outs["lastTransfer"]["linked"] == 2
    assert "receive" not in node.steps()
    with pytest.raises(OperatorError, match=r"^node1: release v1 on the node was built from commit "
                                            + server["c1"][:12] + ".* now names " + server["c2"][:12]):
        ReleaseProvider()._ensure(release_props(node, server, "v1", server["c2"]))


def test_release_provider_refuses_a_foreign_dir_of_that_name(provider_node, server):
    provider_node.foreign("v1")
    with pytest.raises(OperatorError, match=r"^node1: .*/releases/v1 exists but sando did not make it"):
        ReleaseProvider()._ensure(release_props(provider_node, server, "v1", server["c1"]))
    assert (provider_node.root / "releases" / "v1" / "bin").is_dir()


def test_release_provider_diff_sees_a_release_removed_on_the_node(provider_node, server):
    node = provider_node
    props = release_props(node, server, "v1", server["c1"])
    outs = ReleaseProvider().create(props).outs
    assert ReleaseProvider().diff("id", outs, props).changes is False
    base._states.clear()
    shutil.rmtree(node.root / "releases" / "v1")
    assert ReleaseProvider().diff("id", outs, props).changes is True
