"""sando_components/commands.py: every builder pinned by its exact string (like Kamal's
test/commands/*), shell-injection checks by running the commands under /bin/sh with
recording stand-ins for every external tool, and the local-safe ones run for real.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import threading
from pathlib import Path

import pytest

from sando_components import commands as c
from sando_components import paths
from sando_components.paths import NodePaths

# shlex.quote's spelling of a single quote inside a quoted word: close, "'", reopen
Q = "'\"'\"'"
WEIRD_ROOT = "/tmp/a b/it's"
PROD = NodePaths("", "/opt/makenotwork")
WEIRD = NodePaths(WEIRD_ROOT, "/opt/makenotwork")


# --- exact strings ------------------------------------------------------------------------------


def test_mkdir_p():
    assert c.mkdir_p(PROD.releases) == "mkdir -p /opt/makenotwork/releases"
    assert c.mkdir_p(WEIRD.releases, "/x") == f"mkdir -p '/tmp/a b/it{Q}s/opt/makenotwork/releases' /x"


def test_chown_r():
    assert c.chown_r("makenotwork:makenotwork", "/opt/makenotwork") == \
        "chown -R makenotwork:makenotwork /opt/makenotwork"
    assert c.chown_r("mnw", WEIRD.at("/opt/makenotwork")) == f"chown -R mnw '/tmp/a b/it{Q}s/opt/makenotwork'"


def test_install_file():
    assert c.install_file("/etc/caddy/Caddyfile.sando-tmp-0a1b2c3d", "/etc/caddy/Caddyfile", 0o644) == (
        "chmod 0644 /etc/caddy/Caddyfile.sando-tmp-0a1b2c3d && "
        "mv -f /etc/caddy/Caddyfile.sando-tmp-0a1b2c3d /etc/caddy/Caddyfile"
    )
    dest = WEIRD.at(paths.FIREWALL_SCRIPT)
    assert c.install_file(dest + ".sando-tmp-1", dest, 0o755) == (
        f"chmod 0755 '/tmp/a b/it{Q}s/usr/local/sbin/setup-firewall.sh.sando-tmp-1' && "
        f"mv -f '/tmp/a b/it{Q}s/usr/local/sbin/setup-firewall.sh.sando-tmp-1' "
        f"'/tmp/a b/it{Q}s/usr/local/sbin/setup-firewall.sh'"
    )


def test_remove_files():
    assert c.remove_files("/etc/cron.d/makenotwork-backup") == "rm -f /etc/cron.d/makenotwork-backup"
    assert c.remove_files(WEIRD.at(paths.CADDYFILE), "/b") == f"rm -f '/tmp/a b/it{Q}s/etc/caddy/Caddyfile' /b"


def test_file_state():
    # sha256sum reads the file on stdin, so its output ("<hash>  -") never holds an escaped file name
    assert c.file_state("/etc/caddy/Caddyfile") == (
        "if [ -f /etc/caddy/Caddyfile ]; then "
        "sha256sum < /etc/caddy/Caddyfile && stat -c %a /etc/caddy/Caddyfile; fi"
    )
    w = f"'/tmp/a b/it{Q}s/etc/caddy/Caddyfile'"
    assert c.file_state(WEIRD.at(paths.CADDYFILE)) == f"if [ -f {w} ]; then sha256sum < {w} && stat -c %a {w}; fi"


def test_systemctl_and_daemon_reload():
    assert c.systemctl("reload", "caddy") == "systemctl reload caddy"
    assert c.systemctl("reload-or-restart", "makenotwork") == "systemctl reload-or-restart makenotwork"
    assert c.systemctl("restart", "a b") == "systemctl restart 'a b'"
    assert c.daemon_reload() == "systemctl daemon-reload"


def test_verify_sums():
    assert c.verify_sums(PROD.release("v1")) == (
        "cd /opt/makenotwork/releases/v1 && sha256sum --check --strict --quiet .sando/SHA256SUMS"
    )
    assert c.verify_sums(WEIRD.release("v1")) == (
        f"cd '/tmp/a b/it{Q}s/opt/makenotwork/releases/v1' && sha256sum --check --strict --quiet .sando/SHA256SUMS"
    )


def test_finalize_release():
    assert c.finalize_release(PROD.staging("v1", "0a1b2c3d"), PROD.release("v1")) == (
        "test ! -e /opt/makenotwork/releases/v1 && "
        "mv -T /opt/makenotwork/releases/.staging-v1-0a1b2c3d /opt/makenotwork/releases/v1"
    )
    assert c.finalize_release(WEIRD.staging("v1", "ff"), WEIRD.release("v1")) == (
        f"test ! -e '/tmp/a b/it{Q}s/opt/makenotwork/releases/v1' && "
        f"mv -T '/tmp/a b/it{Q}s/opt/makenotwork/releases/.staging-v1-ff' "
        f"'/tmp/a b/it{Q}s/opt/makenotwork/releases/v1'"
    )


def test_clean_staging():
    assert c.clean_staging(PROD.releases) == (
        "find /opt/makenotwork/releases -mindepth 1 -maxdepth 1 -type d -name '.staging-*' -exec rm -rf '{}' +"
    )
    assert c.clean_staging(WEIRD.releases) == (
        f"find '/tmp/a b/it{Q}s/opt/makenotwork/releases' -mindepth 1 -maxdepth 1 -type d "
        "-name '.staging-*' -exec rm -rf '{}' +"
    )


def test_cat():
    assert c.cat(PROD.manifest("v1")) == "cat /opt/makenotwork/releases/v1/.sando/manifest.json"
    assert c.cat(WEIRD.manifest("v1")) == f"cat '/tmp/a b/it{Q}s/opt/makenotwork/releases/v1/.sando/manifest.json'"


def test_read_link():
    assert c.read_link(PROD.current) == "readlink /opt/makenotwork/current || true"
    assert c.read_link(WEIRD.previous) == f"readlink '/tmp/a b/it{Q}s/opt/makenotwork/previous' || true"


def test_switch_link():
    assert c.switch_link(PROD.current, PROD.link_target("v1")) == (
        "ln -sfn releases/v1 /opt/makenotwork/current.sando-tmp && "
        "mv -T /opt/makenotwork/current.sando-tmp /opt/makenotwork/current"
    )
    assert c.switch_link(PROD.error_pages, "current/error-pages") == (
        "ln -sfn current/error-pages /opt/makenotwork/error-pages.sando-tmp && "
        "mv -T /opt/makenotwork/error-pages.sando-tmp /opt/makenotwork/error-pages"
    )
    assert c.switch_link(WEIRD.current, WEIRD.link_target("v2")) == (
        f"ln -sfn releases/v2 '/tmp/a b/it{Q}s/opt/makenotwork/current.sando-tmp' && "
        f"mv -T '/tmp/a b/it{Q}s/opt/makenotwork/current.sando-tmp' '/tmp/a b/it{Q}s/opt/makenotwork/current'"
    )


def test_remove_release():
    assert c.remove_release(PROD.release("v0")) == (
        "test -f /opt/makenotwork/releases/v0/.sando/manifest.json && rm -rf -- /opt/makenotwork/releases/v0"
    )
    assert c.remove_release(WEIRD.release("v0")) == (
        f"test -f '/tmp/a b/it{Q}s/opt/makenotwork/releases/v0/.sando/manifest.json' && "
        f"rm -rf -- '/tmp/a b/it{Q}s/opt/makenotwork/releases/v0'"
    )


def test_http_probe():
    assert c.http_probe("http://127.0.0.1:3000/", timeout=3) == "curl -fsS --max-time 3 http://127.0.0.1:3000/"
    assert c.http_probe("http://127.0.0.1:3000/health?a=1&b=2", timeout=2.5) == (
        "curl -fsS --max-time 2.5 'http://127.0.0.1:3000/health?a=1&b=2'"
    )


def test_restart_warning():
    assert c.restart_warning("http://127.0.0.1:3000/api/internal/restart-warning", 30, timeout=10) == (
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H @- "
        "-H 'Content-Type: application/json' --data '{\"seconds\": 30}' "
        "http://127.0.0.1:3000/api/internal/restart-warning"
    )


def test_restart_warning_takes_no_token():
    """The bearer token must never reach argv: the builder cannot even be given one."""
    assert list(inspect.signature(c.restart_warning).parameters) == ["url", "seconds", "timeout"]
    assert "@-" in c.restart_warning("http://h/", 1, 1).split()


# --- injection: run under /bin/sh with recording stand-ins for every tool ---------------------------

EVIL = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "x; touch PWNED",
    "x' ; touch PWNED ; '",
    'x" ; touch PWNED ; "',
    "x\ntouch PWNED",
    "x && touch PWNED || x",
    "x | touch PWNED",
    "$HOME",
    "*",
    "~",
    "it's a b",
    "-rf",
]

TOOLS = ["mkdir", "chown", "chmod", "mv", "rm", "sha256sum", "stat", "systemctl", "find", "cat", "readlink",
         "ln", "curl", "touch"]

RECORDER = r"""#!/bin/sh
{ printf '%s' "${0##*/}"; for a in "$@"; do printf '\037%s' "$a"; done; printf '\036'; } >> "$ARGV_LOG"
"""


@pytest.fixture
def recorder(tmp_path):
    """run(cmd, cwd) -> list of argv lists the shell actually called (only stand-ins are on PATH)."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    for tool in TOOLS:
        p = fakebin / tool
        p.write_text(RECORDER)
        p.chmod(0o755)
    log = tmp_path / "argv.log"

    def run(cmd: str, cwd: Path) -> list[list[str]]:
        log.write_bytes(b"")
        env = {"PATH": str(fakebin), "ARGV_LOG": str(log), "HOME": "/nonexistent-home"}
        res = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
        assert res.returncode == 0, (cmd, res.stderr)
        records = log.read_text().split("\036")
        assert records[-1] == ""
        return [r.split("\037") for r in records[:-1]]

    return run


