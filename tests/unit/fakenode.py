"""A node's release root in a tmp dir, for running sando's node scripts for real (no SSH).

The scripts run under /bin/sh with real coreutils, tar, zstd, sha256sum and sqlite3, and with
stand-ins on PATH for what a test machine cannot do for real:

- `systemctl` records every call; `reload-or-restart`/`restart` "start" the release `current`
  points at (kept in state/running) unless told to fail for that version; `is-active` answers
  from state/active;
- `curl` records every call; a GET answers what the running release serves (by default
  `{"name":"makenotwork","version":"<v>","commit":"c-<v>"}`, or a scripted body, or an HTTP
  error); a POST (the restart warning) records its stdin, environment and every ancestor's
  command line, and answers a scripted HTTP status;
- `sleep` records its argument and sleeps for real.

A stand-in can be told to hang at its next call with a given first argument (`hang`), until the
test lets it go: the moment to cut a script's connection at a chosen step.

Every stand-in appends one line per call to state/calls: the tool's name and its arguments,
separated by \\037, so tests can check what ran and in which order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sando_components import paths
from sando_components.scripts import Report

SEP = "\037"
RECORD = r"""{ printf '%s' "${0##*/}"; for a in "$@"; do printf '\037%s' "$a"; done; printf '\n'; } >> "$FAKE_STATE/calls"
_hang="$FAKE_STATE/hang-${0##*/}-${1:-}"
if [ -f "$_hang" ]; then
  rm -f "$_hang"; : > "$_hang.reached"
  while [ ! -f "$_hang.go" ]; do "$FAKE_REAL_SLEEP" 0.02; done
