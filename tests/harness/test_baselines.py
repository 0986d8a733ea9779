"""Tests for tests/baselines.py without SSH: the command line and the remote script by exact
string, the tar, and the script's behaviour run by a local sh (stub systemctl and curl) behind
a stand-in `ssh` on PATH. Run: python3 -m pytest -q tests/harness/test_baselines.py (~3 s)."""
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from tests.baselines import DeployError, minimal_deploy, remote_script, ssh_argv, tar_release

SCRIPT_V2 = (
    "set -e; cd /opt/makenotwork; "
    "mkdir -p releases/v2; "
    "tar -x --no-same-owner -C releases/v2; "
    "ln -sfn releases/v2 current.tmp && mv -T current.tmp current || exit 1; "
    "systemctl reload-or-restart makenotwork; "
    "end=$(($(date +%s) + 30)); "
    "until curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:3000/ 2>/dev/null; do "
    "if [ \"$(date +%s)\" -ge \"$end\" ]; then "
    "echo 'health check failed: http://127.0.0.1:3000/ not 2xx after 30s' >&2; exit 1; fi; "
    "sleep 0.1; done"
)


def test_ssh_argv_exact():
    assert ssh_argv("127.0.0.2", 2222, "sandonode1", "/s/node1/id_ed25519", "/s/known_hosts", "CMD") == [
        "ssh", "-F", "/dev/null", "-T", "-i", "/s/node1/id_ed25519", "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/s/known_hosts",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15",
        "-p", "2222", "sandonode1@127.0.0.2", "CMD"]


def test_ssh_argv_host_key_alias_for_a_proxied_port():
    argv = ssh_argv("127.0.0.1", 40001, "u", Path("/k"), Path("/kh"), "CMD", host_key_alias="[127.0.0.2]:2222")
    assert argv[-6:] == ["-o", "HostKeyAlias=[127.0.0.2]:2222", "-p", "40001", "u@127.0.0.1", "CMD"]


def test_remote_script_exact():
    assert remote_script("/opt/makenotwork", "v2", "makenotwork", "http://127.0.0.1:3000/") == SCRIPT_V2


def test_remote_script_quotes_paths_and_urls():
    s = remote_script("/tmp/node 1/opt/makenotwork", "v2.1+rc_1", "mnw", "http://h/$(x)", health_timeout=2.5,
                      poll_interval=0.05)
    assert s.startswith("set -e; cd '/tmp/node 1/opt/makenotwork'; mkdir -p releases/v2.1+rc_1; ")
    assert "curl -fsS -o /dev/null --max-time 2 'http://h/$(x)' 2>/dev/null" in s
    assert "echo 'health check failed: http://h/$(x) not 2xx after 3s' >&2" in s
    assert "end=$(($(date +%s) + 3)); " in s and "sleep 0.05; done" in s


@pytest.mark.parametrize("version", ["", "../x", "a/b", "-rf", "v 2", ".hidden"])
def test_remote_script_rejects_bad_versions(version):
    with pytest.raises(ValueError):
        remote_script("/opt/m", version, "svc", "http://h/")


def test_remote_script_rejects_bad_service():
    with pytest.raises(ValueError):
        remote_script("/opt/m", "v1", "svc; reboot", "http://h/")


def make_release(tmp_path: Path) -> dict[str, Path]:
    b = tmp_path / "build"
    (b / "error-pages").mkdir(parents=True, exist_ok=True)
    (b / "error-pages" / "503.html").write_text("<p>down</p>\n")
    exe = b / "makenotwork"
    exe.write_text("#!/bin/sh\necho server\n")
    exe.chmod(0o755)
    admin = b / "mnw-admin"
    admin.write_text("#!/bin/sh\necho admin\n")
    admin.chmod(0o750)
    return {"makenotwork": exe, "mnw-admin": admin, "error-pages": b / "error-pages"}


