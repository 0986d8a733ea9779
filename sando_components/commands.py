"""Remote shell commands, built by small pure functions (nothing here runs anything).

Every value is quoted with shlex.quote / shlex.join; there are no hand-placed quotes
around values. tests/unit/test_commands.py pins the pieces by exact string and runs the
composed scripts against a scratch directory. Secrets never appear here: what needs one
(the restart warning's token) reads it from stdin.

A step on a node is one script in one SSH exec (one round trip). Scripts report to
sando with lines `@<key> <value>` on stdout (see `parse_report`).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable

from . import paths

q = shlex.quote


def _and(*cmds: str) -> str:
    return " && ".join(cmds)


def _lines(*parts: str | None) -> str:
    return "\n".join(p for p in parts if p)


# --- small commands --------------------------------------------------------------------------


def mkdir_p(*dirs: str) -> str:
    return shlex.join(["mkdir", "-p", *dirs])


def chown_r(owner: str, *targets: str) -> str:
    return shlex.join(["chown", "-R", owner, *targets])


def systemctl(verb: str, unit: str) -> str:
    return shlex.join(["systemctl", verb, unit])


def reload_caddy() -> str:
    """Caddy reads the new Caddyfile if it runs; a stopped Caddy is left stopped (it reads the file
    when it starts). A plain `reload` of an inactive unit fails on systemd."""
    return systemctl("try-reload-or-restart", "caddy")


def daemon_reload() -> str:
    return shlex.join(["systemctl", "daemon-reload"])


def install_unit(service: str) -> str:
    """After the unit file changed: systemd reads it again, and the service starts at boot."""
    return _and(daemon_reload(), shlex.join(["systemctl", "enable", "--quiet", "--no-reload", f"{service}.service"]))


def write_file(dest: str, mode: int, token: str) -> str:
    """Write stdin to dest atomically: a temp file beside it, its mode, then a rename."""
    tmp = f"{dest}.sando-tmp-{token}"
    return _and(mkdir_p(posixpath.dirname(dest)), f"cat > {q(tmp)}", shlex.join(["chmod", format(mode, "04o"), tmp]),
                shlex.join(["mv", "-f", tmp, dest]))


def file_state(path: str) -> str:
    """sha256 and octal mode of a file, or nothing when it does not exist."""
    return f"if [ -f {q(path)} ]; then " + _and(f"sha256sum < {q(path)}", shlex.join(["stat", "-c", "%a", path])) + "; fi"


def switch_link(link: str, target: str) -> str:
    """Atomically point `link` at `target`: new symlink, then rename over the old one."""
    tmp = f"{link}.sando-tmp"
    return _and(shlex.join(["ln", "-sfn", target, tmp]), shlex.join(["mv", "-T", tmp, link]))


def switch_link_to(link: str, variable: str) -> str:
    """switch_link to the target held in a shell variable (e.g. `live`)."""
    tmp = f"{link}.sando-tmp"
    return _and(f'ln -sfn "${variable}" {q(tmp)}', shlex.join(["mv", "-T", tmp, link]))


def http_probe(url: str, timeout: float) -> str:
    """One GET; prints the body, fails on a non-2xx answer or a time-out."""
    return shlex.join(["curl", "-fsS", "--max-time", f"{timeout:g}", url])


# --- what a node holds (one round trip: links, releases, free space, tools) ------------------------


def _list_releases(tag: str) -> str:
    """Print one record per directory under releases/ (cwd = release root): `@<tag>release NAME`
    + the manifest on the next line (+ `@<tag>failed NAME`), or `@<tag>foreign NAME`."""
    return (
        f'if [ -d {paths.RELEASES} ]; then for d in {paths.RELEASES}/* {paths.RELEASES}/.[!.]*; do '
        f'[ -d "$d" ] && [ ! -L "$d" ] || continue; n=${{d#{paths.RELEASES}/}}; '
        f'case $n in {paths.STAGING_PREFIX}*) continue;; esac; '
        f'if [ -f "$d/{paths.MANIFEST}" ]; then printf \'@{tag}release %s\\n\' "$n"; '
        f'tr -d \'\\n\' < "$d/{paths.MANIFEST}"; echo; '
        f'if [ -f "$d/{paths.FAILED}" ]; then printf \'@{tag}failed %s\\n\' "$n"; fi; '
        f'else printf \'@{tag}foreign %s\\n\' "$n"; fi; done; fi'
    )


def probe(release_root: str, service: str) -> str:
    """What the node holds, read-only: `current`/`previous` targets, every release (with its
    manifest) and foreign directory, free KiB where releases go, whether zstd is there, and
    whether the service runs."""
    return _lines(
        f"printf '@active %s\\n' \"$({systemctl('is-active', service)} 2>/dev/null)\"",
        f"cd {q(release_root)} 2>/dev/null || {{ echo '@missing'; cd /; }}",
        f"printf '@current %s\\n' \"$(readlink {paths.CURRENT} 2>/dev/null)\"",
        f"printf '@previous %s\\n' \"$(readlink {paths.PREVIOUS} 2>/dev/null)\"",
        f"for p in {paths.RELEASES} . /; do [ -d \"$p\" ] && break; done",
        "printf '@free %s\\n' \"$(df -Pk \"$p\" | awk 'NR==2 {print $4}')\"",
        "if command -v zstd >/dev/null 2>&1; then echo '@zstd yes'; else echo '@zstd no'; fi",
        _list_releases(""),
    )


# --- receiving a release (one round trip: stream in, unpack, verify, rename) ---------------------


def link_from(base: str, rel: str) -> str:
    """Reuse an unchanged file of release `base` (a hard link: no bytes sent, no space used)."""
    return _and(mkdir_p(posixpath.dirname(rel) or "."), shlex.join(["ln", "--", f"../{base}/{rel}", rel]))


def unpatch(base: str, rel: str, patch: str, mode: int) -> str:
    """Rebuild a changed file from its zstd delta against the same file of release `base`."""
    return _and(mkdir_p(posixpath.dirname(rel) or "."),
                shlex.join(["zstd", "-q", "-d", "--long=31", f"--patch-from=../{base}/{rel}", patch, "-o", rel]),
                shlex.join(["chmod", format(mode, "04o"), rel]))


def link_local(source: str, rel: str, mode: int) -> str:
    """A local node: take a file from the local build's artifacts (`source`, absolute) by hard link,
    or a copy when they are on another file system; owned by root like an unpacked upload (the
    inode is shared with the build cache: the operator can no longer write the live binary)."""
    return _and(mkdir_p(posixpath.dirname(rel) or "."),
                "{ " + shlex.join(["ln", "--", source, rel]) + " 2>/dev/null || "
                + shlex.join(["cp", "--", source, rel]) + "; }",
                shlex.join(["chown", "0:0", rel]), shlex.join(["chmod", format(mode, "04o"), rel]))


def write_text(rel: str, text: str) -> str:
    """Write a small text file (a manifest, the sums) from the script itself: no stdin."""
    return _and(mkdir_p(posixpath.dirname(rel) or "."), f"printf '%s' {q(text)} > {q(rel)}")


def receive_release(release_root: str, version: str, token: str, need_kib: int, steps: Iterable[str],
                    compression: str | None) -> str:
    """Receive a release streamed on stdin (a tar, compressed with `compression`: zstd or gzip) into
    a staging dir, apply the per-file `steps` (links, patches), verify every file against
    SHA256SUMS, then rename it to releases/<version>. Leftover staging dirs are removed first;
    this upload's staging dir is removed on any failure. Exit 75 with `@free <KiB>` when the
    free space under releases/ is less than need_kib; 17 when releases/<version> exists; 65
    (`@sums-failed`) when a rebuilt file does not match its sha256. compression None: nothing is
    streamed (a local node: the steps take every file from the local build, see transfer.plan_local)."""
    staging = posixpath.join(paths.RELEASES, f"{paths.STAGING_PREFIX}{version}-{token}")
    final = paths.NodePaths.link_target(version)
    decompress = {"zstd": "zstd -q -d -c", "gzip": "gzip -d -c", None: None}[compression]
    return _lines(
        "set -e",
        f"cd {q(release_root)}",
        mkdir_p(paths.RELEASES),
        shlex.join(["find", paths.RELEASES, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
                    "-name", f"{paths.STAGING_PREFIX}*", "-exec", "rm", "-rf", "{}", "+"]),
        f"if [ -e {q(final)} ]; then echo {q(f'@exists {version}')}; exit 17; fi",
        f"free=$(df -Pk {paths.RELEASES} | awk 'NR==2 {{print $4}}')",
        f"if [ \"$free\" -lt {int(need_kib)} ]; then echo \"@free $free\"; exit 75; fi",
        f'S="$PWD"/{q(staging)}',  # absolute: the cleanup runs from wherever the script is by then
        "trap 'rm -rf \"$S\"' EXIT",
        "trap 'rm -rf \"$S\"; exit 1' HUP INT TERM PIPE",
        'mkdir "$S"',
        decompress and f'{decompress} | tar -x -C "$S" -f -',
        'cd "$S"',
        *steps,
        f"rm -rf {q(paths.MANIFEST_DIR + '/in')}",
        shlex.join(["sha256sum", "--check", "--strict", "--quiet", paths.SUMS]) + " || { echo '@sums-failed'; exit 65; }",
        f"cd {q(release_root)}",
        f'mv -T "$S" {q(final)}',
        "trap - EXIT HUP INT TERM PIPE",
        f"echo {q(f'@received {version}')}",
    )


# --- the switch (one round trip: verify, gate, warn, switch, restart, check, revert, prune) -------


def health_function(url: str, timeout: float, interval: float, commit: str) -> str:
    """Shell function `health EXPECT`: GET url until a 2xx answer whose JSON `version` field is
    EXPECT (or whose `commit` field is the pinned commit; EXPECT '' = any 2xx), or until
    `timeout` seconds passed. Prints `@health ok BODY` or `@health fail LAST-ERROR`."""
    # the first "KEY": "value" pair of the body (a nested object's "version" later on is not it)
    field = r"""grep -o '"%s"[[:space:]]*:[[:space:]]*"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'"""
    # a freshly started app usually answers within a few tenths of a second: poll fast first,
    # then every `interval`
    waits = [w for w in (0.05, 0.1, 0.2, 0.4) if w < interval] + [interval]
    arms = " ".join(f"{i + 1}) w={w:g};;" for i, w in enumerate(waits[:-1]))
    return _lines(
        "health() {",
        f"  end=$(( $(date +%s) + {int(timeout + 0.999)} )); n=0",
        "  while :; do",
        f"    if body=$({http_probe(url, 3)} 2>&1); then",
        "      v=$(printf '%s\\n' \"$body\" | " + field % "version" + ")",
        "      c=$(printf '%s\\n' \"$body\" | " + field % "commit" + ")",
        f"      if [ -z \"$1\" ] || [ \"$v\" = \"$1\" ] || [ \"$c\" = {q(commit)} ]; then",
        "        printf '@health ok %s\\n' \"$(printf '%s' \"$body\" | head -c 300 | tr '\\n' ' ')\"; return 0",
        "      fi",
        "      last=\"serves version '$v', not '$1'\"",
        "    else last=$(printf '%s' \"$body\" | tail -n 1 | head -c 300); fi",
        "    if [ \"$(date +%s)\" -ge \"$end\" ]; then printf '@health fail %s\\n' \"$last\"; return 1; fi",
        f"    n=$((n + 1)); case $n in {arms + ' ' if arms else ''}*) w={interval:g};; esac; sleep $w",
        "  done",
        "}",
    )


def prune(versions: Iterable[str]) -> str:
    """Delete these releases, except the one `current` or `previous` points at (read again at
    this moment) and any directory without sando's manifest. Prints `@pruned NAME` each."""
    names = " ".join(q(v) for v in versions)
    if not names:
        return ":"
    return (
        f"for n in {names}; do "
        f'case "$(readlink {paths.CURRENT})" in "{paths.RELEASES}/$n") continue;; esac; '
        f'case "$(readlink {paths.PREVIOUS})" in "{paths.RELEASES}/$n") continue;; esac; '
        f'[ -f "{paths.RELEASES}/$n/{paths.MANIFEST}" ] || continue; '
        f'rm -rf -- "{paths.RELEASES}/$n" && printf \'@pruned %s\\n\' "$n"; done'
    )


