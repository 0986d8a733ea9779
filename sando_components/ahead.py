"""A database ahead of the release it goes to (issue 20.5): the migrations it applied that the
target release does not know, which of them were destructive, the pre-migration backup taken
before them, and the command that restores it. Used by `sando rollback` and, at preview, by a
manual pin (the pointer's diff): light (no pydantic, no sqlglot), so the provider process may
import it."""

from __future__ import annotations

import posixpath
import re
import shlex
import threading
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass
class Ahead:
    """Migrations a node's database has applied that the target release does not know."""

    node: str
    migrations: list[str]  # "3 drop_extra"
    destructive: list[str]
    backup: str | None  # the pre-migration backup taken before they were applied
    database: str


def migrations_ahead(node: str, applied: list[tuple[str, str]], database: str, target: set[str],
                     destructive: set[str]) -> Ahead | None:
    """`applied`: (version, description) the database has; `target`: the target release's migration
    versions; `destructive`: the versions sando knows to be destructive."""
    ahead = [(v, d) for v, d in applied if v not in target]
    if not ahead:
        return None
    return Ahead(node, [f"{v} {d}" for v, d in ahead], [f"{v} {d}" for v, d in ahead if v in destructive], None,
                 database)


def matching_backup(history: list[dict], backups: list[str], target: str) -> str | None:
    """The backup taken right before the switch away from `target` whose migrations moved the
    database on (`pre-<that version>-<UTC minute>.db`): the newest of that version. `backups`
    newest first."""
    after = [h.get("version") for h in history if h.get("from") == target and h.get("version") != target]
    for version in reversed(after):
        found = [b for b in backups if posixpath.basename(b).startswith(f"pre-{version}-")]
        if found:
            return found[0]
    return None


def restore_command(service: str, database: str, backup: str) -> str:
    """The command that puts the backup back as the live database (run on the node, as root)."""
    name = backup if re.fullmatch(r"[\w./+-]+", backup) else "'" + backup.replace("'", "''") + "'"
    dot = f'".restore {name}"' if "'" not in name else shlex.quote(f".restore {name}")
    return f"systemctl stop {service} && sqlite3 {shlex.quote(database)} {dot} && systemctl start {service}"


def describe(a: Ahead, target: str, service: str, ssh_hint: str) -> str:
    """One paragraph for the operator; `ssh_hint` is how to run a command on the node."""
    text = (f"{a.node}: the database ({a.database}) is ahead of {target} by migration(s) {', '.join(a.migrations)}"
            + (f"; DESTRUCTIVE: {', '.join(a.destructive)}" if a.destructive else "") + ". ")
    if a.backup:
        return text + (f"The backup from before them: {a.backup}; to restore it after the rollback: "
                       f"{ssh_hint} {shlex.quote(restore_command(service, a.database, a.backup))}")
    return text + "No backup from before them was found on the node."


def status_command(props: dict) -> str:
    """The node's status read this warning needs (sh/status.sh): its database's applied migrations,
    its switch history, its backups. `props`: the pointer's (service, releaseRoot, healthCheck, gate)."""
    from . import commands, paths, scripts

    gate, service = props.get("gate") or {}, props["service"]
    return scripts.command(
        "status", SERVICE=service, RELEASE_ROOT=props["releaseRoot"],
        HEALTH_URL=(props.get("healthCheck") or {}).get("url") or "", CADDY_URL="",
        **commands.db_params(service, gate.get("database"), gate.get("envFile")),
        BACKUP_DIR=gate.get("backupDir") or paths.for_service(paths.DEFAULT_BACKUP_DIR, service),
        HISTORY=paths.HISTORY, HISTORY_LINES=200)


# The program's head start (headstart.ahead -> read_early): the status read of each node that will
# switch (its live release is not the pin), begun as soon as the node's own read is done, so that
# the pointers' diffs, which the engine makes one at a time, find it done instead of each making
# its own round trip in turn (16 nodes: 2.2 s of a bump's 8.7 s). Keyed by node and command.
_early: dict[tuple, Future] = {}
_early_lock = threading.Lock()