def test_tar_release_names_modes_owner(tmp_path):
    data = tar_release(make_release(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = {m.name: m for m in t.getmembers()}
        assert sorted(members) == ["error-pages", "error-pages/503.html", "makenotwork", "mnw-admin"]
        assert stat.S_IMODE(members["makenotwork"].mode) == 0o755
        assert stat.S_IMODE(members["mnw-admin"].mode) == 0o750
        assert members["error-pages"].isdir()
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())
        assert t.extractfile("error-pages/503.html").read() == b"<p>down</p>\n"


@pytest.mark.parametrize("name", ["/abs", "../up", ""])
def test_tar_release_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError):
        tar_release({name: make_release(tmp_path)["makenotwork"]})


# --- the script's behaviour, run locally by a stand-in ssh -------------------------------------

FAKE_SSH = """#!/bin/sh
# stand-in for ssh: record argv, drop everything but the remote command (the last
# argument) and run it with sh, stdin passed through, like sshd's `$SHELL -c`.
printf '%s\\n' "$@" > "$FAKE_SSH_LOG"
for last; do :; done
exec sh -c "$last"
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> "$FAKE_SYSTEMCTL_LOG"
"""
# fails the first $CURL_FAILS calls, then succeeds
FAKE_CURL = """#!/bin/sh
n=$(cat "$CURL_COUNT" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$CURL_COUNT"
[ "$n" -gt "$CURL_FAILS" ]
"""


@pytest.fixture
def fake_node(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("systemctl", FAKE_SYSTEMCTL), ("curl", FAKE_CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    monkeypatch.setenv("FAKE_SYSTEMCTL_LOG", str(tmp_path / "systemctl.log"))
    monkeypatch.setenv("CURL_COUNT", str(tmp_path / "curl.count"))
    monkeypatch.setenv("CURL_FAILS", "2")
    root = tmp_path / "node root" / "opt" / "makenotwork"
    root.mkdir(parents=True)
    return tmp_path, root


def deploy(tmp_path, root, version, **kw):
    return minimal_deploy("127.0.0.2", 2222, "deploy", tmp_path / "key", tmp_path / "known_hosts", str(root),
                          version, make_release(tmp_path), "makenotwork", "http://127.0.0.1:3000/", **kw)


def test_minimal_deploy_runs_the_steps_in_one_invocation(fake_node, monkeypatch):
    tmp_path, root = fake_node
    took = deploy(tmp_path, root, "v1")
    assert isinstance(took, float) and 0.15 <= took < 10  # two failed health polls, 0.1 s apart
    argv = (tmp_path / "ssh.log").read_text().splitlines()
    assert argv[:3] == ["-F", "/dev/null", "-T"] and argv[-2] == "deploy@127.0.0.2"
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in argv
    assert os.readlink(root / "current") == "releases/v1"
    assert (root / "current" / "makenotwork").read_text() == "#!/bin/sh\necho server\n"
    assert os.access(root / "current" / "makenotwork", os.X_OK)
    assert (root / "current" / "error-pages" / "503.html").exists()
    assert not (root / "current.tmp").exists() and not (root / "current.tmp").is_symlink()
    assert (tmp_path / "systemctl.log").read_text() == "reload-or-restart makenotwork\n"
    assert (tmp_path / "curl.count").read_text().strip() == "3"

    monkeypatch.setenv("CURL_FAILS", "0")
    deploy(tmp_path, root, "v2")
    assert os.readlink(root / "current") == "releases/v2"
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["v1", "v2"]


def test_minimal_deploy_raises_with_remote_stderr(fake_node, monkeypatch):
    tmp_path, root = fake_node
    monkeypatch.setenv("CURL_FAILS", "1000")
    with pytest.raises(DeployError, match=r"exit 1\): health check failed: http://127.0.0.1:3000/ not 2xx after 1s"):
        deploy(tmp_path, root, "v1", health_timeout=1)
    assert os.readlink(root / "current") == "releases/v1"  # no rollback: this is the floor

    with pytest.raises(DeployError) as e:
        deploy(tmp_path, tmp_path / "missing", "v2")
    assert e.value.returncode != 0 and "missing" in e.value.stderr
