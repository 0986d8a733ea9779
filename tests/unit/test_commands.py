"""sando_components/commands.py: the small bootstrap commands pinned by their exact string (like
Kamal's test/commands/*), the parameters chosen for the node-side steps (sh/*.sh) pinned by exact
value, the library's helpers (relink, prune, mark_failed) and write-file run for real, then
everything run under /bin/sh with recording stand-ins for every external tool and hostile values
in every argument (nothing may reach a shell unquoted).

The composed node scripts run for real in test_probe.py, test_receive.py, test_switch.py and
test_gate.py.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sando_components import commands as c
from sando_components import paths, scripts, transfer
from sando_components.scripts import Report

# shlex.quote's spelling of a single quote inside a quoted word: close, "'", reopen
Q = "'\"'\"'"
W = "/tmp/a b/it's"  # a weird path
WQ = f"'/tmp/a b/it{Q}s'"


# --- exact strings ------------------------------------------------------------------------------


def test_mkdir_p():
    assert c.mkdir_p("/opt/makenotwork/releases") == "mkdir -p /opt/makenotwork/releases"
    assert c.mkdir_p(W, "/x") == f"mkdir -p {WQ} /x"


def test_chown_r():
    assert c.chown_r("makenotwork:makenotwork", "/opt/makenotwork") == \
        "chown -R makenotwork:makenotwork /opt/makenotwork"
    assert c.chown_r("mnw", W) == f"chown -R mnw {WQ}"


def test_systemctl_daemon_reload_install_unit():
    assert c.systemctl("reload", "caddy") == "systemctl reload caddy"
    assert c.reload_caddy() == "systemctl try-reload-or-restart caddy"
    assert c.systemctl("is-active", "makenotwork") == "systemctl is-active makenotwork"
    assert c.systemctl("restart", "a b") == "systemctl restart 'a b'"
    assert c.daemon_reload() == "systemctl daemon-reload"
    assert c.install_unit("makenotwork") == \
        "systemctl daemon-reload && systemctl enable --quiet --no-reload makenotwork.service"
    assert c.install_unit("it's") == f"systemctl daemon-reload && systemctl enable --quiet --no-reload 'it{Q}s.service'"


def test_write_file_is_the_write_file_step():
    assert c.write_file("/etc/caddy/Caddyfile", 0o644, "0a1b2c3d") == scripts.command(
        "write-file", DEST="/etc/caddy/Caddyfile", MODE="0644", TOKEN="0a1b2c3d", SHA256="")
    assert c.write_file("/etc/x", 0o600, "ff", "ab" * 32) == scripts.command(
        "write-file", DEST="/etc/x", MODE="0600", TOKEN="ff", SHA256="ab" * 32)


def test_file_state():
    # sha256sum reads the file on stdin, so its output ("<hash>  -") never holds an escaped file name
    assert c.file_state("/etc/caddy/Caddyfile") == (
        "if [ -f /etc/caddy/Caddyfile ]; then "
        "sha256sum < /etc/caddy/Caddyfile && stat -c %a /etc/caddy/Caddyfile; fi"
    )
    assert c.file_state(W) == f"if [ -f {WQ} ]; then sha256sum < {WQ} && stat -c %a {WQ}; fi"


def test_receive_steps_by_exact_line():
    assert transfer.step("link", "v1", "makenotwork") == "link\tv1\tmakenotwork"
    assert transfer.step("patch", "v1", "error-pages/a b.html", ".sando/in/3.zst", 0o644) == \
        "patch\tv1\terror-pages/a b.html\t.sando/in/3.zst\t0644"
    assert transfer.step("mode", "makenotwork", 0o755) == "mode\tmakenotwork\t0755"
    for bad in ("a\tb", "a\nb", ""):
        with pytest.raises(transfer.build.BuildError):
            transfer.step("mode", bad, 0o644)


def test_receive_release_parameters():
    text = shlex.split(c.receive_release("/opt/m", "v2", "ab12", 2048, ["link\tv1\tx", "mode\ty\t0755"], "zstd"))
    assert text[0:2] == ["sh", "-c"] and text[3] == "sando-receive"
    assert scripts.params(RELEASE_ROOT="/opt/m", VERSION="v2", TOKEN="ab12", NEED_KIB=2048, COMPRESSION="zstd",
                          STEPS="link\tv1\tx\nmode\ty\t0755") in text[2]
    with pytest.raises(ValueError):
        c.receive_release("/opt/m", "v2", "ab12", 1, [], "xz; rm -rf /")


def test_health_params():
    assert c.health_params("http://127.0.0.1:3000/health", 30, 1, "abc") == {
        "HEALTH_URL": "http://127.0.0.1:3000/health", "HEALTH_TIMEOUT": 30, "HEALTH_WAITS": "0.05 0.1 0.2 0.4",
        "HEALTH_INTERVAL": "1", "COMMIT": "abc", "CADDY_URL": ""}
    assert c.health_params("http://h/", 1, 1, "c", "http://127.0.0.1:80/")["CADDY_URL"] == "http://127.0.0.1:80/"
    p = c.health_params("http://h/", 2.2, 0.15, "c")
    assert (p["HEALTH_TIMEOUT"], p["HEALTH_WAITS"], p["HEALTH_INTERVAL"]) == (3, "0.05 0.1", "0.15")


def test_warning_params():
    assert c.warning_params("http://127.0.0.1:3000/api/internal/restart-warning", 30, False) == {
        "WARN_URL": "http://127.0.0.1:3000/api/internal/restart-warning", "WARN_SECONDS": 30, "WARN_ABORT": 0}
    assert c.warning_params("http://h/", 5, True)["WARN_ABORT"] == 1


def test_switch_parameters_with_parts_off():
    text = shlex.split(c.switch(release_root="/opt/m", version="v2", service="m", expect="v2",
                                health=c.health_params("http://h/", 5, 1, "c2"), prune_ok=["v0", "v1"]))[2]
    assert scripts.params(RELEASE_ROOT="/opt/m", VERSION="v2", SERVICE="m", EXPECT="v2", GATE=0, WARN=0,
                          LOCK_WAIT=900, PRUNE_OK="v0\nv1", PRUNE_FAILED="") in text
    assert scripts.params(**c.WARNING_OFF) in text and scripts.params(BACKUP_KEEP=0) in text
    # a directory named with a line break was not made by sando: it is never pruned
    text = shlex.split(c.switch(release_root="/r", version="v2", service="m", expect="", prune_ok=["a\nb", "v1"],
                                health=c.health_params("http://h/", 5, 1, "c2")))[2]
    assert scripts.params(PRUNE_OK="v1") in text


def lib(body: str, **values) -> str:
    """The library (lib.sh, prune.sh) and a body, as a step would run them."""
    return scripts.render_inline(scripts.params(**values), scripts.source("prune.sh") + "\n" + body)


def test_relink_creates_then_replaces_symlink(root):
    assert sh(lib('relink current releases/v1'), root).returncode == 0
    assert os.readlink(root / "current") == "releases/v1"
    assert sh(lib('relink error-pages current/error-pages'), root).returncode == 0
    assert (root / "error-pages" / "404.html").read_text() == "404 of v1"
    res = sh(lib('relink current releases/v2'), root)
    assert res.returncode == 0, res.stderr
    assert os.readlink(root / "current") == "releases/v2"
    assert (root / "error-pages" / "404.html").read_text() == "404 of v2"
    # mv -T: the new link replaced the old one instead of being moved *into* releases/v1
    assert sorted(os.listdir(root / "releases" / "v1")) == [paths.ERROR_PAGES]
    assert not os.path.lexists(root / "current.sando-tmp")


def test_relink_that_fails_leaves_no_temp_link(root):
    (root / "blocked").mkdir()
    (root / "blocked" / "x").write_text("a directory in the way: mv -T cannot replace it")
    res = sh(lib('relink blocked releases/v1 || report failed yes'), root)
    assert Report.parse(res.stdout).one("failed") == "yes"
    assert not os.path.lexists(root / "blocked.sando-tmp")


def test_relink_is_atomic_for_readers(root):
    """A reader polling `current` while it flips 100 times never sees it missing or dangling."""
    sh(lib("relink current releases/v1"), root)
    loop = lib("i=0; while [ $i -lt 50 ]; do relink current releases/v2 && relink current releases/v1 || exit 1; "
               "i=$((i+1)); done")
    bad, reads, done = [], [0], threading.Event()

    def reader():
        while not done.is_set():
            reads[0] += 1
            try:
                target = os.readlink(root / "current")
            except OSError as exc:
                bad.append(repr(exc))
                continue
            if target not in ("releases/v1", "releases/v2"):
                bad.append(target)

    t = threading.Thread(target=reader)
    t.start()
    try:
        res = sh(loop, root)
    finally:
        done.set()
        t.join()
    assert res.returncode == 0, res.stderr
    assert reads[0] > 0 and bad == []
    assert os.readlink(root / "current") == "releases/v1"


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
    "--help",
]

TOOLS = ["mkdir", "chown", "chmod", "mv", "rm", "sha256sum", "stat", "systemctl", "find", "cat", "readlink",
         "ln", "curl", "touch", "zstd", "date", "sleep"]  # not head/tr: a pipeline's order is not fixed

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
    for real in ("sh", "dirname", "tr", "sed"):  # the real ones (not recorded): steps run under sh
        os.symlink(shutil.which(real), fakebin / real)
    log = tmp_path / "argv.log"

    def run(cmd: str, cwd: Path, expect_rc: int = 0) -> list[list[str]]:
        log.write_bytes(b"")
        env = {"PATH": str(fakebin), "ARGV_LOG": str(log), "HOME": "/nonexistent-home"}
        res = subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
        assert res.returncode == expect_rc, (cmd, res.stderr)
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
    f = os.path.join(base, "file")
    Path(f).write_text("x")
    cases = [
        (c.mkdir_p(base, f), [["mkdir", "-p", base, f]]),
        (c.chown_r(evil, base), [["chown", "-R", evil, base]]),
        (c.systemctl(evil, evil), [["systemctl", evil, evil]]),
        (c.daemon_reload(), [["systemctl", "daemon-reload"]]),
        (c.install_unit(evil), [["systemctl", "daemon-reload"], ["systemctl", "enable", "--quiet", "--no-reload", f"{evil}.service"]]),
        (c.write_file(f, 0o640, evil), [["mkdir", "-p", "--", base], ["cat"], ["chmod", "0640", f"{f}.sando-tmp-{evil}"],
                                        ["mv", "-f", "--", f"{f}.sando-tmp-{evil}", f]]),
        (c.file_state(f), [["sha256sum"], ["stat", "-c", "%a", f]]),  # sha256sum reads f on stdin
        (lib("relink \"$L\" \"$T\"", L=f, T=evil), [["ln", "-sfn", "--", evil, f + ".sando-tmp"],
                                                    ["mv", "-T", "--", f + ".sando-tmp", f]]),
    ]
    for cmd, expected in cases:
        assert recorder(cmd, work) == expected, cmd
    # prune and mark_failed: the version is one word (rm/printf of a release named like the value)
    rel = work / "releases" / evil
    (rel / paths.MANIFEST_DIR).mkdir(parents=True)
    (rel / paths.MANIFEST).write_text("{}")
    if "\n" not in evil:  # a name with a line break is never in a prune list (commands.switch drops it)
        assert recorder(lib('prune "$L"', L=f"{evil}\n"), work) == [
            ["readlink", "current"], ["readlink", "previous"], ["rm", "-rf", "--", f"releases/{evil}"]]
    recorder(lib('mark_failed "$V" "$V"', V=evil), work)
    assert (rel / paths.FAILED).read_text() == evil + "\n"
    assert not list(tmp_path.rglob("PWNED"))


# --- real runs with /bin/sh and coreutils in a tmp dir ---------------------------------------------


def sh(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def root(tmp_path) -> Path:
    """A release root with a space and a quote in it, releases v1 and v2 laid out."""
    r = tmp_path / "a b" / "it's"
    for v in ("v1", "v2"):
        pages = r / "releases" / v / paths.ERROR_PAGES
        pages.mkdir(parents=True)
        (pages / "404.html").write_text(f"404 of {v}")
    return r


def test_write_file_for_real(tmp_path):
    dest = tmp_path / "it's a b" / "new dir" / "setup-firewall.sh"
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o750, "0a1b")], input=b"#!/bin/sh\necho hi\n",
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert dest.stat().st_mode & 0o7777 == 0o750
    assert os.listdir(dest.parent) == ["setup-firewall.sh"]  # no temp file left
    # the directories it made are readable, as mkdir -p makes them (a Caddyfile in a new /etc/caddy
    # must stay readable by caddy): only the content is private until its mode is set
    assert (dest.parent.stat().st_mode & 0o777, dest.parent.parent.stat().st_mode & 0o777) == (0o755, 0o755)
    # again, over the existing file
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o644, "ff")], input=b"v2", capture_output=True)
    assert res.returncode == 0 and dest.read_bytes() == b"v2" and dest.stat().st_mode & 0o7777 == 0o644


def wait_for_group(pgid: int, timeout: float = 10) -> None:
    """Until no process of the group is left."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still running")


