"""sando_components/transfer.py: the per-file plan (link / patch / full), the space it needs, and the
compressed tar stream (zstd, or gzip for a node without zstd). The stream's arrival on a node is
run for real in test_receive.py."""

from __future__ import annotations

import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from sando_components import build, paths, transfer
from sando_components.transfer import NodeRelease

from fakenode import sha

BIG = random.Random(3).randbytes(transfer.PATCH_MIN_BYTES)  # exactly the threshold
BIG2 = BIG[:100] + b"changed" + BIG[107:]


def store(data: bytes) -> None:
    obj = build.object_path(sha(data))
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)


def art_of(tmp_path: Path, files: dict[str, bytes]) -> build.Artifacts:
    root = tmp_path / "art"
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append((rel, sha(data), 0o644 if "/" in rel else 0o755))
    return build.Artifacts(str(root), tuple(entries))


def rel_(version: str, files: dict[str, bytes], failed: bool = False, created: float = 0) -> NodeRelease:
    return NodeRelease(version, f"c-{version}", created, {k: sha(v) for k, v in files.items()}, failed)


MODES = [transfer.step("mode", paths.SUMS, 0o644), transfer.step("mode", paths.MANIFEST, 0o644)]


def test_object_store_is_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDO_CACHE_DIR", str(tmp_path / "c"))
    assert build.object_path("ab" + "0" * 62) == tmp_path / "c" / "objects" / "ab" / ("ab" + "0" * 62)


def test_first_release_is_sent_whole(tmp_path):
    art = art_of(tmp_path, {"server": BIG, "error-pages/502.html": b"502"})
    p = transfer.plan(art, {"version": "v1"}, [], True)
    assert p.counts == {"linked": 0, "patched": 0, "full": 2}
    assert p.steps == ["mode\tserver\t0755", "mode\terror-pages/502.html\t0644", *MODES]  # whatever the umask
    assert p.members[:2] == [("server", str(Path(art.root, "server")), 0o755),
                             ("error-pages/502.html", str(Path(art.root, "error-pages/502.html")), 0o644)]
    assert p.members[2] == (paths.SUMS, art.sums().encode(), 0o644)
    assert p.members[3] == (paths.MANIFEST, b'{"version":"v1"}', 0o644)
    assert p.need_bytes == len(BIG) + 3
    assert p.need_kib == int((len(BIG) + 3) * transfer.MARGIN / 1024) + 1024


def test_link_when_any_held_release_has_the_same_bytes_at_that_path(tmp_path):
    art = art_of(tmp_path, {"server": BIG, "error-pages/502.html": b"502", "mnw-admin": b"admin"})
    held = [rel_("v2", {"server": b"other"}), rel_("v1", {"error-pages/502.html": b"502"}, failed=True),
            rel_("v0", {"server": BIG, "mnw-admin": b"admin"})]
    p = transfer.plan(art, {}, held, True)
    assert p.steps == ["link\tv0\tserver", "link\tv1\terror-pages/502.html", "link\tv0\tmnw-admin", *MODES]
    assert p.counts == {"linked": 3, "patched": 0, "full": 0}
    assert p.need_bytes == 0
    assert [m[0] for m in p.members] == [paths.SUMS, paths.MANIFEST]


def test_same_bytes_at_another_path_is_not_a_link(tmp_path):
    art = art_of(tmp_path, {"mnw-admin": b"admin"})
    p = transfer.plan(art, {}, [rel_("v1", {"server": b"admin"})], True)
    assert p.counts == {"linked": 0, "patched": 0, "full": 1}


def test_patch_against_the_first_good_release_holding_the_path(tmp_path):
    store(BIG)
    store(BIG[::-1])
    art = art_of(tmp_path, {"server": BIG2})
    held = [rel_("v3", {"server": b"x" * 10}, failed=True), rel_("v2", {"server": BIG}), rel_("v1", {"server": BIG[::-1]})]
    p = transfer.plan(art, {}, held, True)
    assert p.counts == {"linked": 0, "patched": 1, "full": 0}
    assert p.steps == [f"patch\tv2\tserver\t{paths.MANIFEST_DIR}/in/0.zst\t0755", *MODES]
    name, delta, mode = p.members[0]
    assert (name, mode) == (f"{paths.MANIFEST_DIR}/in/0.zst", 0o600)
    assert Path(delta).stat().st_size < 1000
    assert p.need_bytes == len(BIG2) + Path(delta).stat().st_size
    # the delta really rebuilds the new bytes from the base
    out = subprocess.run(["zstd", "-q", "-d", "--long=31", f"--patch-from={build.object_path(sha(BIG))}", delta,
                          "-c"], capture_output=True, check=True).stdout
    assert out == BIG2