def gate(version: str, migrations: list[str], destructive: list[str], database: str | None, env_file: str,
         default_database: str, dry_run: str, allow_destructive: bool) -> str:
    """The migration gate: which of the release's `migrations` (versions) the live database has
    not applied (sqlx's _sqlx_migrations); when some are pending, a consistent scratch copy of
    the database (sqlite3 .backup), the release's dry run on it, the copy removed. Exits 30 when
    the dry run fails, 31 when a destructive migration is pending and not allowed, 32 when the
    dry run cannot run. Leaves $DB and $PENDING set. `dry_run` may use "$DB" and "$SCRATCH"."""
    strip_quotes = """tr -d "\\"'" """.strip()  # DATABASE_PATH="..." or '...' 
    db = (f"DB={q(database)}" if database else
          f"DB=$(sed -n 's/^DATABASE_PATH=//p' {q(env_file)} 2>/dev/null | tail -n 1 | {strip_quotes})\n"
          f"[ -n \"$DB\" ] || DB={q(default_database)}")
    return _lines(
        db,
        "echo \"@database $DB\"",
        "case $DB in /*) ;; *) DB=\"$PWD/$DB\";; esac",
        "applied=''",
        "if [ -f \"$DB\" ]; then",
        "  has=$(sqlite3 -readonly \"$DB\" \".timeout 10000\" "
        "\"SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_sqlx_migrations'\") || "
        "{ echo '@gate cannot-read'; exit 32; }",
        "  if [ \"$has\" = 1 ]; then applied=$(sqlite3 -readonly \"$DB\" \".timeout 10000\" "
        "'SELECT version FROM _sqlx_migrations WHERE success') || { echo '@gate cannot-read'; exit 32; }; fi",
        "  applied=$(printf '%s' \"$applied\" | tr '\\n' ' ')",
        "fi",
        "PENDING=''",
        f"for m in {' '.join(q(m) for m in migrations) or ':'}; do [ \"$m\" = : ] && continue; "
        "case \" $applied \" in *\" $m \"*) ;; *) PENDING=\"$PENDING $m\";; esac; done",
        "echo \"@pending$PENDING\"",
        # issue 20.7 hook: a database that does not exist yet or holds no table (a new node) has no
        # data a destructive migration could destroy: it passes, with a note
        "EMPTY=''; if [ ! -f \"$DB\" ] || [ \"$(sqlite3 -readonly \"$DB\" \".timeout 10000\" \"SELECT count(*) FROM "
        "sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'\" 2>/dev/null)\" = 0 ]; then EMPTY=1; fi",
        "if [ -n \"$PENDING\" ]; then",
        f"  for m in {' '.join(q(m) for m in destructive) or ':'}; do case \" $PENDING \" in *\" $m \"*) "
        "echo \"@destructive $m\";; esac; done",
        "  SCRATCH=$(mktemp \"$(dirname \"$DB\")/.sando-scratch.XXXXXX\" 2>/dev/null || mktemp)",
        "  if [ -f \"$DB\" ]; then (cd \"$(dirname \"$SCRATCH\")\" && sqlite3 \"$DB\" \".timeout 10000\" "
        "\".backup '$(basename \"$SCRATCH\")'\") || { rm -f \"$SCRATCH\"; echo '@gate cannot-copy'; exit 32; }; fi",
        f"  {dry_run} < /dev/null > \"$SCRATCH.out\" 2>&1; rc=$?",
        "  sed 's/^/@dryrun /' \"$SCRATCH.out\"; rm -f \"$SCRATCH\" \"$SCRATCH.out\"",
        "  echo \"@dryrun-exit $rc\"",
        "  case $rc in",
        "    0) ;;",
        "    3) " + mark_failed(version, "the migration dry run failed") + "; exit 30;;",
        "    4) " + (":" if allow_destructive else "[ -n \"$EMPTY\" ] || exit 31") + ";;",
        "    *) exit 32;;",
        "  esac",
        "  " + (":" if allow_destructive else
                f"for m in {' '.join(q(m) for m in destructive) or ':'}; do case \" $PENDING \" in *\" $m \"*) "
                "if [ -n \"$EMPTY\" ]; then echo '@gate-note the database is empty (a new node): nothing to "
                "destroy, so its destructive migrations pass'; break; fi; exit 31;; esac; done"),
        "fi",
    )