TRACE_CHMOD = """#!/bin/sh
for a in "$@"; do [ -f "$a" ] && stat -c '%a' "$a" >> "$TRACE"; done
exec /bin/chmod "$@"
"""


def test_write_file_temp_is_private_until_its_mode_is_set(tmp_path):
    """The content is never readable by others on its way (umask 077 until the explicit chmod)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "chmod").write_text(TRACE_CHMOD)
    (tools / "chmod").chmod(0o755)
    dest = tmp_path / "etc" / "file.conf"
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o644, "ab")], input=b"secret-ish",
                         capture_output=True, env={"PATH": f"{tools}:/usr/bin:/bin", "TRACE": str(tmp_path / "trace")})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "trace").read_text() == "600\n"  # before the chmod: owner only
    assert dest.stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize("failure", ["mv", "chmod", "stdin"])
def test_write_file_removes_its_temp_file_on_failure(tmp_path, failure):
    dest = tmp_path / "etc" / "file.conf"
    tools = tmp_path / "tools"
    tools.mkdir()
    if failure in ("mv", "chmod"):
        (tools / failure).write_text("#!/bin/sh\necho 'no space left' >&2\nexit 1\n")
        (tools / failure).chmod(0o755)
    cmd = c.write_file(str(dest), 0o644, "ab")
    env = {"PATH": f"{tools}:/usr/bin:/bin"}
    if failure == "stdin":  # the session is cut mid-content: its processes get SIGHUP
        # SIGHUP at its default, as in an sshd session: a test run under nohup would pass it on ignored,
        # and a shell cannot trap (nor die of) a signal ignored when it started
        proc = subprocess.Popen(["env", "--default-signal=HUP", "/bin/sh", "-c", cmd], stdin=subprocess.PIPE, env=env,
                                start_new_session=True)
        proc.stdin.write(b"partial")
        proc.stdin.flush()
        for _ in range(200):  # wait for the temp file
            if dest.parent.exists() and list(dest.parent.glob("*.sando-tmp-*")):
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=10)
        assert proc.returncode != 0
        wait_for_group(proc.pid)  # the step's own shell cleans up after the outer one is gone
    else:
        res = subprocess.run(["/bin/sh", "-c", cmd], input=b"content", capture_output=True, env=env)
        assert res.returncode != 0
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no *.sando-tmp-* left behind


@pytest.mark.parametrize("name", ["plain.conf", "back\\slash.conf", "new\nline.conf", "it's a b.conf"])
def test_file_state_for_real(tmp_path, name):
    """The provider's parse (RemoteFileProvider.read): first field the bare digest, last the octal mode."""
    f = tmp_path / name
    f.write_bytes(b"hello\n")
    f.chmod(0o640)
    res = sh(c.file_state(str(f)))
    assert res.returncode == 0, res.stderr
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert res.stdout == f"{digest}  -\n640\n"