fi
"""

SYSTEMCTL = "#!/bin/sh\n" + RECORD + r"""
case "$1" in
  is-active)
    if [ -f "$FAKE_STATE/active" ]; then echo active; exit 0; fi
    echo inactive; exit 3;;
  reload-or-restart|restart)
    v=$(readlink "$FAKE_ROOT/current" 2>/dev/null); v=${v##*/}
    if [ -f "$FAKE_STATE/fail-restart-$v" ] || [ -f "$FAKE_STATE/fail-restart-all" ]; then
      rm -f "$FAKE_STATE/active" "$FAKE_STATE/running"
      echo "Job for $2.service failed because the control process exited with error code." >&2
      exit 1
    fi
    if [ -f "$FAKE_STATE/crash-$v" ]; then  # started (Type=simple), then exits: systemd restarts it
      rm -f "$FAKE_STATE/active" "$FAKE_STATE/running"
      n=$(cat "$FAKE_STATE/nrestarts" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_STATE/nrestarts"
      : > "$FAKE_STATE/auto-restart"
      if [ -f "$FAKE_STATE/crash-$v.late" ]; then  # its own line reaches journald after PID 1's
        printf '%s\n' "Started $2.service." "$2.service: Main process exited, code=exited, status=1/FAILURE" \
          >> "$FAKE_STATE/journal"
        echo "crash-at-start build: exiting" > "$FAKE_STATE/journal-pending"
      else
        printf '%s\n' "Started $2.service." "crash-at-start build: exiting" \
          "$2.service: Main process exited, code=exited, status=1/FAILURE" >> "$FAKE_STATE/journal"
        echo "crash-at-start build: exiting" >> "$FAKE_STATE/journal-own"
      fi
      exit 0
    fi
    rm -f "$FAKE_STATE/auto-restart"
    printf '%s\n' "$v" > "$FAKE_STATE/running"; : > "$FAKE_STATE/active"; exit 0;;
  show)
    echo "NRestarts=$(cat "$FAKE_STATE/nrestarts" 2>/dev/null || echo 0)"
    if [ -f "$FAKE_STATE/auto-restart" ]; then echo ActiveState=activating; echo SubState=auto-restart
    elif [ -f "$FAKE_STATE/active" ]; then echo ActiveState=active; echo SubState=running
    else echo ActiveState=inactive; echo SubState=dead; fi
    exit 0;;
esac
exit 0
"""

CURL = "#!/bin/sh\n" + RECORD + r"""
for a in "$@"; do
  case $a in http://caddy.test/*)  # the site through Caddy: the scripted code while a version runs
    v=$(cat "$FAKE_STATE/running" 2>/dev/null)
    code=$(cat "$FAKE_STATE/caddy-code-$v" 2>/dev/null || echo 200)
    if [ "$code" = 000 ]; then
      echo "curl: (7) Failed to connect to caddy.test port 80: Connection refused" >&2; printf '000'; exit 7
    fi
    printf '%s' "$code"; exit 0;;
  esac
done
for a in "$@"; do
  if [ "$a" = POST ]; then
    cat > "$FAKE_STATE/warn-stdin"
    env > "$FAKE_STATE/warn-env"
    pid=$$; : > "$FAKE_STATE/warn-cmdlines"
    while [ "$pid" -gt 1 ]; do
      tr '\000' ' ' < "/proc/$pid/cmdline" >> "$FAKE_STATE/warn-cmdlines"; echo >> "$FAKE_STATE/warn-cmdlines"
      pid=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status")
    done
    if [ -f "$FAKE_STATE/warn-refused" ]; then
      echo "curl: (7) Failed to connect to 127.0.0.1 port 3000: Connection refused" >&2; printf '000'; exit 7
    fi
    printf '%s' "$(cat "$FAKE_STATE/warn-code" 2>/dev/null || echo 200)"; exit 0
  fi
done
v=$(cat "$FAKE_STATE/running" 2>/dev/null)
if [ -z "$v" ] || [ ! -f "$FAKE_STATE/active" ]; then
  echo "curl: (7) Failed to connect to 127.0.0.1 port 3000: Connection refused" >&2; exit 7
fi
if [ -f "$FAKE_STATE/serve-$v.error" ]; then
  echo "curl: (22) The requested URL returned error: 500" >&2; exit 22
fi
if [ -f "$FAKE_STATE/serve-$v" ]; then cat "$FAKE_STATE/serve-$v"; exit 0; fi
printf '{"name":"makenotwork","version":"%s","commit":"c-%s"}\n' "$v" "$v"
"""

SLEEP = "#!/bin/sh\n" + RECORD + 'exec {sleep} "$@"\n'

JOURNALCTL = "#!/bin/sh\n" + RECORD + r"""
# journal: every line; journal-own: the service's own (_SYSTEMD_UNIT=); journal-pending: a stream
# line journald has not read yet: it shows from the second --sync on (systemd < 256)
case " $* " in *" --sync "*)
  n=$(cat "$FAKE_STATE/syncs" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_STATE/syncs"
  if [ "$n" -ge 1 ] && [ -f "$FAKE_STATE/journal-pending" ]; then
    tee -a "$FAKE_STATE/journal-own" < "$FAKE_STATE/journal-pending" >> "$FAKE_STATE/journal"
    rm -f "$FAKE_STATE/journal-pending"
  fi
  exit 0;;
esac
f=journal; case " $* " in *" _SYSTEMD_UNIT="*) f=journal-own;; esac
n=5; prev=; for a in "$@"; do [ "$prev" = -n ] && n=$a; prev=$a; done
tail -n "$n" "$FAKE_STATE/$f" 2>/dev/null
"""


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def parsed(self) -> Report:
        return Report.parse(self.out)

    @property
    def report(self) -> list[tuple[str, str]]:
        return list(self.parsed.entries)

    def get(self, key: str) -> str | None:
        """The value of a key reported once (a repeated one is an error)."""
        return self.parsed.one(key)

    def keys(self) -> list[str]:
        return self.parsed.keys()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeNode:
    """A release root (`root`) plus stand-in tools; `run` runs a node script against it."""

    def __init__(self, base: Path, root_name: str = "opt/make notwork"):
        self.base = base
        self.root = base / root_name  # a space in the release root on purpose
        self.root.mkdir(parents=True)
        self.state = base / "fake-state"
        self.state.mkdir()
        self.bin = base / "fakebin"
        self.bin.mkdir()
        self.scripts = []
        real_sleep = shutil.which("sleep", path="/usr/bin:/bin")
        for name, text in (("systemctl", SYSTEMCTL), ("curl", CURL), ("sleep", SLEEP.replace("{sleep}", real_sleep)),
                           ("journalctl", JOURNALCTL)):
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)

    # --- running scripts -----------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "FAKE_STATE": str(self.state),
                "FAKE_ROOT": str(self.root), "HOME": str(self.base), "LC_ALL": "C",
                "FAKE_REAL_SLEEP": shutil.which("sleep", path="/usr/bin:/bin"), **extra}

    def run(self, script: str, stdin: bytes = b"", shell: str = "/bin/sh", timeout: float = 60, **env) -> Run:
        res = subprocess.run([shell, "-c", script], input=stdin, capture_output=True, env=self.env(**env),
                             cwd=self.base, timeout=timeout)
        return Run(res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"))

    def calls(self, tool: str | None = None, *, watching: bool = False) -> list[list[str]]:
        """What ran, in order (the arguments only, for one tool). The switch's watching of the unit
        while it waits (`systemctl show`, `journalctl`) is left out unless `watching`."""
        log = self.state / "calls"
        lines = log.read_text().splitlines() if log.exists() else []
        recs = [line.split(SEP) for line in lines]
        if not watching:
            recs = [r for r in recs if not (r[0] == "journalctl" or r[:2] == ["systemctl", "show"])]
        return [r[1:] if tool else r for r in recs if tool is None or r[0] == tool]

    def clear_calls(self) -> None:
        (self.state / "calls").unlink(missing_ok=True)

    # --- what the node holds ---------------------------------------------------------------

    def release(self, version: str, files: dict[str, bytes] | None = None, *, commit: str | None = None,
                created_at: float = 0.0, failed: bool = False, modes: dict[str, int] | None = None) -> Path:
        """A release sando made: files, SHA256SUMS, manifest (and the failed marker)."""
        files = files if files is not None else {"makenotwork": f"binary {version}".encode(),
                                                 "error-pages/502.html": f"502 of {version}".encode()}
        d = self.root / "releases" / version
        for rel, data in files.items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod((modes or {}).get(rel, 0o755 if "/" not in rel else 0o644))
        (d / paths.MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        (d / paths.SUMS).write_text("".join(f"{sha(data)}  {rel}\n" for rel, data in files.items()))
        manifest = {"sando": 2, "version": version, "commit": commit or f"c-{version}", "createdAt": created_at,
                    "bins": sorted(r for r in files if "/" not in r), "files": {r: sha(b) for r, b in files.items()}}
        (d / paths.MANIFEST).write_text(json.dumps(manifest))
        if failed:
            (d / paths.FAILED).write_text("it failed\n")
        return d

    def foreign(self, name: str) -> Path:
        d = self.root / "releases" / name
        (d / "bin").mkdir(parents=True)
        return d

    def link(self, name: str, target: str) -> None:
        p = self.root / name
        if os.path.lexists(p):
            p.unlink()
        os.symlink(target, p)

    def point(self, current: str | None = None, previous: str | None = None) -> None:
        if current:
            self.link("current", f"releases/{current}")
        if previous:
            self.link("previous", f"releases/{previous}")

    def readlink(self, name: str) -> str | None:
        p = self.root / name
        return os.readlink(p) if os.path.islink(p) else None

    def versions(self) -> list[str]:
        rel = self.root / "releases"
        return sorted(os.listdir(rel)) if rel.is_dir() else []

    # --- the service ------------------------------------------------------------------------

    def start(self, version: str) -> None:
        """The service runs `version` (as after a restart)."""
        (self.state / "running").write_text(version + "\n")
        (self.state / "active").touch()

    def stop(self) -> None:
        (self.state / "active").unlink(missing_ok=True)

    def running(self) -> str | None:
        p = self.state / "running"
        return p.read_text().strip() if p.exists() and (self.state / "active").exists() else None

    def fail_restart(self, version: str = "all") -> None:
        (self.state / f"fail-restart-{version}").touch()

    def crash_at_start(self, version: str, *, late: bool = False) -> None:
        """`version` starts (its restart succeeds, Type=simple), then exits: systemd's auto-restart.
        late: its own line reaches the journal after PID 1's, from the second `journalctl --sync` on."""
        (self.state / f"crash-{version}").touch()
        if late:
            (self.state / f"crash-{version}.late").touch()

    def serve(self, version: str, body: str | None = None, *, error: bool = False) -> None:
        """What the app answers while `version` runs: a body, or an HTTP 500."""
        if error:
            (self.state / f"serve-{version}.error").touch()
        else:
            (self.state / f"serve-{version}").write_text(body)

    def caddy_answers(self, version: str, code: str) -> None:
        """What http://caddy.test/ (the site through Caddy) answers while `version` runs (default 200)."""
        (self.state / f"caddy-code-{version}").write_text(code)

    def warn_answer(self, code: str | None = None, refused: bool = False) -> None:
        if code is not None:
            (self.state / "warn-code").write_text(code)
        if refused:
            (self.state / "warn-refused").touch()

    def hang(self, tool: str, first_arg: str) -> tuple[Path, Path]:
        """The next `tool first_arg ...` waits (after recording the call) until the test creates
        the returned `go` file; it creates `reached` when it starts waiting."""
        flag = self.state / f"hang-{tool}-{first_arg}"
        flag.touch()
        return flag.with_name(flag.name + ".reached"), flag.with_name(flag.name + ".go")

    def state_file(self, name: str) -> str | None:
        p = self.state / name
        return p.read_text() if p.exists() else None

    def restarts(self) -> int:
        return sum(1 for c in self.calls("systemctl") if c[0] == "reload-or-restart")

    # --- the providers' transport, run locally ---------------------------------------------------

    def ssh_run(self, conn, command: str, *, stdin=None, timeout: float = 600, check: bool = True,
                retry: bool = False, on_line=None, on_sent=None):
        """Stands in for ssh.run: the command runs here, against this node (no SSH); the progress
        callbacks hear the whole output and input at the end."""
        from sando_components import ssh

        data = stdin if stdin is None or isinstance(stdin, bytes) else b"".join(stdin())
        self.scripts.append((command, data))
        r = self.run(command, stdin=data or b"", timeout=timeout)
        for line in r.out.splitlines() if on_line else ():
            on_line(line)
        if on_sent and data:
            on_sent(len(data))
        if check and r.rc != 0:
            raise ssh.RemoteError(f"{conn.label}: a remote command exited {r.rc}: {(r.err or r.out).strip()[-500:]}")
        return ssh.Result(r.rc, r.out, r.err, len(data or b""))

    scripts: list  # (command, stdin) of every ssh_run, in order

    def steps(self) -> list[str]:
        """The node-side steps (sh/<step>.sh) ssh_run ran, in order (scripts.command names them)."""
        return [cmd.rsplit(" sando-", 1)[1] for cmd, _ in self.scripts if " sando-" in cmd]


def connection(host: str = "127.0.0.9") -> dict:
    return {"host": host, "port": 22, "user": "root", "hostKey": None, "insecure": True}