def backup(backup_dir: str, version: str) -> str:
    """Consistent copy of the live database ($DB) before a release with pending migrations
    first starts: <backup_dir>/pre-<version>-<UTC minute>.db. Prints `@backup PATH`."""
    return _lines(
        "if [ -n \"$PENDING\" ] && [ -f \"$DB\" ]; then",
        f"  mkdir -p {q(backup_dir)}",
        f"  B={q(backup_dir)}/{q('pre-' + version)}-$(date -u +%Y%m%dT%H%MZ)",
        "  n=''; while [ -e \"$B${n:+-$n}.db\" ]; do n=$((${n:-1} + 1)); done; B=\"$B${n:+-$n}.db\"",
        # sqlite3's .backup takes a quoted name of its own: it writes a fixed plain name, renamed after
        "  T=\"$(dirname \"$B\")/.sando-backup-$$.tmp\"",
        "  (cd \"$(dirname \"$B\")\" && sqlite3 \"$DB\" \".timeout 10000\" \".backup '.sando-backup-$$.tmp'\" && "
        "mv -f -- \"$T\" \"$B\") || { rm -f -- \"$T\"; echo '@gate cannot-backup'; exit 33; }",
        "  echo \"@backup $B\"",
        "fi",
    )


def restart_warning(url: str, seconds: int, abort: bool) -> str:
    """POST the restart warning (the bearer header is the first line of stdin: never argv), then
    wait out the notice before anything restarts. Prints `@warning sent EPOCH` or `@warning
    failed DETAIL`; with `abort`, a failed warning exits 40 before anything changed."""
    body = '{"seconds": %d}' % seconds
    curl = shlex.join(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", "POST",
                       "-H", "@-", "-H", "Content-Type: application/json", "--data", body, url])
    return _lines(
        "werr=$(mktemp)",
        f"code=$(printf '%s\\n' \"$AUTH\" | {curl} 2>\"$werr\"); AUTH=''",
        "case $code in",
        f"  2??) echo \"@warning sent $(date +%s)\"; sleep {int(seconds)};;",
        "  *) echo \"@warning failed HTTP ${code:-000} $(head -c 200 \"$werr\" | tr '\\n' ' ')\";"
        + (" rm -f \"$werr\"; exit 40;;" if abort else ""),
        "esac",
        "rm -f \"$werr\"",
    )