def _early_key(props: dict, command: str) -> tuple:
    from .providers import base

    return (*base.node_key(props), command)


def read_early(args: dict) -> None:
    """Hook of the provider process (headstart.ahead): for each node whose gate is on and whose live
    release is not the pin, start its status read now (after the node's own read, on its connection)."""
    from . import ssh
    from .providers import base

    def read(props: dict, command: str, done: Future) -> None:
        try:
            state = base.node_state(props)
            if state.live == props.get("version") or not_ahead(state, props):
                # nothing will switch here, or the node's read says its database is not ahead of the
                # pin: warn_at_preview reads on its own if it must
                done.set_result(None)
                return
            conn = ssh.Conn.from_props(props["connection"], props.get("privateKey"), props.get("node"))
            done.set_result(ssh.run(conn, command, timeout=60, check=False))
        except BaseException as exc:  # noqa: BLE001 - warn_at_preview tries again itself
            done.set_exception(exc)

    for props in args.get("nodes") or []:
        if not isinstance(props, dict) or not (props.get("gate") or {}).get("enabled"):
            continue
        props = base.with_plain_key(props)
        command = status_command(props)
        done: Future = Future()
        with _early_lock:
            if _early.setdefault(_early_key(props, command), done) is not done:
                continue
        threading.Thread(target=read, args=(props, command, done), daemon=True).start()


def not_ahead(state, props: dict) -> bool:
    """Whether the node's read (its `applied` migrations, read with the gate on: sh/db.sh) shows a
    database with no migration the pin's release does not know (gate.migrations; the head start's
    props carry them too): then there is nothing to warn of and no status read to make. False when
    the read did not say (the status read decides)."""
    known = (props.get("gate") or {}).get("migrations")
    if state.applied is None or not isinstance(known, list):
        return False
    return set(state.applied) <= set(known)


def _status(conn, props: dict, command: str):
    """The status read: the head start's when it made this very one, else a round trip now."""
    from . import ssh

    with _early_lock:
        early = _early.get(_early_key(props, command))
    if early is not None:
        try:
            res = early.result(timeout=60)
            if res is not None:
                return res
        except Exception:  # noqa: BLE001 - read it again below, with this call's own error
            pass
    return ssh.run(conn, command, timeout=60, check=False)


def warn_at_preview(props: dict, olds: dict) -> None:
    """A manual pin (the pointer's version changes): when the node's database is ahead of the new
    version, say so in the preview (one read of the node, only when the version changes).
    Nothing here fails the run."""
    from . import diagnostics, history, scripts, ssh

    gate = props.get("gate") or {}
    version, service = props.get("version"), props.get("service")
    if not gate.get("enabled") or not isinstance(version, str) or olds.get("version") == version:
        return
    try:
        from .providers import base

        if not_ahead(base.node_state(props), props):
            return  # the node's read says so: nothing applied that the pin does not know
        conn = ssh.Conn.from_props(props["connection"], props.get("privateKey"), props.get("node"))
        res = _status(conn, props, status_command(props))
        report = scripts.Report.parse(res.out)
        applied = [(row.partition(" ")[0], row.partition(" ")[2]) for row in report.all("applied")]
        found = migrations_ahead(props.get("node") or conn.host, applied, report.one("database") or "?",
                                 set(gate.get("migrations") or []),
                                 set(props.get("knownDestructive") or []) | set(gate.get("destructive") or []))
        if found:
            records = [r for r in map(history.parse, report.all("history")) if r]
            found.backup = matching_backup(records, report.all("backup"), version)
            stack = (props.get("deploy") or {}).get("stack") or "STACK"
            diagnostics.log("warning", describe(found, version, service, f"sando ssh -s {stack} {found.node} --"))
    except Exception:  # noqa: BLE001 - a warning that cannot be made must not fail the preview
        return
