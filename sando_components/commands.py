"""Remote shell commands, built by small pure functions (nothing here runs anything).

Every command is an argument list joined with shlex.join / shlex.quote; there
are no hand-placed quotes. tests/unit/test_commands.py pins each by exact string.
Secrets never appear here: what needs one (the restart-warning token) reads it
from stdin.
"""

from __future__ import annotations

import posixpath
import shlex

from . import paths


def _and(*cmds: str) -> str:
    return " && ".join(cmds)


def mkdir_p(*dirs: str) -> str:
    return shlex.join(["mkdir", "-p", *dirs])


def chown_r(owner: str, *targets: str) -> str:
    return shlex.join(["chown", "-R", owner, *targets])


def install_file(tmp: str, dest: str, mode: int) -> str:
    """Give an uploaded temp file its mode, then rename it over dest (atomic)."""
    return _and(shlex.join(["chmod", format(mode, "04o"), tmp]), shlex.join(["mv", "-f", tmp, dest]))


def remove_files(*targets: str) -> str:
    return shlex.join(["rm", "-f", *targets])


def file_state(path: str) -> str:
    """sha256 and octal mode of a file, or nothing when it does not exist."""
    q = shlex.quote(path)  # sha256sum reads stdin: its output never escapes the file name
    return f"if [ -f {q} ]; then " + _and(f"sha256sum < {q}", shlex.join(["stat", "-c", "%a", path])) + "; fi"


def systemctl(verb: str, unit: str) -> str:
    return shlex.join(["systemctl", verb, unit])


def daemon_reload() -> str:
    return shlex.join(["systemctl", "daemon-reload"])


def verify_sums(release_dir: str) -> str:
    """Check every file against the release's SHA256SUMS (fails on any mismatch or missing file)."""
    return _and(
        shlex.join(["cd", release_dir]),
        shlex.join(["sha256sum", "--check", "--strict", "--quiet", paths.SUMS]),
    )


def finalize_release(staging: str, final: str) -> str:
    """Rename a verified staging dir to its final name; never replaces an existing release."""
    return _and(
        f"test ! -e {shlex.quote(final)}",
        shlex.join(["mv", "-T", staging, final]),
    )


def clean_staging(releases_dir: str) -> str:
    """Remove leftovers of interrupted uploads (only sando's .staging-* dirs)."""
    return shlex.join(
        ["find", releases_dir, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
         "-name", f"{paths.STAGING_PREFIX}*", "-exec", "rm", "-rf", "{}", "+"]
    )


def cat(path: str) -> str:
    return shlex.join(["cat", path])


def read_link(link: str) -> str:
    """Target of a symlink, or empty output when there is none."""
    return shlex.join(["readlink", link]) + " || true"


def switch_link(link: str, target: str) -> str:
    """Atomically point `link` at `target`: new symlink, then rename over the old one."""
    tmp = f"{link}.sando-tmp"
    return _and(shlex.join(["ln", "-sfn", target, tmp]), shlex.join(["mv", "-T", tmp, link]))


def remove_release(release_dir: str) -> str:
    """Delete one release dir, but only one sando made (it carries sando's manifest)."""
    manifest = posixpath.join(release_dir, paths.MANIFEST)
    return _and(f"test -f {shlex.quote(manifest)}", shlex.join(["rm", "-rf", "--", release_dir]))


def http_probe(url: str, timeout: float) -> str:
    """One GET; prints the body, fails on a non-2xx answer or a time-out."""
    return shlex.join(["curl", "-fsS", "--max-time", f"{timeout:g}", url])


def restart_warning(url: str, seconds: int, timeout: float) -> str:
    """POST the restart warning; the bearer header is read from stdin (`-H @-`), never argv.

    Prints the HTTP status code.
    """
    body = '{"seconds": %d}' % seconds
    return shlex.join(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", f"{timeout:g}",
         "-X", "POST", "-H", "@-", "-H", "Content-Type: application/json", "--data", body, url]
    )