def switch(version: str) -> str:
    """Point current at releases/<version>, error-pages at current/error-pages and previous at
    what was live ($live), each atomically. Prints `@switched EPOCH`."""
    return _lines(
        switch_link(paths.CURRENT, paths.NodePaths.link_target(version)),
        switch_link(paths.ERROR_PAGES, posixpath.join(paths.CURRENT, paths.ERROR_PAGES)),
        'if [ -n "$live" ]; then ' + switch_link_to(paths.PREVIOUS, "live") + "; fi",
        "echo \"@switched $(date +%s)\"",
    )


def switch_back() -> str:
    """Put current back on $live and previous back on $prev (removed when there was none)."""
    return _lines(
        switch_link_to(paths.CURRENT, "live"),
        'if [ -n "$prev" ]; then ' + switch_link_to(paths.PREVIOUS, "prev") + f"; else rm -f {paths.PREVIOUS}; fi",
        "echo \"@reverted $(date +%s)\"",
    )


def restart(service: str) -> str:
    """reload-or-restart the service; prints `@restart RC DETAIL`. Its failed state is reset first:
    a release that crash-looped must not leave systemd's start limit ("Start request repeated too
    quickly") in the way of the release switched back to."""
    return (f"{systemctl('reset-failed', service)} 2>/dev/null; "
            f"out=$({systemctl('reload-or-restart', service)} 2>&1); rc=$?; "
            "printf '@restart %s %s\\n' \"$rc\" \"$(printf '%s' \"$out\" | tr '\\n' ' ' | head -c 300)\"")