@pytest.mark.parametrize("evil", EVIL)
def test_no_argument_can_inject_shell(recorder, tmp_path, evil):
    work = tmp_path / "work"
    work.mkdir()
    base = str(work / evil)  # a path whose last component is hostile
    os.makedirs(base)
    os.makedirs(os.path.join(base, paths.MANIFEST_DIR))
    Path(base, paths.MANIFEST).write_text("{}")
    f = os.path.join(base, "file")
    Path(f).write_text("x")
    url = f"http://127.0.0.1:3000/{evil}"
    link = os.path.join(base, "current")
    cases = [
        (c.mkdir_p(base, f), [["mkdir", "-p", base, f]]),
        (c.chown_r(evil, base), [["chown", "-R", evil, base]]),
        (c.install_file(f, base + "/dest", 0o644), [["chmod", "0644", f], ["mv", "-f", f, base + "/dest"]]),
        (c.remove_files(f, base), [["rm", "-f", f, base]]),
        (c.file_state(f), [["sha256sum"], ["stat", "-c", "%a", f]]),  # sha256sum reads f on stdin
        (c.systemctl("restart", evil), [["systemctl", "restart", evil]]),
        (c.daemon_reload(), [["systemctl", "daemon-reload"]]),
        (c.verify_sums(base), [["sha256sum", "--check", "--strict", "--quiet", paths.SUMS]]),
        (c.finalize_release(base, base + "-final"), [["mv", "-T", base, base + "-final"]]),
        (c.clean_staging(base), [["find", base, "-mindepth", "1", "-maxdepth", "1", "-type", "d", "-name",
                                  ".staging-*", "-exec", "rm", "-rf", "{}", "+"]]),
        (c.cat(f), [["cat", f]]),
        (c.read_link(link), [["readlink", link]]),
        (c.switch_link(link, evil), [["ln", "-sfn", evil, link + ".sando-tmp"],
                                     ["mv", "-T", link + ".sando-tmp", link]]),
        (c.remove_release(base), [["rm", "-rf", "--", base]]),
        (c.http_probe(url, 3), [["curl", "-fsS", "--max-time", "3", url]]),
        (c.restart_warning(url, 7, 10), [["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                                          "10", "-X", "POST", "-H", "@-", "-H", "Content-Type: application/json",
                                          "--data", '{"seconds": 7}', url]]),
    ]
    for cmd, expected in cases:
        assert recorder(cmd, work) == expected, cmd
    assert not (work / "PWNED").exists()
    assert not list(tmp_path.rglob("PWNED"))