def test_patch_is_computed_once_per_pair(tmp_path):
    store(BIG)
    art = art_of(tmp_path, {"server": BIG2})
    p1 = transfer.plan(art, {}, [rel_("v1", {"server": BIG})], True)
    delta = Path(p1.members[0][1])
    delta.write_bytes(b"marker")  # a recomputed delta would replace this
    p2 = transfer.plan(art, {}, [rel_("v1", {"server": BIG})], True)
    assert Path(p2.members[0][1]) == delta and delta.read_bytes() == b"marker"
    assert delta.name == f"{sha(BIG)}-{sha(BIG2)}.zst"


@pytest.mark.parametrize("why", ["small", "no-zstd", "not-stored", "failed-base", "no-such-path"])
def test_full_otherwise(tmp_path, why):
    new = BIG2[:-1] if why == "small" else BIG2
    base = BIG[: len(new)] if why == "small" else BIG
    if why != "not-stored":
        store(base)
    art = art_of(tmp_path, {"server": new})
    held = [rel_("v1", {"other" if why == "no-such-path" else "server": base}, failed=why == "failed-base")]
    p = transfer.plan(art, {}, held, zstd=why != "no-zstd")
    assert p.counts == {"linked": 0, "patched": 0, "full": 1}, why
    assert p.steps == ["mode\tserver\t0755", *MODES] and p.members[0][0] == "server"


def test_patch_against_another_retained_release_when_the_live_ones_bytes_are_not_stored(tmp_path):
    store(BIG)
    art = art_of(tmp_path, {"server": BIG2})
    held = [rel_("v2", {"server": BIG[::-1]}), rel_("v1", {"server": BIG})]  # live v2's bytes not stored
    assert transfer.plan(art, {}, held, True).counts["patched"] == 1


def untar(data: bytes, compression: str) -> dict[str, tuple[bytes, int, int]]:
    raw = subprocess.run(["zstd", "-d", "-c"] if compression == "zstd" else ["gzip", "-d", "-c"], input=data,
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: (tar.extractfile(m).read(), m.mode, m.uid) for m in tar.getmembers()}


@pytest.mark.parametrize("compression, magic", [("zstd", b"\x28\xb5\x2f\xfd"), ("gzip", b"\x1f\x8b")])
def test_stream_is_a_compressed_tar_of_the_members(tmp_path, compression, magic):
    art = art_of(tmp_path, {"server": BIG, "error-pages/a b.html": b"page"})
    p = transfer.plan(art, {"version": "v1", "files": {}}, [], compression == "zstd")
    chunks = transfer.stream(p, compression)
    data = b"".join(chunks())
    assert data[:4].startswith(magic)
    members = untar(data, compression)
    assert members == {
        "server": (BIG, 0o755, 0), "error-pages/a b.html": (b"page", 0o644, 0),
        paths.SUMS: (art.sums().encode(), 0o644, 0),
        paths.MANIFEST: (json.dumps({"version": "v1", "files": {}}, separators=(",", ":")).encode(), 0o644, 0)}
    assert untar(b"".join(chunks()), compression) == members  # replayable (ssh.run's retry sends it again)


def test_node_release_from_manifest():
    r = NodeRelease.from_manifest("v1", '{"commit":"abc","createdAt":12.5,"files":{"s":"d"}}', True)
    assert r == NodeRelease("v1", "abc", 12.5, {"s": "d"}, True)
    for broken, why in (("garbage", "not JSON"), ('{"createdAt":null}', "no commit"),
                        ('{"commit":"abc","createdAt":null,"files":{}}', "no createdAt"),
                        ('{"commit":"abc","createdAt":1,"files":{"s":1}}', "no files")):
        with pytest.raises(ValueError, match=why):  # never a release of commit "" (base.releases_of names it)
            NodeRelease.from_manifest("v2", broken, False)
