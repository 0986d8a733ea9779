"""sando_components/commands.py, the small builders: each pinned by its exact string (like Kamal's
test/commands/*), then run under /bin/sh with recording stand-ins for every external tool and
hostile values in every argument (nothing may reach a shell unquoted), then the ones that are
safe to run locally run for real. Also `parse_report` and `parse_listing`.

The composed node scripts run for real in test_probe.py, test_receive.py, test_switch.py and
test_gate.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from sando_components import commands as c
from sando_components import paths

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


def test_write_file():
    assert c.write_file("/etc/caddy/Caddyfile", 0o644, "0a1b2c3d") == (
        "mkdir -p /etc/caddy && cat > /etc/caddy/Caddyfile.sando-tmp-0a1b2c3d && "
        "chmod 0644 /etc/caddy/Caddyfile.sando-tmp-0a1b2c3d && "
        "mv -f /etc/caddy/Caddyfile.sando-tmp-0a1b2c3d /etc/caddy/Caddyfile"
    )
    assert c.write_file(W + "/fw.sh", 0o755, "ff") == (
        f"mkdir -p {WQ} && cat > '/tmp/a b/it{Q}s/fw.sh.sando-tmp-ff' && "
        f"chmod 0755 '/tmp/a b/it{Q}s/fw.sh.sando-tmp-ff' && "
        f"mv -f '/tmp/a b/it{Q}s/fw.sh.sando-tmp-ff' '/tmp/a b/it{Q}s/fw.sh'"
    )


def test_file_state():
    # sha256sum reads the file on stdin, so its output ("<hash>  -") never holds an escaped file name
    assert c.file_state("/etc/caddy/Caddyfile") == (
        "if [ -f /etc/caddy/Caddyfile ]; then "
        "sha256sum < /etc/caddy/Caddyfile && stat -c %a /etc/caddy/Caddyfile; fi"
    )
    assert c.file_state(W) == f"if [ -f {WQ} ]; then sha256sum < {WQ} && stat -c %a {WQ}; fi"


def test_switch_link_and_switch_link_to():
    assert c.switch_link("current", "releases/v1") == (
        "ln -sfn releases/v1 current.sando-tmp && mv -T current.sando-tmp current"
    )
    assert c.switch_link(W, "releases/v 2") == (
        f"ln -sfn 'releases/v 2' '/tmp/a b/it{Q}s.sando-tmp' && mv -T '/tmp/a b/it{Q}s.sando-tmp' {WQ}"
    )
    assert c.switch_link_to("previous", "live") == (
        'ln -sfn "$live" previous.sando-tmp && mv -T previous.sando-tmp previous'
    )


def test_http_probe():
    assert c.http_probe("http://127.0.0.1:3000/", 3) == "curl -fsS --max-time 3 http://127.0.0.1:3000/"
    assert c.http_probe("http://127.0.0.1:3000/health?a=1&b=2", 2.5) == (
        "curl -fsS --max-time 2.5 'http://127.0.0.1:3000/health?a=1&b=2'"
    )


def test_link_from():
    assert c.link_from("v1", "makenotwork") == "mkdir -p . && ln -- ../v1/makenotwork makenotwork"
    assert c.link_from("v1", "error-pages/404.html") == (
        "mkdir -p error-pages && ln -- ../v1/error-pages/404.html error-pages/404.html"
    )


def test_unpatch():
    assert c.unpatch("v1", "makenotwork", ".sando/in/0.zst", 0o755) == (
        "mkdir -p . && zstd -q -d --long=31 --patch-from=../v1/makenotwork .sando/in/0.zst -o makenotwork "
        "&& chmod 0755 makenotwork"
    )
    assert c.unpatch("v1", "error-pages/a b.html", ".sando/in/3.zst", 0o644) == (
        "mkdir -p error-pages && zstd -q -d --long=31 '--patch-from=../v1/error-pages/a b.html' .sando/in/3.zst "
        "-o 'error-pages/a b.html' && chmod 0644 'error-pages/a b.html'"
    )


def test_prune():
    assert c.prune([]) == ":"
    assert c.prune(["v1", "v 2"]) == (
        "for n in v1 'v 2'; do "
        'case "$(readlink current)" in "releases/$n") continue;; esac; '
        'case "$(readlink previous)" in "releases/$n") continue;; esac; '
        '[ -f "releases/$n/.sando/manifest.json" ] || continue; '
        "rm -rf -- \"releases/$n\" && printf '@pruned %s\\n' \"$n\"; done"
    )


def test_restart():
    assert c.restart("makenotwork") == (
        "systemctl reset-failed makenotwork 2>/dev/null; "
        "out=$(systemctl reload-or-restart makenotwork 2>&1); rc=$?; "
        "printf '@restart %s %s\\n' \"$rc\" \"$(printf '%s' \"$out\" | tr '\\n' ' ' | head -c 300)\""
    )


def test_mark_failed():
    assert c.mark_failed("v2") == (
        "printf '%s\\n' \"$why\" > releases/v2/.sando/failed 2>/dev/null; echo '@failed v2'"
    )
    assert c.mark_failed("v2", "the dry run's failure") == (
        f"printf '%s\\n' 'the dry run{Q}s failure' > releases/v2/.sando/failed 2>/dev/null; echo '@failed v2'"
    )


def test_switch_and_switch_back():
    assert c.switch("v2") == "\n".join([
        "ln -sfn releases/v2 current.sando-tmp && mv -T current.sando-tmp current",
        "ln -sfn current/error-pages error-pages.sando-tmp && mv -T error-pages.sando-tmp error-pages",
        'if [ -n "$live" ]; then ln -sfn "$live" previous.sando-tmp && mv -T previous.sando-tmp previous; fi',
        'echo "@switched $(date +%s)"',
    ])
    assert c.switch_back() == "\n".join([
        'ln -sfn "$live" current.sando-tmp && mv -T current.sando-tmp current',
        'if [ -n "$prev" ]; then ln -sfn "$prev" previous.sando-tmp && mv -T previous.sando-tmp previous; '
        "else rm -f previous; fi",
        'echo "@reverted $(date +%s)"',
    ])


CURL_WARN = ("curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X POST -H @- "
             "-H 'Content-Type: application/json' --data '{\"seconds\": 30}' "
             "http://127.0.0.1:3000/api/internal/restart-warning")


def test_restart_warning_warn_mode():
    assert c.restart_warning("http://127.0.0.1:3000/api/internal/restart-warning", 30, False) == "\n".join([
        "werr=$(mktemp)",
        f"code=$(printf '%s\\n' \"$AUTH\" | {CURL_WARN} 2>\"$werr\"); AUTH=''",
        "case $code in",
        '  2??) echo "@warning sent $(date +%s)"; sleep 30;;',
        "  *) echo \"@warning failed HTTP ${code:-000} $(head -c 200 \"$werr\" | tr '\\n' ' ')\";",
        "esac",
        "rm -f \"$werr\"",
    ])


def test_restart_warning_abort_mode_exits_40():
    lines = c.restart_warning("http://127.0.0.1:3000/api/internal/restart-warning", 30, True).splitlines()
    assert lines[4] == ("  *) echo \"@warning failed HTTP ${code:-000} $(head -c 200 \"$werr\" | "
                        "tr '\\n' ' ')\"; rm -f \"$werr\"; exit 40;;")


def test_read_token():
    assert c.READ_TOKEN == "IFS= read -r AUTH || AUTH=''"


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
    url = f"http://127.0.0.1:3000/{evil}"
    cases = [
        (c.mkdir_p(base, f), [["mkdir", "-p", base, f]]),
        (c.chown_r(evil, base), [["chown", "-R", evil, base]]),
        (c.systemctl(evil, evil), [["systemctl", evil, evil]]),
        (c.daemon_reload(), [["systemctl", "daemon-reload"]]),
        (c.install_unit(evil), [["systemctl", "daemon-reload"], ["systemctl", "enable", "--quiet", "--no-reload", f"{evil}.service"]]),
        (c.write_file(f, 0o640, evil), [["mkdir", "-p", base], ["cat"], ["chmod", "0640", f"{f}.sando-tmp-{evil}"],
                                        ["mv", "-f", f"{f}.sando-tmp-{evil}", f]]),
        (c.file_state(f), [["sha256sum"], ["stat", "-c", "%a", f]]),  # sha256sum reads f on stdin
        (c.switch_link(f, evil), [["ln", "-sfn", evil, f + ".sando-tmp"], ["mv", "-T", f + ".sando-tmp", f]]),
        (f"live={c.q(evil)}; " + c.switch_link_to(f, "live"),
         [["ln", "-sfn", evil, f + ".sando-tmp"], ["mv", "-T", f + ".sando-tmp", f]]),
        (c.http_probe(url, 3), [["curl", "-fsS", "--max-time", "3", url]]),
        (c.unpatch(evil, f"d/{evil}", evil, 0o755),
         [["mkdir", "-p", "d"], ["zstd", "-q", "-d", "--long=31", f"--patch-from=../{evil}/d/{evil}", evil, "-o",
                                 f"d/{evil}"], ["chmod", "0755", f"d/{evil}"]]),
        (c.link_from(evil, f"d/{evil}"), [["mkdir", "-p", "d"], ["ln", "--", f"../{evil}/d/{evil}", f"d/{evil}"]]),
        (c.restart(evil), [["systemctl", "reset-failed", evil], ["systemctl", "reload-or-restart", evil]]),
        (c.switch(evil), [["ln", "-sfn", f"releases/{evil}", "current.sando-tmp"],
                          ["mv", "-T", "current.sando-tmp", "current"],
                          ["ln", "-sfn", "current/error-pages", "error-pages.sando-tmp"],
                          ["mv", "-T", "error-pages.sando-tmp", "error-pages"], ["date", "+%s"]]),
    ]
    for cmd, expected in cases:
        assert recorder(cmd, work) == expected, cmd
    # the restart warning: the URL is one argument, the notice a number
    warned = recorder(f"mktemp() {{ echo werr; }}\nAUTH={c.q(evil)}\n" + c.restart_warning(url, 7, False), work)
    assert warned[0] == ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", "POST",
                         "-H", "@-", "-H", "Content-Type: application/json", "--data", '{"seconds": 7}', url]
    assert evil not in sum(warned, [])  # the token goes on stdin, never argv
    # prune and mark_failed: the version is one word (rm/printf of a release named like the value)
    rel = work / "releases" / evil
    (rel / paths.MANIFEST_DIR).mkdir(parents=True)
    (rel / paths.MANIFEST).write_text("{}")
    assert recorder(c.prune([evil]), work) == [["readlink", "current"], ["readlink", "previous"],
                                                ["rm", "-rf", "--", f"releases/{evil}"]]
    recorder(c.mark_failed(evil, evil), work)
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


def test_switch_link_creates_then_replaces_symlink(root):
    assert sh(c.switch_link("current", "releases/v1"), root).returncode == 0
    assert os.readlink(root / "current") == "releases/v1"
    assert sh(c.switch_link("error-pages", "current/error-pages"), root).returncode == 0
    assert (root / "error-pages" / "404.html").read_text() == "404 of v1"
    res = sh(c.switch_link("current", "releases/v2"), root)
    assert res.returncode == 0, res.stderr
    assert os.readlink(root / "current") == "releases/v2"
    assert (root / "error-pages" / "404.html").read_text() == "404 of v2"
    # mv -T: the new link replaced the old one instead of being moved *into* releases/v1
    assert sorted(os.listdir(root / "releases" / "v1")) == [paths.ERROR_PAGES]
    assert not os.path.lexists(root / "current.sando-tmp")


def test_switch_link_is_atomic_for_readers(root):
    """A reader polling `current` while it flips 100 times never sees it missing or dangling."""
    sh(c.switch_link("current", "releases/v1"), root)
    flip = " && ".join([c.switch_link("current", "releases/v2"), c.switch_link("current", "releases/v1")])
    loop = f"i=0; while [ $i -lt 50 ]; do {flip} || exit 1; i=$((i+1)); done"
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


def test_write_file_for_real(tmp_path):
    dest = tmp_path / "it's a b" / "new dir" / "setup-firewall.sh"
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o750, "0a1b")], input=b"#!/bin/sh\necho hi\n",
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert dest.stat().st_mode & 0o7777 == 0o750
    assert os.listdir(dest.parent) == ["setup-firewall.sh"]  # no temp file left
    # again, over the existing file
    res = subprocess.run(["/bin/sh", "-c", c.write_file(str(dest), 0o644, "ff")], input=b"v2", capture_output=True)
    assert res.returncode == 0 and dest.read_bytes() == b"v2" and dest.stat().st_mode & 0o7777 == 0o644


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
    res = sh(c.prune(["v0", "v1", "v2", "hand-made", "fake", "absent"]), root)
    assert res.returncode == 0, res.stderr
    assert c.parse_report(res.stdout) == [("pruned", "v0")]
    assert sorted(os.listdir(root / "releases")) == ["fake", "hand-made", "v1", "v2", "v3"]


def test_mark_failed_keeps_the_reason(root):
    (root / "releases" / "v2" / paths.MANIFEST_DIR).mkdir()
    res = sh("why='restart failed: it'\"'\"'s broken'\n" + c.mark_failed("v2"), root)
    assert res.stdout == "@failed v2\n"
    assert (root / "releases" / "v2" / paths.FAILED).read_text() == "restart failed: it's broken\n"
    # a release that is gone: no error output, the report line still comes
    res = sh(c.mark_failed("v9", "x"), root)
    assert res.returncode == 0 and res.stdout == "@failed v9\n"


# --- reading what a script reported --------------------------------------------------------------


def test_parse_report():
    out = ("noise\n@active active\n@current releases/v1\n@previous \n@pending\n@dryrun pending 2 add [destructive]\n"
           "  @indented is not a report\n@health ok {\"version\":\"v1\"} \n@dryrun dry-run ok\n")
    assert c.parse_report(out) == [
        ("active", "active"), ("current", "releases/v1"), ("previous", ""), ("pending", ""),
        ("dryrun", "pending 2 add [destructive]"), ("health", 'ok {"version":"v1"} '), ("dryrun", "dry-run ok"),
    ]
    assert c.parse_report("") == []


def test_parse_listing():
    out = "\n".join([
        "@free 123",
        "@release v1", '{"commit":"c1"}',
        "@release v2", '{"commit":"c2"}',
        "@failed v2",
        "@foreign hand made",
        "@final",
        "@final-release v3", '{"commit":"c3"}',
        "@final-foreign junk",
        "@final-failed v3",
        "@release v4",  # a manifest line cut off at the very end
    ])
    assert c.parse_listing(out) == ({"v1": '{"commit":"c1"}', "v2": '{"commit":"c2"}', "v4": ""}, ["hand made"],
                                    {"v2"})
    assert c.parse_listing(out, "final-") == ({"v3": '{"commit":"c3"}'}, ["junk"], {"v3"})