# --- real runs with /bin/sh and coreutils in a tmp dir ---------------------------------------------


def sh(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def node(tmp_path) -> NodePaths:
    """A node root with a space and a quote in it, releases v1 and v2 laid out."""
    np = NodePaths(str(tmp_path / "a b" / "it's"), "/opt/makenotwork")
    for v in ("v1", "v2"):
        pages = Path(np.release(v), paths.ERROR_PAGES)
        pages.mkdir(parents=True)
        (pages / "404.html").write_text(f"404 of {v}")
    return np


def test_switch_link_creates_then_replaces_symlink(node):
    assert sh(c.switch_link(node.current, node.link_target("v1"))).returncode == 0
    assert os.readlink(node.current) == "releases/v1"
    assert sh(c.switch_link(node.error_pages, "current/error-pages")).returncode == 0
    assert Path(node.error_pages, "404.html").read_text() == "404 of v1"

    res = sh(c.switch_link(node.current, node.link_target("v2")))
    assert res.returncode == 0, res.stderr
    assert os.path.islink(node.current) and os.readlink(node.current) == "releases/v2"
    assert Path(node.error_pages, "404.html").read_text() == "404 of v2"
    # mv -T: the new link replaced the old one instead of being moved *into* releases/v1
    assert sorted(os.listdir(node.release("v1"))) == [paths.ERROR_PAGES]
    assert not os.path.lexists(node.current + ".sando-tmp")


def test_switch_link_is_atomic_for_readers(node):
    """A reader polling `current` while it flips 100 times never sees it missing or dangling."""
    sh(c.switch_link(node.current, node.link_target("v1")))
    flip = " && ".join([c.switch_link(node.current, node.link_target("v2")),
                        c.switch_link(node.current, node.link_target("v1"))])
    loop = f"i=0; while [ $i -lt 50 ]; do {flip} || exit 1; i=$((i+1)); done"
    bad, reads, done = [], [0], threading.Event()

    def reader():
        while not done.is_set():
            reads[0] += 1
            try:
                target = os.readlink(node.current)
            except OSError as exc:
                bad.append(repr(exc))
                continue
            if target not in ("releases/v1", "releases/v2"):
                bad.append(target)

    t = threading.Thread(target=reader)
    t.start()
    try:
        res = sh(loop)
    finally:
        done.set()
        t.join()
    assert res.returncode == 0, res.stderr
    assert reads[0] > 0
    assert bad == []
    assert os.readlink(node.current) == "releases/v1"


def test_finalize_release_moves_staging_into_place(node):
    staging = node.staging("v3", "abcd")
    os.makedirs(staging)
    Path(staging, "makenotwork").write_text("bin")
    assert sh(c.finalize_release(staging, node.release("v3"))).returncode == 0
    assert Path(node.release("v3"), "makenotwork").read_text() == "bin"
    assert not os.path.exists(staging)


@pytest.mark.parametrize("final_is_empty", [False, True])
def test_finalize_release_refuses_existing_final(node, final_is_empty):
    staging = node.staging("v1", "abcd")
    os.makedirs(staging)
    Path(staging, "makenotwork").write_text("new")
    final = node.release("v1")
    if final_is_empty:  # `mv -T` alone would happily replace an empty dir
        os.rename(final, final + ".old")
        os.makedirs(final)
    before = sorted(os.listdir(final))
    res = sh(c.finalize_release(staging, final))
    assert res.returncode != 0
    assert sorted(os.listdir(final)) == before
    assert Path(staging, "makenotwork").read_text() == "new"


def test_clean_staging_removes_only_staging_dirs(node):
    rel = node.releases
    for d in (".staging-v3-0a1b", ".staging-v4-ffff", "v1/.staging-nested", "staging-v5", ".stagingX"):
        os.makedirs(os.path.join(rel, d), exist_ok=True)
    Path(rel, ".staging-a-file").write_text("not a dir")
    assert sh(c.clean_staging(rel)).returncode == 0
    assert sorted(os.listdir(rel)) == [".staging-a-file", ".stagingX", "staging-v5", "v1", "v2"]
    assert os.path.isdir(os.path.join(rel, "v1", ".staging-nested"))


def test_clean_staging_on_empty_dir_succeeds(tmp_path):
    assert sh(c.clean_staging(str(tmp_path))).returncode == 0


def test_remove_release_refuses_dir_without_manifest(node):
    res = sh(c.remove_release(node.release("v1")))
    assert res.returncode != 0
    assert os.path.isdir(node.release("v1"))
    # a directory named like the manifest is not a manifest either
    os.makedirs(node.manifest("v1"))
    assert sh(c.remove_release(node.release("v1"))).returncode != 0
    assert os.path.isdir(node.release("v1"))


def test_remove_release_removes_sando_release(node):
    os.makedirs(os.path.dirname(node.manifest("v2")))
    Path(node.manifest("v2")).write_text("{}")
    assert sh(c.remove_release(node.release("v2"))).returncode == 0
    assert not os.path.exists(node.release("v2"))
    assert os.path.isdir(node.release("v1"))


def _write_sums(release: str, files: dict[str, bytes]) -> None:
    lines = []
    for rel, data in files.items():
        p = Path(release, rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
    Path(release, paths.SUMS).parent.mkdir(parents=True, exist_ok=True)
    Path(release, paths.SUMS).write_text("".join(lines))


def test_verify_sums_for_real(node):
    rel = node.release("v1")
    _write_sums(rel, {"makenotwork": b"bin", "error-pages/404.html": b"page"})
    ok = sh(c.verify_sums(rel))
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr

    Path(rel, "makenotwork").write_bytes(b"bin, tampered")
    assert sh(c.verify_sums(rel)).returncode != 0


def test_verify_sums_fails_on_missing_file_and_missing_dir(node):
    rel = node.release("v1")
    _write_sums(rel, {"makenotwork": b"bin", "error-pages/404.html": b"page"})
    os.remove(Path(rel, "error-pages/404.html"))
    assert sh(c.verify_sums(rel)).returncode != 0
    assert sh(c.verify_sums(node.release("nope"))).returncode != 0


def test_verify_sums_fails_on_malformed_sums(node):
    rel = node.release("v1")
    _write_sums(rel, {"makenotwork": b"bin"})
    with open(Path(rel, paths.SUMS), "a") as fh:
        fh.write("this is not a checksum line\n")
    assert sh(c.verify_sums(rel)).returncode != 0


def test_file_state_for_real(tmp_path):
    missing = tmp_path / "it's a b" / "nope"
    res = sh(c.file_state(str(missing)))
    assert res.returncode == 0 and res.stdout == ""

    f = tmp_path / "it's a b.conf"
    f.write_bytes(b"hello\n")
    f.chmod(0o640)
    res = sh(c.file_state(str(f)))
    assert res.returncode == 0
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert res.stdout == f"{digest}  -\n640\n"  # stdin: no file name in the output
    # the provider's parse (providers.RemoteFileProvider.read)
    assert res.stdout.split()[0] == digest
    assert int(res.stdout.split()[-1], 8) == 0o640

    res = sh(c.file_state(str(tmp_path)))  # a directory is not the file
    assert res.returncode == 0 and res.stdout == ""


@pytest.mark.parametrize("name", ["back\\slash.conf", "new\nline.conf", "it's a b.conf"])
def test_file_state_first_field_is_the_digest(tmp_path, name):
    """`sha256sum FILE` prefixes its line with a backslash (and escapes the name) for a name holding
    '\\' or a newline; read from stdin the first field is always the bare digest."""
    f = tmp_path / name
    f.write_bytes(b"data")
    f.chmod(0o600)
    res = sh(c.file_state(str(f)))
    assert res.returncode == 0, res.stderr
    digest, mode = res.stdout.split()[0], int(res.stdout.split()[-1], 8)  # the provider's parse
    assert digest == hashlib.sha256(b"data").hexdigest()
    assert mode == 0o600


def test_install_file_for_real(tmp_path):
    dest = tmp_path / "it's a b" / "setup-firewall.sh"
    dest.parent.mkdir()
    dest.write_text("old")
    tmp = Path(str(dest) + ".sando-tmp-01")
    tmp.write_text("new")
    assert sh(c.install_file(str(tmp), str(dest), 0o755)).returncode == 0
    assert dest.read_text() == "new"
    assert dest.stat().st_mode & 0o7777 == 0o755
    assert not tmp.exists()


def test_read_link_for_real(node):
    res = sh(c.read_link(node.current))
    assert res.returncode == 0 and res.stdout == ""
    os.symlink("releases/v2", node.current)
    assert sh(c.read_link(node.current)).stdout == "releases/v2\n"
