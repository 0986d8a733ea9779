"""Issue 5: Release built natively at the pinned commit, verified on the node, immutable, N kept."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.support import AppRepo, run_up


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


def test_release_layout_sha256_and_same_pin_sends_nothing(make_nodes, make_deploy, versions, engine):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions)
    run_up(d)
    rel = node.release_root / "releases" / "v1"
    manifest = json.loads((rel / ".sando" / "manifest.json").read_text())
    assert manifest["commit"] == versions.commit("v1")
    local = Path(engine["SANDO_CACHE_DIR"]) / "builds" / versions.commit("v1") / "src" / "server/target/release"
    out = d.node_out(node)
    for b in ("makenotwork", "mnw-admin"):
        assert (rel / b).stat().st_mode & 0o111
        assert sha(rel / b) == sha(local / b) == out["sha256"][b] == manifest["files"][b]
    pages = sorted(p.name for p in (rel / "error-pages").iterdir())
    assert pages == ["404.html", "502.html", "503.html"]
    assert (rel / "error-pages" / "503.html").read_text() == \
        versions.git("show", "v1:server/deploy/error-pages/503.html")
    assert out["uploadedBytes"] > 1000
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", ".sando/SHA256SUMS"], cwd=rel, check=True)

    # the same pin again: 0 changes, no bytes, even after the local build cache is wiped
    shutil.rmtree(Path(engine["SANDO_CACHE_DIR"]) / "builds" / versions.commit("v1"))
    res, changed = run_up(d)
    assert changed == {} and set(res.summary.resource_changes) == {"same"}
    assert not (Path(engine["SANDO_CACHE_DIR"]) / "builds" / versions.commit("v1")).exists()  # nothing rebuilt

    # a brand-new stack (no state) meeting the release already on the node reuses it: 0 bytes
    d2 = make_deploy([node], repo=versions)
    run_up(d2)
    assert d2.node_out(node)["uploadedBytes"] == 0
    assert not (Path(engine["SANDO_CACHE_DIR"]) / "builds" / versions.commit("v1")).exists()


def test_keep_releases_never_prunes_live_or_rollback_target(make_nodes, make_deploy, versions):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions, keepReleases=2)
    for v in ("v1", "v2", "v3", "v4"):
        d.set(version=v)
        run_up(d)
    assert releases(node) == ["v3", "v4"]  # exactly the 2 newest

    d.set(version="v3")  # rollback: v3 is live and the oldest
    run_up(d)
    assert releases(node) == ["v3", "v4"]
    d.set(keepReleases=1)  # even a window of 1 keeps the live one and the rollback target
    run_up(d)
    assert releases(node) == ["v3", "v4"]
    assert os.readlink(node.release_root / "current") == "releases/v3"

    d.set(keepReleases=2, version="v5")
    run_up(d)
    # v5 live, v3 is the rollback target (live before), v4 among the 2 newest
    assert releases(node) == ["v3", "v4", "v5"]
    d.set(version="v5", keepReleases=1)
    run_up(d)
    assert releases(node) == ["v3", "v5"]

    # never anything sando did not make
    foreign = node.release_root / "releases" / "handmade"
    foreign.mkdir()
    d.set(version="v4")
    run_up(d)
    assert "handmade" in releases(node)


def test_ssh_killed_during_upload_leaves_no_release(make_nodes, make_deploy, tmp_path):
    repo = AppRepo(tmp_path / "bigapp")
    big = repo.path / "server/deploy/error-pages/big.bin"
    big.write_bytes(os.urandom(96 * 1024 * 1024))  # long enough an upload to interrupt
    repo.version("v2")
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=repo)
    run_up(d)  # v1 live
    releases_dir = node.release_root / "releases"
    state_dir = Path(node.privateKeyPath).parent
    sshd_cmd = ["/usr/sbin/sshd", "-D", "-f", str(state_dir / "sshd_config"), "-E", str(state_dir / "sshd.log")]

    killed = threading.Event()

    def kill_when_staging_appears():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(p.name.startswith(".staging-v2-") for p in releases_dir.iterdir()):
                # the listener and every session it forked (the upload's sftp session too)
                subprocess.run(["pkill", "-KILL", "-f", str(state_dir / "sshd_config")])
                subprocess.run(["pkill", "-KILL", "-f", f"sshd: {node.user}"])
                killed.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_when_staging_appears)
    watcher.start()
    d.set(version="v2")
    with pytest.raises(auto.CommandError):
        d.stack.up(color="never")
    watcher.join()
    assert killed.is_set()
    assert not (releases_dir / "v2").exists()
    assert os.readlink(node.release_root / "current") == "releases/v1"
    assert any(p.name.startswith(".staging-v2-") for p in releases_dir.iterdir())  # leftovers, cleaned next run

    subprocess.Popen(sshd_cmd, start_new_session=True)  # the node comes back (stop kills it by its config path)
    time.sleep(0.5)
    run_up(d)
    assert releases(node) == ["v1", "v2"]  # staging leftovers gone
    assert node.served()["version"] == "v2"


@pytest.mark.parametrize("change,key", [
    ({"version": "a/b"}, "sando:version"),
    ({"version": ".."}, "sando:version"),
    ({"version": "v 1"}, "sando:version"),
    ({"version": "v1;rm"}, "sando:version"),
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
    with pytest.raises(auto.CommandError) as err:
        d.stack.preview(color="never")
    assert key in str(err.value)
    assert not (node.release_root / "releases").exists()
    assert node.systemctl_log() == []


def test_rotated_ssh_key_is_used_for_later_pruning(make_nodes, make_deploy, versions, tmp_path):
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=versions, keepReleases=1)
    run_up(d)
    d.set(version="v2")
    run_up(d)
    log_before = node.systemctl_log()
    # rotate: a new key pair replaces the old one on the node and in the stack
    new_key = tmp_path / "rotated"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)], check=True)
    auth = Path(node.privateKeyPath).parent / "authorized_keys"
    auth.write_text(new_key.with_suffix(".pub").read_text())
    d.set_secret("sshPrivateKey", new_key.read_text())
    res, changed = run_up(d)
    assert res.summary.result == "succeeded"
    assert node.systemctl_log() == log_before  # nothing re-ran: no reload, no restart
    assert releases(node) == ["v1", "v2"]
    d.set(version="v3")  # v1 falls out of the window: pruned with the new key
    run_up(d)
    assert releases(node) == ["v2", "v3"]