def test_file_state_of_missing_file_or_directory_is_empty(tmp_path):
    for p in (tmp_path / "it's a b" / "nope", tmp_path):
        res = sh(c.file_state(str(p)))
        assert res.returncode == 0 and res.stdout == ""


def test_prune_for_real_spares_current_previous_and_dirs_without_manifest(root):
    for v in ("v0", "v1", "v2", "v3"):
        (root / "releases" / v / paths.MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        (root / "releases" / v / paths.MANIFEST).write_text("{}")
    (root / "releases" / "hand-made").mkdir()
    (root / "releases" / "fake" / paths.MANIFEST).mkdir(parents=True)  # a directory named like the manifest
    os.symlink("releases/v2", root / "current")
    os.symlink("releases/v1", root / "previous")
    res = sh(lib('prune "$L"', L="\n".join(["v0", "v1", "v2", "hand-made", "fake", "absent"])), root)
    assert res.returncode == 0, res.stderr
    assert Report.parse(res.stdout).entries == (("pruned", "v0"),)
    assert sorted(os.listdir(root / "releases")) == ["fake", "hand-made", "v1", "v2", "v3"]


def test_mark_failed_keeps_the_reason(root):
    (root / "releases" / "v2" / paths.MANIFEST_DIR).mkdir()
    res = sh(lib('mark_failed v2 "$WHY"', WHY="restart failed: it's broken"), root)
    assert Report.parse(res.stdout).entries == (("failed", "v2"),)
    assert (root / "releases" / "v2" / paths.FAILED).read_text() == "restart failed: it's broken\n"
    assert (root / "releases" / "v2" / paths.FAILED).stat().st_mode & 0o777 == 0o600  # umask 077
    # a release that is gone: no error output, the report line still comes
    res = sh(lib("mark_failed v9 x"), root)
    assert res.returncode == 0 and Report.parse(res.stdout).entries == (("failed", "v9"),)


def test_write_file_with_a_digest_refuses_content_that_arrived_incomplete(tmp_path):
    """A connection cut mid-content gives cat an early end of input: with the digest of what was
    sent, that truncated content is never installed (the old file stays)."""
    dest = tmp_path / "etc" / "Caddyfile"
    dest.parent.mkdir()
    dest.write_text("the old one")
    full = b"a whole new Caddyfile\n"
    digest = hashlib.sha256(full).hexdigest()
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o644, "ab", digest)], input=full[:7],
                         capture_output=True)
    assert res.returncode != 0 and b"arrived incomplete" in res.stderr
    assert dest.read_text() == "the old one" and os.listdir(dest.parent) == ["Caddyfile"]
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o644, "ab", digest)], input=full,
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == full and os.listdir(dest.parent) == ["Caddyfile"]