def mark_failed(version: str, why: str = "$why") -> str:
    """Mark the release as failed (pruned first; the reason is kept in the file)."""
    reason = '"$why"' if why == "$why" else q(why)
    return (f"printf '%s\\n' {reason} > {q(posixpath.join(paths.RELEASES, version, paths.FAILED))} 2>/dev/null; "
            f"echo {q(f'@failed {version}')}")


READ_TOKEN = "IFS= read -r AUTH || AUTH=''"  # the restart warning's bearer header: first line of stdin


def pointer_script(*, release_root: str, version: str, service: str, health: str, expect: str,
                   gate_step: str | None, backup_step: str | None, warning_step: str | None, prune_ok: str,
                   prune_failed: str, history: str | None = None) -> str:
    """The whole switch of one node as one script (one round trip). Nothing user-visible happens
    before the gate passed; once the warning went out (or the switch began) the script ignores a
    lost connection and runs to the end, so a node is never left half-switched.

    Exit codes: 0 ok (switched, or already live and healthy); 21 release missing; 22 release
    files changed on the node; 23 already live but unhealthy; 30-33 gate; 40 warning (abort
    mode); 50 unhealthy with nothing to switch back to; 51 unhealthy, switched back.

    `history` (issue 20.2, sh/history.sh rendered with its parameters) defines `sando_history`,
    called after a switch held or was switched back: the node's record of who switched what."""
    target = paths.NodePaths.link_target(version)

    def recorded(result: str) -> str | None:  # --- issue 20.2 hook: the switch history (sh/history.sh)
        return f"  sando_history {result}" if history else None

    healthy = _lines(  # what follows a passed health check: the release is good, prune, report
        f"  rm -f {q(posixpath.join(target, paths.FAILED))}",
        f"  {prune_ok}",
        "  echo '@final'",
        "  " + _list_releases("final-"),
        "  exit 0",
    )
    return _lines(
        READ_TOKEN if warning_step else None,
        "exec < /dev/null",
        f"cd {q(release_root)} || exit 20",
        history,  # issue 20.2 hook: defines sando_history
        f"live=$(readlink {paths.CURRENT} 2>/dev/null); prev=$(readlink {paths.PREVIOUS} 2>/dev/null)",
        # a link written by hand may be absolute: releases/<v> is what sando compares and writes
        f"case $live in */{paths.RELEASES}/*) live={paths.RELEASES}/${{live##*/}};; esac",
        f"case $prev in */{paths.RELEASES}/*) prev={paths.RELEASES}/${{prev##*/}};; esac",
        "printf '@before %s %s\\n' \"${live:--}\" \"${prev:--}\"",
        f"[ -f {q(posixpath.join(target, paths.MANIFEST))} ] || {{ echo '@error missing'; exit 21; }}",
        f"bad=$(cd {q(target)} && sha256sum --check --strict --quiet {paths.SUMS} 2>&1) || "
        "{ printf '@error sums %s\\n' \"$(printf '%s' \"$bad\" | tr '\\n' ' ' | head -c 300)\"; exit 22; }",
        health,
        f"if [ \"$live\" = {q(target)} ]; then",
        f"  if ! {systemctl('is-active', service)} >/dev/null 2>&1; then {restart(service)}; fi",
        f"  health {q(expect)} || exit 23",
        healthy,
        "fi",
        gate_step,
        backup_step,
        "trap '' HUP PIPE",
        warning_step,
        switch(version),
        restart(service),
        f"if [ \"$rc\" = 0 ] && health {q(expect)}; then",
        recorded("ok"),
        healthy,
        "fi",
        "why=$(if [ \"$rc\" != 0 ]; then echo \"restart failed: $out\"; else echo \"$last\"; fi)",
        mark_failed(version),
        "if [ -z \"$live\" ]; then " + ("sando_history 'failed: nothing to switch back to'; " if history else "")
        + "echo '@final'; " + _list_releases("final-") + "; exit 50; fi",
        switch_back(),
        recorded('"failed: switched back to ${live##*/}"'),
        restart(service),
        "if [ \"$rc\" = 0 ]; then health ''; fi",
        prune_failed,
        "echo '@final'",
        _list_releases("final-"),
        "exit 51",
    )


# --- reading what a script reported --------------------------------------------------------------


def parse_report(out: str) -> list[tuple[str, str]]:
    """[(key, value)] of the `@key value` lines a script printed, in order."""
    report = []
    for line in out.splitlines():
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            report.append((key, value))
    return report


def parse_listing(out: str, tag: str = "") -> tuple[dict[str, str], list[str], set[str]]:
    """({release: manifest text}, [foreign dirs], {failed releases}) of a `_list_releases` listing."""
    releases: dict[str, str] = {}
    foreign: list[str] = []
    failed: set[str] = set()
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"@{tag}release "):
            releases[line.split(" ", 1)[1]] = lines[i + 1] if i + 1 < len(lines) else ""
        elif line.startswith(f"@{tag}foreign "):
            foreign.append(line.split(" ", 1)[1])
        elif line.startswith(f"@{tag}failed "):
            failed.add(line.split(" ", 1)[1])
    return releases, foreign, failed
