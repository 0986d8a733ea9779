"""Remote commands, built by small pure functions (nothing here runs anything).

The node-side steps are shell files in sh/ (probe, receive, switch and its parts, write-file),
rendered by scripts.py: the functions here only choose a step and its parameters (every value
a quoted shell variable). The small commands of the bootstrap are single lines, every value
quoted with shlex. tests/unit/test_commands.py pins the parameters and lines by exact string;
the steps run for real against a scratch directory in test_probe/test_receive/test_switch/
test_gate. Secrets never appear here: what needs one (the restart warning's token) reads it
from stdin.

A step on a node is one script in one SSH exec (one round trip). Scripts report with
`report KEY VALUE` (one JSON object per line), read by scripts.Report.parse.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable

from . import paths, scripts

q = shlex.quote


def _and(*cmds: str) -> str:
    return " && ".join(cmds)


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


def write_file(dest: str, mode: int, token: str, sha256: str | None = None) -> str:
    """Write stdin to dest atomically (sh/write-file.sh): a private temp file beside it, its
    mode, then a rename; the temp file is removed on any failure. With `sha256` (of the content
    sent), a content that arrived incomplete is refused instead of installed."""
    return scripts.command("write-file", DEST=dest, MODE=format(mode, "04o"), TOKEN=token, SHA256=sha256 or "")


def file_state(path: str) -> str:
    """sha256 and octal mode of a file, or nothing when it does not exist."""
    return f"if [ -f {q(path)} ]; then " + _and(f"sha256sum < {q(path)}", shlex.join(["stat", "-c", "%a", path])) + "; fi"


# --- what a node holds (one round trip) ----------------------------------------------------------


def db_params(service: str, database: str | None, env_file: str | None) -> dict[str, str]:
    """Where sh/db.sh finds the service's database: `database` (sando:migrations.database) if named,
    else DATABASE_PATH of the live unit's env file, else of `env_file` (the unit's, as git has it;
    else the service's default), else the service's default database."""
    return {"DATABASE": database or "", "ENV_FILE": env_file or paths.for_service(paths.DEFAULT_ENV_FILE, service),
            "DEFAULT_DATABASE": paths.for_service(paths.DEFAULT_DATABASE, service)}


def probe(release_root: str, service: str, db: dict | None = None) -> str:
    """The node read (sh/probe.sh): the service's state, zstd, `current`/`previous`, free KiB where
    releases go, every release (with its manifest) and foreign directory; with `db` (the migration
    gate's database and env file, and the pin; stack.db_read) the migrations its database has
    applied too, unless `current` already is the pin (nothing switches there)."""
    where = (db_params(service, db.get("database"), db.get("envFile")) if db
             else {"DATABASE": "", "ENV_FILE": "", "DEFAULT_DATABASE": ""})
    return scripts.command("probe", RELEASE_ROOT=release_root, SERVICE=service, DB_READ=1 if db else 0,
                           DB_PIN=(db or {}).get("pin") or "", **where)


# --- receiving a release (one round trip: stream in, unpack, verify, rename) ---------------------


def receive_release(release_root: str, version: str, token: str, need_kib: int, steps: Iterable[str],
                    compression: str) -> str:
    """Receive a release streamed on stdin (sh/receive.sh); `steps` are transfer.step() lines.
    compression "none": nothing is streamed (a local node, transfer.plan_local)."""
    if compression not in ("zstd", "gzip", "none"):
        raise ValueError(f"not a compression: {compression!r}")
    return scripts.command("receive", RELEASE_ROOT=release_root, VERSION=version, TOKEN=token,
                           NEED_KIB=int(need_kib), COMPRESSION=compression, STEPS="\n".join(steps))


# --- the switch (one round trip: verify, gate, warn, switch, restart, check, revert, prune) -------


def health_params(url: str, timeout: float, interval: float, commit: str, caddy_url: str | None = None
                  ) -> dict[str, object]:
    """sh/health.sh's parameters: whole seconds of timeout (rounded up), fast first waits; with
    caddy_url (sando:healthCheck.caddyUrl) the site must answer 2xx through Caddy too."""
    waits = [w for w in (0.05, 0.1, 0.2, 0.4) if w < interval]
    return {"HEALTH_URL": url, "HEALTH_TIMEOUT": math.ceil(timeout), "HEALTH_WAITS": " ".join(f"{w:g}" for w in waits),
            "HEALTH_INTERVAL": f"{interval:g}", "COMMIT": commit, "CADDY_URL": caddy_url or ""}


def gate_params(version: str, release: str, migrations: list[str], destructive: list[str], database: str | None,
                env_file: str, default_database: str, dry_run: str, allow_destructive: bool) -> dict[str, object]:
    """sh/gate.sh's parameters. `dry_run` is the operator's command (sando:migrations.dryRunCommand)
    with its placeholders already made shell variables ("$DB", "$SCRATCH", "$GATE_RELEASE")."""
    return {"VERSION": version, "GATE_RELEASE": release, "GATE_MIGRATIONS": "\n".join(migrations),
            "GATE_DESTRUCTIVE": "\n".join(destructive), "GATE_DATABASE": database or "", "GATE_ENV_FILE": env_file,
            "GATE_DEFAULT_DATABASE": default_database, "GATE_DRY_RUN": dry_run,
            "GATE_ALLOW_DESTRUCTIVE": int(bool(allow_destructive))}


def backup_params(backup_dir: str, keep: int = paths.BACKUPS_KEPT) -> dict[str, object]:
    return {"BACKUP_DIR": backup_dir, "BACKUP_KEEP": int(keep)}


def warning_params(url: str, seconds: int, abort: bool) -> dict[str, object]:
    return {"WARN_URL": url, "WARN_SECONDS": int(seconds), "WARN_ABORT": int(bool(abort))}


GATE_OFF = {"GATE_RELEASE": "", "GATE_MIGRATIONS": "", "GATE_DESTRUCTIVE": "", "GATE_DATABASE": "", "GATE_ENV_FILE": "",
            "GATE_DEFAULT_DATABASE": "", "GATE_DRY_RUN": "", "GATE_ALLOW_DESTRUCTIVE": 0, "BACKUP_DIR": "",
            "BACKUP_KEEP": 0}
WARNING_OFF = {"WARN_URL": "", "WARN_SECONDS": 0, "WARN_ABORT": 0}
BLUE_GREEN_OFF = {"BG": 0, "BG_PORTS": "", "BG_HOST": "", "BG_BIND_ENV": "", "BG_DRAIN": 0, "BG_HEALTH_PATH": "",
                  "BG_WARN_PATH": "", "BG_UPSTREAM": "", "BG_UNIT_DIR": "", "BG_ENV_DIR": "",
                  "BG_CADDYFILE": "", "BG_FRONT": ""}


def blue_green_off(drain: float) -> dict[str, object]:
    """sh/bluegreen.sh's parameters for the restart strategy: BG off; BG_DRAIN (sando:switch.drainSeconds)
    is how long an instance left from blueGreen keeps serving the requests it took when the switch
    turns blueGreen off."""
    return {**BLUE_GREEN_OFF, "BG_DRAIN": f"{float(drain):g}"}


def front(health_url: str) -> str:
    """blueGreen's front: what Caddy dials (127.0.0.1 and the port of the service's own unit, the
    health URL's); sando's nft rule points it at the live instance."""
    m = re.match(r"^(https?)://(?:[^@/]*@)?(\[[^\]]*\]|[^:/]*)(?::(\d+))?", health_url)
    port = m.group(3) if m and m.group(3) else ("443" if health_url.startswith("https") else "80")
    return f"127.0.0.1:{port}"


def blue_green_params(ports: Iterable[int], host: str, bind_env: str, drain: float, health_path: str,
                      warn_path: str, front_addr: str) -> dict[str, object]:
    """sh/bluegreen.sh's parameters (sando:switch.strategy blueGreen)."""
    return {"BG": 1, "BG_PORTS": " ".join(str(int(p)) for p in ports), "BG_HOST": host, "BG_BIND_ENV": bind_env,
            "BG_DRAIN": f"{float(drain):g}", "BG_HEALTH_PATH": health_path, "BG_WARN_PATH": warn_path,
            "BG_UPSTREAM": paths.UPSTREAM_FILE, "BG_UNIT_DIR": paths.UNIT_DIR,
            "BG_ENV_DIR": paths.INSTANCE_ENV_DIR, "BG_CADDYFILE": paths.CADDYFILE, "BG_FRONT": front_addr}


SWITCH_LOCK_WAIT = 900  # seconds a switch waits for another one still at work on its node (sh/switch.sh)


def switch(*, release_root: str, version: str, service: str, expect: str, health: dict[str, object],
           gate: dict[str, object] | None = None, warning: dict[str, object] | None = None,
           prune_ok: Iterable[str] = (), prune_failed: Iterable[str] = (),
           history: dict[str, object] | None = None, blue_green: dict[str, object] | None = None) -> str:
    """The whole switch of one node (sh/switch.sh). `health`, `gate` (with the backup's),
    `warning`, `history` (history.params: the node's record of who switched what) and
    `blue_green` (blue_green_params) are the parameters of the parts; None = that part is off."""
    from .history import HISTORY_OFF

    values = {**(gate or GATE_OFF), **(warning or WARNING_OFF), **(history or HISTORY_OFF),
              **(blue_green or BLUE_GREEN_OFF), **health}
    values.pop("VERSION", None)
    return scripts.command("switch", RELEASE_ROOT=release_root, VERSION=version, SERVICE=service, EXPECT=expect,
                           GATE=int(gate is not None), WARN=int(warning is not None), LOCK_WAIT=SWITCH_LOCK_WAIT,
                           PRUNE_OK=_names(prune_ok), PRUNE_FAILED=_names(prune_failed), **values)


def _names(names: Iterable[str]) -> str:
    """One name per line; a name with a line break is not one sando made (versions cannot hold one)."""
    return "\n".join(n for n in names if "\n" not in n and "\r" not in n)
