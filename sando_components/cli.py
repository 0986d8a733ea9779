"""`sando`: operator commands over Pulumi's Automation API and the nodes themselves. Plain
`pulumi up -s STACK` stays the primary interface; these save typing, read the nodes now and
refuse what is plainly wrong.

    sando status [STACK ...] [--json]
    sando promote --from testnot --to prod [--yes] [--now]
    sando rollback -s STACK [--to VERSION] [--yes] [--now] [--allow-failed] [--accept-destructive]

Decisions are pure functions of what the nodes say now (fleet.NodeNow: check_promotable,
rollback_plan, migrations_ahead, deployed_problems, status_rows, render_status); `Project` is the
thin layer that talks to the engine (one pulumi command per call); `main(argv, out=, err=,
stdin=, project=) -> exit code` is the entry (`python -m sando_components.cli`, or
.venv/bin/sando from `make setup`); nothing here calls sys.exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

from . import ahead, fleet, history, passphrase, scripts, ssh, times
from .config import StackConfig
from .errors import ConfigError
from .fleet import NodeNow
from .migrations import Migration, of_release

EXIT_CODES = ("Exit codes: 0 ok; 1 refused (what the nodes say) or failed; 2 bad arguments (unknown flag,\n"
              "stack or node, --to not retained, no --yes without a terminal); sando ssh: the command's.")
ENGINE_NOTE = ("Works on the Pulumi project in the current directory (--cwd DIR for another) with its\n"
               ".tools/bin/pulumi if there is one, else pulumi on PATH, and your backend and passphrase\n"
               "(PULUMI_BACKEND_URL or `pulumi login`, PULUMI_CONFIG_PASSPHRASE).")


class Usage(Exception):
    """A bad command line: `sando: FLAG: message`, exit 2."""

    def __init__(self, flag: str | None, message: str):
        super().__init__(f"{flag}: {message}" if flag else message)


class Refused(Exception):
    """The stacks' state says no (or the engine failed): `sando: message`, exit 1."""


# --- pure decisions ------------------------------------------------------------------------
# Every decision reads the nodes now (fleet.NodeNow: one exec per node, all at once), never a
# previous run's outputs, which an interrupted run or a hand-stopped service leaves stale.


def short(commit: str | None, n: int = 12) -> str:
    return commit[:n] if commit else "-"


def unreachable(nodes: list[NodeNow], what: str) -> None:
    """Refuse to decide `what` without every node (one line per node: why it could not be read)."""
    bad = [n for n in nodes if not n.reachable]
    if bad:
        raise Refused(f"cannot {what} without reading every node: "
                      + "; ".join(f"{n.name}: {n.error}" for n in bad))


def check_promotable(pin: str, pin_commit: str | None, nodes: list[NodeNow]) -> list[str]:
    """Why the source stack's nodes do not all serve its pinned version healthily now ([] = promotable)."""
    if not nodes:
        return ["it has no nodes"]
    problems = []
    for n in nodes:
        problems += n.problems()
        if not n.reachable:
            continue
        if n.live != pin:
            problems.append(f"{n.name} runs {n.live or 'nothing'} but the stack pins {pin} "
                            "(a failed or half-finished rollout?)")
        elif pin_commit and n.live_commit != pin_commit:
            problems.append(f"{n.name} runs commit {short(n.live_commit)}, {pin} is {short(pin_commit)} "
                            "in the stack's source repo (the tag moved?)")
    return problems


def moved_tag(version: str, commit: str, resolved: str | None, where: str, runs: str = "the source runs") -> str | None:
    """None when `version` still names `commit` in the target's repo (`where`), else why not."""
    if resolved == commit:
        return None
    if resolved is None:
        return f"{version} is not a tag, branch or commit in {where}"
    return (f"{version} names commit {short(resolved)} in {where}, but {runs} {short(commit)}: "
            "the name moved; deploy that commit under a new version name")


def _listing(node: NodeNow) -> str:
    held = sorted(node.releases.values(), key=lambda r: r.created_at)
    return ", ".join(f"{r.version} (failed)" if r.failed else r.version for r in held) or "none"


def _failed_on(node: NodeNow, version: str) -> bool:
    """The node marked the release failed (its switch failed), or its history has only failed switches to it."""
    r = node.releases.get(version)
    if r is not None and r.failed:
        return True
    results = [h.get("result") for h in node.history if h.get("version") == version]
    return bool(results) and "ok" not in results


def _walk_back(node: NodeNow) -> str | None:
    """The version this node's rollback goes to: the newest good version before the live one on
    its history's line (history.good_line), else its `previous` link (nodes from before the
    history), skipping failed releases; None when there is none (a fresh node)."""
    line = history.good_line(node.history)
    if line and node.live in line:
        candidates = line[:line.index(node.live)]
    elif line:
        candidates = line
    else:
        candidates = [node.previous] if node.previous else []
    for v in reversed(candidates):
        if v != node.live and not _failed_on(node, v):
            return v
    return None


@dataclass
class Plan:
    """What a rollback will do: pin `version` (built from `commit`), sent to the nodes in `send`."""

    version: str
    commit: str | None
    why: str
    retained: list[str]  # nodes that hold the release: nothing sent to them
    send: list[str]  # nodes that do not: the up uploads it there
    pin_only: bool = False  # every node runs it already: pinning it restarts nothing


def rollback_plan(pin: str | None, nodes: list[NodeNow], to: str | None = None,
                  allow_failed: bool = False) -> Plan:
    """Where `sando rollback` goes, decided from the nodes as they are now."""
    unreachable(nodes, "roll back")
    lives = {n.live for n in nodes}
    if to is None and len(lives) == 1 and None not in lives and next(iter(lives)) != pin:
        live = next(iter(lives))
        commits = {n.live_commit for n in nodes}
        return Plan(live, commits.pop() if len(commits) == 1 else None,
                    f"every node runs {live} but the stack pins {pin or '(nothing)'} (a failed or interrupted "
                    f"deploy): pin {live}, what runs; nothing restarts", [n.name for n in nodes], [], pin_only=True)
    if to is None:
        votes = {n.name: _walk_back(n) for n in nodes}
        chosen = {v for v in votes.values() if v}
        if not chosen:
            raise Refused("no earlier good version is recorded on the nodes; choose one with --to (retained: "
                          + "; ".join(f"{n.name}: {_listing(n)}" for n in nodes) + ")")
        if len(chosen) > 1:
            listed = ", ".join(f"{k}: {v or 'none'}" for k, v in votes.items())
            raise Refused(f"the nodes disagree on the version to roll back to ({listed}); choose one with --to")
        to = chosen.pop()
        why = f"the last good version before what runs now ({', '.join(sorted(filter(None, lives)))})"
    else:
        why = "chosen with --to"
    failed = [n.name for n in nodes if _failed_on(n, to)]
    if failed and not allow_failed:
        raise Refused(f"{to} failed on {', '.join(failed)} (marked failed there: its start or health check "
                      "failed); pass --allow-failed to roll back onto it anyway")
    commits = {n.releases[to].commit for n in nodes if to in n.releases}
    commits |= {h.get("commit") for n in nodes for h in n.history
                if h.get("version") == to and h.get("commit") and to not in n.releases}
    if len(commits) > 1:
        raise Refused(f"{to} is not one commit on every node ({', '.join(short(c) for c in sorted(commits))})")
    retained = [n.name for n in nodes if to in n.releases]
    send = [n.name for n in nodes if to not in n.releases]
    if not retained and why == "chosen with --to" and not any(h.get("version") == to for n in nodes
                                                              for h in n.history):
        raise Usage("--to", f"{to} is not retained on any node (retained: "
                    + "; ".join(f"{n.name}: {_listing(n)}" for n in nodes) + ")")
    return Plan(to, commits.pop() if commits else None, why, retained, send)


def deployed_problems(nodes: list[NodeNow], version: str, commit: str | None) -> list[str]:
    """What differs, read from the nodes after an up, from `version` at `commit` live and healthy everywhere."""
    problems = []
    for n in nodes:
        if not n.reachable:
            problems.append(f"{n.name} cannot be read ({n.error})")
        elif n.live != version or (commit and n.live_commit != commit):
            problems.append(f"{n.name} runs {n.live or 'nothing'} (commit {short(n.live_commit)})")
        else:
            problems += n.problems()
    return problems


# --- migrations the database is ahead of a target by (issue 20.5) ------------------------------------


def migrations_ahead(node: NodeNow, target: list[Migration], known: dict[str, Migration]) -> Ahead | None:
    """`target`: the target release's migrations; `known`: every migration sando can read by version
    (the live release's), for the destructive flag."""
    return ahead.migrations_ahead(node.name, node.applied, node.database, {m.version for m in target},
                                  {v for v, m in known.items() if m.destructive})


def matching_backup(node: NodeNow, target: str) -> str | None:
    return ahead.matching_backup(node.history, node.backups, target)


restore_command = ahead.restore_command


# --- status ---------------------------------------------------------------------------------


def when(value: str | datetime | None) -> str | None:
    """A time as ISO 8601 UTC to the minute (`2026-01-02T03:04Z`); ISO strings and naive datetimes
    are taken as UTC."""
    if not value:
        return None
    try:
        t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%MZ")


def _cut(text, width: int = 32) -> str | None:
    return None if text is None else str(text) if len(str(text)) <= width else str(text)[:width - 1] + "…"


def _size(kib: int) -> str:
    for unit, div in (("TB", 1024 ** 3), ("GB", 1024 ** 2), ("MB", 1024)):
        if kib >= div:
            return f"{kib / div:.1f} {unit}"
    return f"{kib} KB"


def describe_deploy(d: dict | None) -> str | None:
    """One line for a node's last switch record: version, when, who, how."""
    if not d:
        return None
    text = f"{d.get('version')} {when(d.get('at')) or '?'} by {d.get('by') or '?'} ({d.get('via') or '?'})"
    if d.get("result") != "ok":
        text += f" {d.get('result')}"
    if str(d.get("warning", "")).startswith("skipped"):
        text += " no warning"
    return text


def pending_of(node: NodeNow, release: list[Migration] | None) -> list[Migration] | None:
    """The pinned release's migrations the node's database has not applied (None: unknown)."""
    if release is None or not node.reachable or node.db.startswith("unreadable"):
        return None
    have = {v for v, _ in node.applied}
    return [m for m in release if m.version not in have]


def _pending_text(pending: list[Migration] | None) -> str | None:
    if pending is None:
        return None
    return _cut(", ".join(f"{m.version} {m.description}" + (" (destructive)" if m.destructive else "")
                          for m in pending) or "none")


def odd_bytes(nodes: list[NodeNow]) -> dict[str, str]:
    """{node: why} for each node whose live release has other bytes than its peers on the same
    version (issue 22.5): the bytes most of them run (the first node's, on a tie) are the reference;
    read from the nodes' manifests now."""
    by_version: dict[str, list[NodeNow]] = {}
    for n in nodes:
        if n.reachable and n.live and n.live in n.releases:
            by_version.setdefault(n.live, []).append(n)
    odd = {}
    for peers in by_version.values():
        groups: dict[str, list[NodeNow]] = {}
        for n in peers:
            groups.setdefault(json.dumps(n.releases[n.live].files, sort_keys=True), []).append(n)
        if len(groups) < 2:
            continue
        ref = max(groups.values(), key=len)[0]
        want = ref.releases[ref.live].files
        for n in peers:
            have = n.releases[n.live].files
            differ = sorted(f for f in set(want) | set(have) if want.get(f) != have.get(f))
            if differ:
                odd[n.name] = f"its {n.live} differs from {ref.name}'s: {', '.join(differ)}"
    return odd


def status_rows(stack: str, pin: str | None, nodes: list[NodeNow], release: list[Migration] | None = None,
                error: str | None = None) -> list[dict]:
    """One row per node of a stack, read now."""
    if error:
        return [{"stack": stack, "error": f"cannot read the stack: {error}"}]
    odd = odd_bytes(nodes)
    rows = []
    for n in nodes:
        if not n.reachable:
            rows.append({"stack": stack, "node": n.name, "error": f"unreachable: {n.error}"})
            continue
        caddy = n.caddy or None
        if caddy and n.caddy_health is not None:
            caddy = f"{caddy}, {n.caddy_health.text()}"
        rows.append({
            "stack": stack, "node": n.name,
            "live": (f"{n.live} (pin {pin})" if n.live and pin and n.live != pin else n.live)
                    + (" (other bytes!)" if n.name in odd else ""),
            "previous": n.previous, "commit": short(n.live_commit, 7),
            "unit": _cut(n.unit.split()[0] if n.unit.split()[:1] == ["active"] else n.unit, 20),
            "health": _cut(n.health.text() if n.health else None),
            "caddy": _cut(caddy), "migrations": _pending_text(pending_of(n, release)),
            "free": _size(n.free_kib), "last": describe_deploy(n.last_deploy),
        })
    return rows


COLUMNS = (("stack", "STACK"), ("node", "NODE"), ("live", "LIVE"), ("previous", "PREVIOUS"), ("commit", "COMMIT"),
           ("unit", "UNIT"), ("health", "HEALTH"), ("caddy", "CADDY"), ("migrations", "PENDING MIGRATIONS"),
           ("free", "FREE"), ("last", "LAST DEPLOY"))


def render_status(rows: list[dict]) -> str:
    """A plain-text table; a missing value shows as '-'; a node or stack that could not be read is
    one line saying why."""
    cells = [[title for _, title in COLUMNS]]
    cells += [["-" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS] for row in rows]
    plain = [line for line, row in zip(cells, [None, *rows]) if row is None or not row.get("error")]
    widths = [max(len(line[i]) for line in (cells if i < 2 else plain)) for i in range(len(COLUMNS))]
    out = []
    for line, row in zip(cells, [None, *rows]):
        if row is not None and row.get("error"):
            head = [row["stack"].ljust(widths[0]), (row.get("node") or "-").ljust(widths[1]), row["error"]]
            out.append("  ".join(head))
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return "\n".join(out) + "\n"


GENERIC_ERRORS = ("update failed", "preview failed", "resource monitor has terminated")


def engine_error(text: str) -> str | None:
    """The first specific error of pulumi's output, preferring its Diagnostics section: not the
    closing 'update failed'; for a Python traceback, its last line (the exception)."""
    lines = [re.sub(r"^\s*(stdout|stderr): ", "", line) for line in text.splitlines()]  # a CommandError's text
    start = next((i for i, line in enumerate(lines) if line.strip() == "Diagnostics:"), 0)
    for i in range(start, len(lines)):
        message = lines[i].strip()
        if not message.startswith("error:"):
            continue
        message = message[6:].strip()
        if message.startswith("Traceback"):
            block = [line.strip() for line in lines[i + 1:]]
            block = block[:block.index("")] if "" in block else block
            message = block[-1] if block else message
        elif message.startswith("the deploy failed on ") and message.endswith(":"):  # the verdict: its
            block = [line.strip() for line in lines[i + 1:]]  # node errors are the lines under it
            block = block[:block.index("")] if "" in block else block
            message = "; ".join(block) or message
        if message and not message.lower().startswith(GENERIC_ERRORS):
            return message
    return None


def one_line(text: str) -> str:
    """An error for the operator in one line: pulumi's own error, else the last line of the text."""
    lines = [re.sub(r"^\s*(stdout|stderr): ", "", line).strip() for line in text.splitlines()]
    return engine_error(text) or next((line for line in reversed(lines) if line), "failed")


# --- the engine (Automation API) ----------------------------------------------------------


def git_commit(repo: Path, ref: str) -> str | None:
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


class Project:
    """The Pulumi project in a directory, driven through the Automation API's command runner. Stacks
    are named by strings; the operator's selected stack (`pulumi stack select`) is never changed.
    Each method is one pulumi command at most: no `stack output`/`stack history` runs the
    Automation API's Stack.up adds (issue 24). A stack the operator names is used by that name:
    `pulumi stack ls` (~0.5 s) runs only to list all stacks, or to say which exist when a named
    one does not; a stack's outputs are read once (one `stack output`) until an up changes them."""

    def __init__(self, directory: str):
        from pulumi import automation as auto

        self.auto = auto
        self.dir = Path(directory).resolve()
        if not any((self.dir / f"Pulumi.{ext}").is_file() for ext in ("yaml", "yml", "json")):
            raise Usage("--cwd", f"{self.dir} is not a Pulumi project (no Pulumi.yaml)")
        own = self.dir / ".tools" / "bin" / "pulumi"
        try:
            command = auto.PulumiCommand(root=str(own.parent.parent)) if own.is_file() else auto.PulumiCommand()
        except FileNotFoundError:
            raise Refused(f"no pulumi engine: no {own} (make setup) and no pulumi on PATH") from None

        class Workspace(auto.LocalWorkspace):
            def select_stack(self, stack_name: str) -> None:
                pass  # every command passes --stack; names are checked against `pulumi stack ls`

        env = {} if "PULUMI_SKIP_UPDATE_CHECK" in os.environ else {"PULUMI_SKIP_UPDATE_CHECK": "true"}
        env.setdefault("PULUMI_PARALLEL", os.environ.get("PULUMI_PARALLEL", "64"))  # every node at once
        # the state written once per run, not after every step (README "Performance"; the nodes are the truth)
        env.setdefault("PULUMI_SKIP_CHECKPOINTS", os.environ.get("PULUMI_SKIP_CHECKPOINTS", "true"))
        self.ws = Workspace(work_dir=str(self.dir), pulumi_command=command, env_vars=env)
        self._names: list[str] | None = None
        self._flags: dict[str, str] = {}  # stack name -> the flag that named it (for Usage)
        self._config: dict[str, StackConfig] = {}
        self._outputs: dict[str, dict] = {}

    def _pulumi(self, args: list[str], env: dict | None = None, out: TextIO | None = None,
                err: TextIO | None = None):
        try:
            return self.ws.pulumi_command.run(args, str(self.dir), {**self.ws.env_vars, **(env or {})},
                                              _printer(out) if out else None, _printer(err) if err else None)
        except self.auto.errors.ConcurrentUpdateError:
            stack = args[args.index("--stack") + 1] if "--stack" in args else "the stack"
            raise Refused(f"{stack} is locked by another update (`pulumi cancel -s {stack}` clears a stale lock)") \
                from None
        except self.auto.errors.CommandError as exc:
            what = " ".join(a for a in args[:2] if not a.startswith("-"))
            if out is not None:  # its output, the error with it, went to the operator as it came: said once
                stack = f" of {args[args.index('--stack') + 1]}" if "--stack" in args else ""
                raise Refused(f"pulumi {what}{stack} failed (its error is above)") from None
            raise Refused(f"pulumi {what} failed: {engine_error(str(exc)) or one_line(str(exc))}") from None

    def stack_names(self) -> list[str]:
        if self._names is None:
            self._names = [s.name for s in self.ws.list_stacks()]
        return self._names

    def stack(self, name: str, flag: str) -> str:
        """The stack as the operator named it (pulumi resolves it); a name that is no stack is a
        Usage error naming the flag, raised by the first command on it (no `stack ls` up front)."""
        self._flags.setdefault(name, flag)
        return name

    def _no_such_stack(self, name: str, exc: Exception) -> None:
        """Usage (naming the flag) when `exc` is pulumi's "no stack named" for `name`."""
        if "no stack named" in str(exc) and name in self._flags:
            names = self.stack_names()
            raise Usage(self._flags[name], f"no stack {name!r} in {self.dir} (stacks: {', '.join(names) or 'none'})") \
                from None

    def config(self, name: str) -> StackConfig:
        """The stack's validated config, secrets decrypted in memory (`pulumi config --show-secrets
        --json` on a pipe: never on disk or argv); a bad key is named as the program would."""
        if name not in self._config:
            unsafe = passphrase.problem(self.dir, name)
            if unsafe:
                raise Refused(unsafe)
            try:
                res = self._pulumi(["config", "--json", "--show-secrets", "--stack", name])
            except Refused as exc:
                self._no_such_stack(name, exc)
                raise
            try:
                self._config[name] = fleet.stack_config(json.loads(res.stdout or "{}"))
            except ConfigError as exc:
                raise Refused(f"{name}: {exc}") from None
        return self._config[name]

    def nodes_now(self, cfg: StackConfig) -> list[NodeNow]:
        """Every node of the stack as it is now (one exec per node, all at once)."""
        return fleet.read(cfg)

    def source_repo(self, cfg: StackConfig) -> Path:
        """sando:source.repo (relative to the project dir, as the program reads it)."""
        return (self.dir / cfg.source.repo).resolve()

    def commit_of(self, cfg: StackConfig, version: str) -> str | None:
        return git_commit(self.source_repo(cfg), version)

    def migrations(self, cfg: StackConfig, commit: str | None) -> list[Migration] | None:
        """The release's migrations at `commit` (None: the gate is off or the commit cannot be read)."""
        if not cfg.migrations.gate or not commit:
            return None
        try:
            return of_release(str(self.source_repo(cfg)), commit, cfg.migrations.dir)
        except Exception:  # noqa: BLE001 - a status without the pending column, not a failed status
            return None

    def outputs(self, name: str) -> dict:
        """The stack's outputs (`pulumi stack output --json`: secret ones masked, no passphrase), read
        once until an up; {} when there are none or they cannot be read."""
        if name not in self._outputs:
            try:
                res = self._pulumi(["stack", "output", "--json", "--stack", name])
                outs = json.loads(res.stdout or "{}")
            except (Refused, ValueError):
                outs = None
            self._outputs[name] = outs if isinstance(outs, dict) else {}
        return self._outputs[name]

    def host_commit(self, name: str) -> str | None:
        """The host-config commit the stack's last up installed (its `hostConfig` output), or None
        (no such output: a stack deployed before host config was tracked)."""
        host = self.outputs(name).get("hostConfig")
        return host.get("commit") if isinstance(host, dict) else None

    _KEEP = object()

    def pin(self, name: str, version: str | None, host: "str | None | object" = _KEEP,
            verified: "dict | None | object" = _KEEP) -> None:
        """Set (None: remove) sando:version and, when given, sando:bootstrap.ref (promote carries the
        host config commit) and sando:verifiedBuild (the bytes promote read from the source's nodes,
        which the target's Release must match, issue 22.1): one `config set-all` and/or one
        `config rm-all`, not one run per key."""
        keys: dict[str, str | None] = {"sando:version": version}
        if host is not self._KEEP:
            keys["sando:bootstrap.ref"] = host  # type: ignore[assignment]
        if verified is not self._KEEP:
            keys["sando:verifiedBuild"] = None if verified is None else json.dumps(verified, sort_keys=True)
        sets = [a for k, v in keys.items() if v is not None for a in ("--plaintext", f"{k}={v}")]
        rms = [k for k, v in keys.items() if v is None]
        path = ["--path"] if "sando:bootstrap.ref" in keys else []
        if sets:
            self._pulumi(["config", "set-all", *path, *sets, "--stack", name])
        if rms:
            self._pulumi(["config", "rm-all", *path, *rms, "--stack", name])

    def preview(self, name: str, out: TextIO, err: TextIO, env: dict | None = None) -> None:
        self._pulumi(["preview", "--stack", name, "--color", "never", "--suppress-progress", "--non-interactive"],
                     env, out, err)

    def up(self, name: str, out: TextIO, err: TextIO, message: str, env: dict | None = None) -> None:
        self._outputs.pop(name, None)
        self._pulumi(["up", "--yes", "--skip-preview", "--stack", name, "--message", message, "--color", "never",
                      "--suppress-progress", "--suppress-outputs", "--non-interactive"], env, out, err)

    def sent(self, name: str) -> dict[str, int]:
        """Bytes each node was sent by the last up (`pulumi stack output`: no secrets, no passphrase)."""
        nodes = self.outputs(name).get("nodes")
        nodes = nodes if isinstance(nodes, dict) else {}
        return {k: int(((v or {}).get("lastTransfer") or {}).get("bytesSent") or 0) for k, v in nodes.items()}


def _printer(stream: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()
    return write


# --- the commands -----------------------------------------------------------------------------


@dataclass
class Context:
    out: TextIO
    err: TextIO
    stdin: TextIO
    project: Callable[[str], Project] = Project  # tests pass a fake


def _need_terminal(args, ctx: Context) -> None:
    if not args.yes and not (hasattr(ctx.stdin, "isatty") and ctx.stdin.isatty()):
        raise Usage("--yes", "no terminal to confirm on (stdin is not a TTY); pass --yes to deploy without asking")


def _confirm(question: str, ctx: Context) -> bool:
    ctx.out.write(f"{question} [y/N] ")
    ctx.out.flush()
    try:
        answer = ctx.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n"):
        ctx.out.write("\n")
    return answer.strip().lower() in ("y", "yes")


def _live(nodes: list[NodeNow]) -> str:
    """What the readable nodes run now: "v1, v2"; "nothing" on a node with no release live yet."""
    return ", ".join(sorted({n.live or "nothing" for n in nodes if n.reachable})) or "nothing"


def _deploy(project: Project, stack: str, cfg: StackConfig, version: str, commit: str | None, via: str,
            message: str, args, ctx: Context, host: str | None = None, verified: dict | None = None,
            nodes_before: list[NodeNow] | None = None) -> int:
    """Pin `version` (and with `host` the host config commit, sando:bootstrap.ref; with `verified` the
    bytes it must have, sando:verifiedBuild), preview, confirm, up (SANDO_VIA tells the program how it
    was started, so each switch records it on the node), then read the nodes: `version` at `commit`
    live and healthy on every one. The pins are put back if the preview fails, the operator says no,
    or the up fails with no node switched (`nodes_before`: what they ran before, issue 19.8)."""
    before = cfg.version
    host_before = cfg.bootstrap.ref if host else None
    verified_before = cfg.verified_build.model_dump(by_alias=True) if cfg.verified_build else None
    env = {"SANDO_VIA": via, "SANDO_BY": history.operator()}
    if getattr(args, "now", False):
        env["SANDO_NOW"] = "1"

    def pins(version_: str | None, host_: str | None, verified_: dict | None) -> None:
        project.pin(stack, version_, **({"host": host_} if host else {}),
                    **({"verified": verified_} if verified else {}))

    def put_back() -> None:
        pins(before, host_before, verified_before)

    pins(version, host, verified)
    try:
        ctx.out.write(f"sando: preview of {stack} with sando:version {version}:\n")
        project.preview(stack, ctx.out, ctx.err, env)
        if not args.yes and not _confirm(f"Deploy {version} ({short(commit)}) to {stack}?", ctx):
            raise Refused(f"not deployed; {stack}'s sando:version is back to {before or '(unset)'}")
    except BaseException:
        put_back()
        raise
    if cfg.restart_warning_seconds > 0 and not getattr(args, "now", False):
        ctx.out.write(f"sando: users get {cfg.restart_warning_seconds}s notice before each restart "
                      "(--now skips it)\n")
    try:
        with _countdown(ctx, cfg.restart_warning_seconds if not getattr(args, "now", False) else 0):
            project.up(stack, ctx.out, ctx.err, message, env)
    except Refused as exc:
        if nodes_before is not None and _none_switched(nodes_before, project.nodes_now(cfg)):
            put_back()
            raise Refused(f"{exc}\nno node of {stack} switched: its sando:version is back to {before or '(unset)'} "
                          f"(nothing to commit); see `sando status {stack.split('/')[-1]}`") from None
        raise Refused(f"{exc}\n{stack}'s sando:version stays {version} (was {before or '(unset)'}); "
                      f"see `sando status {stack.split('/')[-1]}`") from None
    nodes = project.nodes_now(cfg)
    problems = deployed_problems(nodes, version, commit)
    if host and project.host_commit(stack) != host:
        problems.append(f"host config is at {short(str(project.host_commit(stack)))}, not {short(host)}")
    if problems:
        raise Refused(f"{stack} does NOT run {version} at {short(commit)} after the up: " + "; ".join(problems))
    sent = project.sent(stack)
    ctx.out.write(f"sando: {stack} runs {version} ({short(commit)}) on every node ({', '.join(n.name for n in nodes)}),"
                  f" healthy now; {sum(sent.values())} bytes sent"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in sent.items() if v)})" if any(sent.values()) else "")
                  + f". Commit Pulumi.{stack.split('/')[-1]}.yaml to record the pin.\n")
    return 0


def _none_switched(before: list[NodeNow], after: list[NodeNow]) -> bool:
    """Whether every node runs what it ran before the up (a node that cannot be read now counts
    as switched: nothing is put back on a guess)."""
    was = {n.name: (n.live, n.live_commit) for n in before if n.reachable}
    return all(n.reachable and was.get(n.name, (None, None)) == (n.live, n.live_commit) for n in after)


def _source_bytes(source: str, nodes: list[NodeNow]) -> dict[str, str]:
    """The sha256 of every file of the release live on the source's nodes (read from them now):
    what the target must run byte for byte (issue 22.1). Nodes that disagree are refused."""
    seen: dict[str, list[str]] = {}
    files: dict[str, dict[str, str]] = {}
    for n in nodes:
        release = n.releases.get(n.live) if n.live else None
        if release is None:
            raise Refused(f"{source}: {n.name}'s live release cannot be read (no manifest)")
        key = json.dumps(release.files, sort_keys=True)
        seen.setdefault(key, []).append(n.name)
        files[key] = release.files
    if len(seen) > 1:
        first, *others = files.values()
        differ = sorted(f for other in others for f in set(first) | set(other) if first.get(f) != other.get(f))
        raise Refused(f"{source} is not promotable: its nodes run {nodes[0].live} with different bytes "
                      f"({' / '.join(', '.join(v) for v in seen.values())} differ in {', '.join(dict.fromkeys(differ))}); "
                      "redeploy it from one build first")
    return next(iter(files.values()))


def gate_verdict(target: str, cfg: StackConfig, version: str, release: list[Migration] | None,
                 nodes: list[NodeNow]) -> tuple[list[str], str | None]:
    """What the target's migration gate will say of `version` (read from its nodes now), said before
    promote asks (issue 19.8): (lines to show, why it would refuse or None)."""
    if not cfg.migrations.gate:
        return [f"sando: migration gate: off on {target}"], None
    if release is None:
        return [f"sando: migration gate: the migrations of {version} cannot be read"], None
    allowed = not cfg.migrations.refuse_destructive or version in cfg.migrations.allow_destructive
    lines, refused = [], []
    for n in nodes:
        pending = pending_of(n, release)
        if pending is None:
            lines.append(f"  {n.name}: pending migrations unknown ({n.error or n.db})")
            continue
        if not pending:
            lines.append(f"  {n.name}: no pending migrations")
            continue
        bad = [m for m in pending if m.destructive]
        empty = n.db == "missing"  # a new node: nothing to destroy, the gate lets it pass
        lines.append(f"  {n.name}: pending {', '.join(f'{m.version} {m.description}' for m in pending)}"
                     + (f"; destructive: {', '.join(f'{m.version} {m.description}' for m in bad)}" if bad else "")
                     + (" (the database does not exist yet: nothing to destroy)" if bad and empty else ""))
        if bad and not empty and not allowed:
            refused.append(f"{n.name} ({', '.join(f'{m.version} {m.description}' for m in bad)})")
    rule = ("allows destructive migrations" if not cfg.migrations.refuse_destructive else
            f"allows them for {version} (sando:migrations.allowDestructive)" if allowed else
            f"refuses destructive migrations (sando:migrations.refuseDestructive) and {version} is not in "
            "sando:migrations.allowDestructive")
    head = f"sando: migration gate on {target} for {version}: {target} {rule}"
    why = None
    if refused:
        short_name = target.split("/")[-1]
        why = (f"{target} would refuse {version}: destructive migrations pending on {'; '.join(refused)}, and {target} "
               f"refuses them (sando:migrations.refuseDestructive); nothing was changed. If the data loss is "
               f"intended: pulumi config set --path 'sando:migrations.allowDestructive[{len(cfg.migrations.allow_destructive)}]' "
               f"{version} -s {short_name}, then promote again")
    return [head, *lines], why


class _countdown:
    """On a terminal, the restart warning's notice counted down on one line while the up runs
    (issue 20.6); nothing otherwise."""

    def __init__(self, ctx: Context, seconds: int):
        self.ctx, self.seconds = ctx, seconds
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self):
        if self.seconds > 0 and hasattr(self.ctx.err, "isatty") and self.ctx.err.isatty():
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        for left in range(self.seconds, 0, -1):
            self.ctx.err.write(f"\rsando: restart warning: up to {left}s before the restart... ")
            self.ctx.err.flush()
            if self.stop.wait(1):
                break
        self.ctx.err.write("\r" + " " * 60 + "\r")

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()


def _same_commit(project: Project, stack: str, cfg: StackConfig, version: str, commit: str, runs: str) -> None:
    """The program resolves the pin in the stack's sando:source.repo: it must name `commit` there."""
    repo = project.source_repo(cfg)
    if not repo.is_dir():
        raise Refused(f"{stack}'s sando:source.repo {repo} is not a directory")
    moved = moved_tag(version, commit, git_commit(repo, version), f"{stack}'s source repo {repo}", runs)
    if moved:
        raise Refused(moved)


def cmd_promote(args, ctx: Context) -> int:
    _need_terminal(args, ctx)
    if args.source == args.target:
        raise Usage("--to", "is the same stack as --from")
    project = ctx.project(args.cwd)
    source, target = project.stack(args.source, "--from"), project.stack(args.target, "--to")
    scfg, tcfg = project.config(source), project.config(target)
    with ThreadPoolExecutor(max_workers=2) as pool:  # both fleets at once
        src_nodes, dst_nodes = pool.map(project.nodes_now, (scfg, tcfg))
    problems = check_promotable(scfg.version, project.commit_of(scfg, scfg.version), src_nodes)
    if problems:
        raise Refused(f"{source} is not promotable (read from its nodes now): " + "; ".join(problems))
    version, commit = scfg.version, src_nodes[0].live_commit
    _same_commit(project, target, tcfg, version, commit, "the source runs")
    ctx.out.write(f"sando: promote {source} -> {target}: {version} ({short(commit)}), healthy on every {source} "
                  f"node now; {target} runs {_live(dst_nodes)} now\n")
    message = f"sando promote {source} -> {target}: {version} ({short(commit)}) by {history.operator()}"
    host = project.host_commit(source)  # the host config commit the source runs
    if host:
        ctx.out.write(f"sando: and the host config {source} runs: sando:bootstrap.ref {short(host)}\n")
    files = _source_bytes(source, src_nodes)  # the bytes prod must run (issue 22.1)
    fetched = fleet.fetch_release(scfg, next(n for n in scfg.nodes if n.name == src_nodes[0].name), version, files)
    ctx.out.write(f"sando: {target} gets {source}'s own bytes: {len(files)} files, sha256 read from {source}'s nodes "
                  f"(sando:verifiedBuild); {fetched} bytes fetched from {src_nodes[0].name}\n")
    verified = {"from": source.split("/")[-1], "version": version, "commit": commit, "files": files}
    lines, refusal = gate_verdict(target, tcfg, version, project.migrations(tcfg, commit), dst_nodes)
    for line in lines:
        ctx.out.write(line + "\n")
    if refusal:
        raise Refused(refusal)
    return _deploy(project, target, tcfg, version, commit, "sando promote", message, args, ctx, host, verified,
                   dst_nodes)


def _ahead_warnings(project: Project, cfg: StackConfig, plan: Plan, nodes: list[NodeNow]) -> list[ahead.Ahead]:
    """Per node, the migrations its database is ahead of the target by (issue 20.5)."""
    if plan.pin_only or not cfg.migrations.gate:
        return []
    target = project.migrations(cfg, plan.commit)
    if target is None:
        return []
    known: dict[str, Migration] = {}
    for commit in {n.live_commit for n in nodes if n.live_commit}:
        known.update({m.version: m for m in project.migrations(cfg, commit) or []})
    found = []
    for n in nodes:
        a = migrations_ahead(n, target, known)
        if a:
            a.backup = matching_backup(n, plan.version)
            found.append(a)
    return found


def cmd_rollback(args, ctx: Context) -> int:
    _need_terminal(args, ctx)
    project = ctx.project(args.cwd)
    stack = project.stack(args.stack, "-s")
    cfg = project.config(stack)
    nodes = project.nodes_now(cfg)
    plan = rollback_plan(cfg.version, nodes, args.to, args.allow_failed)
    if plan.commit is None:
        plan.commit = project.commit_of(cfg, plan.version)
    if plan.commit is None:
        raise Refused(f"{plan.version} is not a tag, branch or commit in {stack}'s source repo "
                      f"{project.source_repo(cfg)}")
    _same_commit(project, stack, cfg, plan.version, plan.commit, "the nodes' release is")
    live = _live(nodes)
    if plan.pin_only:
        ctx.out.write(f"sando: {stack}: {plan.why}\n")
    else:
        where = (f"retained on {', '.join(plan.retained)}: nothing sent there" if plan.retained else "")
        if plan.send:
            where += ("; " if where else "") + f"not retained on {', '.join(plan.send)}: it is built and sent there"
        ctx.out.write(f"sando: roll {stack} back from {live} to {plan.version} ({short(plan.commit)}): {plan.why}; "
                      f"{where}\n")
    found = _ahead_warnings(project, cfg, plan, nodes)
    for a in found:
        ctx.out.write("sando: WARNING " + ahead.describe(a, plan.version, cfg.service,
                                                          f"sando ssh -s {stack.split('/')[-1]} {a.node} --") + "\n")
    if any(a.destructive for a in found) and not args.accept_destructive:
        raise Refused(f"not rolled back: the database is ahead of {plan.version} by destructive migrations (see "
                      "above); if the data loss is understood, run again with --accept-destructive")
    via = "sando rollback"
    message = f"sando rollback {stack}: {live} -> {plan.version} ({short(plan.commit)}) by {history.operator()}"
    return _deploy(project, stack, cfg, plan.version, plan.commit, via, message, args, ctx, nodes_before=nodes)


def cmd_status(args, ctx: Context) -> int:
    project = ctx.project(args.cwd)
    stacks = [project.stack(name, "STACK") for name in args.stacks] or project.stack_names()
    if not stacks:
        ctx.out.write(f"sando: no stacks in {project.dir} (pulumi stack init NAME)\n")
        return 0

    def one(stack: str) -> dict:
        try:
            cfg = project.config(stack)
            nodes = project.nodes_now(cfg)
            commit = project.commit_of(cfg, cfg.version)
            return {"stack": stack, "cfg": cfg, "nodes": nodes, "commit": commit,
                    "release": project.migrations(cfg, commit)}
        except Usage:
            raise  # a named stack that does not exist: the operator's typo, exit 2
        except Exception as exc:  # noqa: BLE001 - one unreadable stack must not hide the others
            return {"stack": stack, "error": one_line(str(exc))}

    with ThreadPoolExecutor(max_workers=8) as pool:
        read = list(pool.map(one, stacks))
    if args.json:
        ctx.out.write(json.dumps({"stacks": [_status_json(r) for r in read]}, indent=2) + "\n")
    else:
        rows = [row for r in read for row in status_rows(
            r["stack"], r["cfg"].version if "cfg" in r else None, r.get("nodes") or [], r.get("release"),
            r.get("error"))]
        ctx.out.write(render_status(rows))
        for r in read:
            for name, why in odd_bytes(r.get("nodes") or []).items():
                ctx.out.write(f"sando: {r['stack']}/{name} runs other bytes than its peers: {why}\n")
    failed = [r["stack"] for r in read if r.get("error")]
    down = [f"{r['stack']}/{n.name}" for r in read for n in r.get("nodes") or [] if not n.reachable]
    if failed or down:
        ctx.err.write(f"sando: could not read {', '.join(failed + down)}\n")
    return 1 if failed or down else 0


def _status_json(r: dict) -> dict:
    if r.get("error"):
        return {"stack": r["stack"], "error": r["error"]}
    out = {"stack": r["stack"], "version": r["cfg"].version, "commit": r["commit"], "nodes": []}
    odd = odd_bytes(r["nodes"])
    for n in r["nodes"]:
        node = n.as_json()
        pending = pending_of(n, r["release"])
        if n.reachable:
            node["otherBytes"] = odd.get(n.name)  # issue 22.5: None = the same bytes as its peers
            node["pendingMigrations"] = None if pending is None else [
                {"version": m.version, "description": m.description, "destructive": m.destructive} for m in pending]
        out["nodes"].append(node)
    return out


def _node_names(cfg: StackConfig, name: str | None, stack: str) -> list:
    """The stack's nodes, or the one named (Usage naming NODE when there is no such node)."""
    if name is None:
        return list(cfg.nodes)
    found = [n for n in cfg.nodes if n.name == name]
    if not found:
        raise Usage("NODE", f"no node {name!r} in {stack} (nodes: {', '.join(n.name for n in cfg.nodes)})")
    return found


def cmd_logs(args, ctx: Context) -> int:
    project = ctx.project(args.cwd)
    stack = project.stack(args.stack, "-s")
    cfg = project.config(stack)
    nodes = _node_names(cfg, args.node, stack)
    lines = args.lines if args.lines is not None or args.since else 100
    command = fleet.logs_command(cfg.service, cfg.release_root, lines, args.since, args.follow)
    lock = threading.Lock()
    codes: dict[str, int] = {}
    ended = threading.Event()  # Ctrl-C: what the streams say after it is not news

    def say(node, said: str) -> None:
        with lock:
            if not ended.is_set():  # a transport error names its node already ("node1 (root@...): ...")
                ctx.err.write(f"sando: {said if said.startswith(node.name + ' ') else f'{node.name}: {said}'}\n")

    def one(node) -> None:
        prefix = f"{node.name} | " if len(nodes) > 1 else ""
        try:
            codes[node.name] = fleet.stream(fleet.conn(cfg, node), command, ctx.out, ctx.err, prefix, lock=lock)
        except Exception as exc:  # noqa: BLE001 - one node's failure is said, the others go on
            say(node, one_line(str(exc)))
            codes[node.name] = 1
            return
        # no exit status: the connection dropped, or journalctl was killed (a local one's SIGINT, -2:
        # the terminal's Ctrl-C, which ends sando too)
        if codes[node.name] < 0 and codes[node.name] != -2:
            say(node, "the journal's session ended before journalctl did (the connection dropped, or it was "
                      f"killed); run `sando logs -s {stack.split('/')[-1]} {node.name}` again")

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:  # the end of a follow
        ended.set()
        return 0
    return 0 if all(c == 0 for c in codes.values()) else 1


def cmd_ssh(args, ctx: Context) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    project = ctx.project(args.cwd)
    stack = project.stack(args.stack, "-s")
    cfg = project.config(stack)
    [node] = _node_names(cfg, args.node, stack)
    return fleet.interactive(fleet.conn(cfg, node), " ".join(command) or None, ctx.stdin, ctx.out, ctx.err)


RESTART_OUTCOMES = {120: "systemctl restart failed", 121: "the service restarted but fails its health check",
                    122: "no release is live there",
                    25: f"a switch or restart still runs there (waited {fleet.RESTART_LOCK_WAIT} s); nothing restarted"}


def cmd_restart(args, ctx: Context) -> int:
    _need_terminal(args, ctx)
    project = ctx.project(args.cwd)
    stack = project.stack(args.stack, "-s")
    cfg = project.config(stack)
    chosen = _node_names(cfg, args.node, stack)
    now = {n.name: n for n in project.nodes_now(cfg)}
    unreachable([now[n.name] for n in chosen], "restart")
    warn = cfg.restart_warning_seconds > 0 and not args.now
    notice = (f"users get {cfg.restart_warning_seconds}s notice first (--now skips it)" if warn else
              "no restart warning (--now)" if cfg.restart_warning_seconds > 0 else "no restart warning configured")
    names = ", ".join(n.name for n in chosen)
    ctx.out.write(f"sando: restart {cfg.service} on {names} of {stack}, one node at a time; {notice}\n")
    if not args.yes and not _confirm(f"Restart {cfg.service} on {names}?", ctx):
        raise Refused("nothing restarted")
    deploy = {"by": history.operator(), "via": "sando restart", "now": args.now}
    for node in chosen:
        with _countdown(ctx, cfg.restart_warning_seconds if warn else 0):
            res = ssh.run(fleet.conn(cfg, node), fleet.restart_command(cfg, node, now[node.name].live_commit, deploy,
                                                                       warn),
                          stdin=fleet.restart_stdin(cfg, warn), timeout=300 + fleet.RESTART_LOCK_WAIT
                          + cfg.restart_warning_seconds
                          + cfg.health_check.timeout_seconds, check=False)
        report = scripts.Report.parse(res.out, node.name)
        if res.rc != 0:
            why = RESTART_OUTCOMES.get(res.rc) or f"exit {res.rc}: {(res.err or res.out).strip()[-200:]}"
            detail = (report.one("health") or report.one("restart") or report.one("error") or report.one("busy")
                      or "")
            rest = [n.name for n in chosen[chosen.index(node) + 1:]]
            raise Refused(f"{node.name}: {why} ({detail})" + (f"; not restarted: {', '.join(rest)}" if rest else "")
                          + f"; see `sando logs -s {stack.split('/')[-1]} {node.name}`")
        warned = report.one("warning")
        warned = (times.warning_sent(warned, cfg.restart_warning_seconds) if warned else
                  "skipped (--now)" if args.now and cfg.restart_warning_seconds else "none")
        ctx.out.write(f"sando: {node.name}: restarted, healthy now (warning: {warned})\n")
    return 0


# --- command line -----------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that writes help to `out`, raises Usage for errors and never calls sys.exit."""

    def __init__(self, *args, out: TextIO, **kwargs):
        self.out = out
        super().__init__(*args, formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=28), **kwargs)

    def _print_message(self, message: str, file=None) -> None:
        if message:
            self.out.write(message)

    def exit(self, status: int = 0, message: str | None = None):
        raise _Exit(status)

    def error(self, message: str):
        raise Usage(None, f"{message} (see `{self.prog} --help`)")


def build_parser(out: TextIO) -> argparse.ArgumentParser:
    parser = _Parser(prog="sando", out=out, description=(
        "Operator commands for sando's Pulumi stacks: they read the nodes now (the stack's key and\n"
        "pinned host keys from its config) and drive Pulumi's CLI; `pulumi up -s STACK` keeps\n"
        "working and stays the primary interface."),
        epilog=f"{ENGINE_NOTE}\n{EXIT_CODES}\nSANDO_DEBUG=1 shows Python tracebacks.")
    parser.add_argument("--cwd", default=".", metavar="DIR", help="the Pulumi project (default: .)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=functools.partial(_Parser, out=out))
    common = dict(epilog=f"{ENGINE_NOTE}\n{EXIT_CODES}")

    def cwd(p):
        p.add_argument("--cwd", default=argparse.SUPPRESS, metavar="DIR", help="the Pulumi project (default: .)")

    def yes(p):
        p.add_argument("--yes", "-y", action="store_true",
                       help="deploy without asking (needed without a terminal)")

    def now(p):
        p.add_argument("--now", action="store_true",
                       help="skip the restart warning this time (recorded on the nodes, with who)")

    p = sub.add_parser("promote", help="deploy the version live on one stack to another", **common, description=(
        "Deploy to --to exactly the version and commit live on --from:\n"
        "  1. read every --from node now: refuse unless each serves the stack's pinned version and\n"
        "     commit, its service runs and its health check (and Caddy's) answers now;\n"
        "  2. refuse if that version name resolves to another commit in --to's sando:source.repo;\n"
        "  3. set --to's sando:version, show its preview, ask (or --yes), run its up;\n"
        "  4. read every --to node: it must run that commit, healthy, or sando fails loudly.\n"
        "The pin is put back if the preview fails or you answer no. Each switch is recorded on the\n"
        "node as `sando promote` by you (sando status shows it).\n\n"
        "example: sando promote --from testnot --to prod"))
    p.add_argument("--from", dest="source", required=True, metavar="STACK", help="stack to copy the version from")
    p.add_argument("--to", dest="target", required=True, metavar="STACK", help="stack to deploy it to")
    yes(p)
    now(p)
    cwd(p)
    p.set_defaults(run=cmd_promote)

    p = sub.add_parser("status", help="every node now: versions, service, health, migrations, who deployed",
                       **common, description=(
                           "Reads every node of the given stacks now (default: all of the project), all at\n"
                           "once, one SSH round trip each, with the stack's own key and pinned host keys:\n"
                           "LIVE/PREVIOUS version ('(pin V)' when the node is not on the pinned one), COMMIT,\n"
                           "UNIT (systemd's state), HEALTH (the health URL now), CADDY (its state and the\n"
                           "same URL through it), PENDING MIGRATIONS (the pinned release's migrations the\n"
                           "node's database has not applied), FREE (disk under releases/), LAST DEPLOY (the\n"
                           "node's last switch: version, UTC time, user@host, how: pulumi up / sando ...).\n"
                           "A node that cannot be read is one line saying why. Exit 1 when a stack or node\n"
                           "could not be read. --json: the same, for scripts (times ISO 8601 UTC).\n\n"
                           "example: sando status            sando status prod --json"))
    p.add_argument("stacks", nargs="*", metavar="STACK", help="stacks to show (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cwd(p)
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("rollback", help="go back to the last good version (or --to one) and deploy it", **common,
                       description=(
                           "Reads every node now, then pins and deploys:\n"
                           "  - when every node runs one version but the stack pins another (a failed or\n"
                           "    interrupted deploy): that version, what runs; nothing restarts;\n"
                           "  - else the last good version before the live one, from each node's switch\n"
                           "    history (.sando/history): rollbacks walk back v5 -> v4 -> v2, skipping\n"
                           "    failed releases (--allow-failed to go onto one with --to); nodes without\n"
                           "    history or the release (a new node) get it built and sent (named);\n"
                           "  - --to VERSION: that one.\n"
                           "When a node's database is ahead of the target by migrations, it names them, the\n"
                           "destructive ones, the backup from before them and the command to restore it;\n"
                           "a destructive case needs --accept-destructive as well as --yes.\n"
                           "Then preview, ask (or --yes), up, and read the nodes again.\n\n"
                           "example: sando rollback -s prod            sando rollback -s prod --to v41"))
    p.add_argument("-s", "--stack", required=True, metavar="STACK", help="stack to roll back")
    p.add_argument("--to", metavar="VERSION", help="the version to go to (default: the last good one)")
    p.add_argument("--allow-failed", action="store_true", help="allow a release marked failed as the target")
    p.add_argument("--accept-destructive", action="store_true",
                   help="roll back although the database is ahead by destructive migrations")
    yes(p)
    now(p)
    cwd(p)
    p.set_defaults(run=cmd_rollback)

    p = sub.add_parser("logs", help="the service's journal on a node (or every node)", **common, description=(
        "journalctl of the service on NODE (default: every node, each line after its name), over\n"
        "SSH with the stack's key and pinned host key (the key never leaves this process); a local\n"
        "node's through a local shell. On a blueGreen node (sando:switch), every instance's journal,\n"
        "each line after its unit, and a line on stderr naming the live instance (the node's record).\n"
        "Without -n or --since: the last 100 entries. Times are UTC, whatever the node's zone.\n\n"
        "example: sando logs -s prod node1 -f        sando logs -s prod --since '1 hour ago'"))
    p.add_argument("-s", "--stack", required=True, metavar="STACK", help="the stack")
    p.add_argument("node", nargs="?", metavar="NODE", help="one node (default: every node)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new entries (Ctrl-C ends)")
    p.add_argument("-n", "--lines", type=int, metavar="N", help="the last N entries")
    p.add_argument("--since", metavar="T",
                   help="entries since T (journalctl's --since: '10 min ago', a date and time in UTC)")
    cwd(p)
    p.set_defaults(run=cmd_logs)

    p = sub.add_parser("ssh", help="a shell (or one command) on a node", **common, description=(
        "A shell on NODE, or CMD, as the stack's user, with the stack's key and pinned host key,\n"
        "through sando's own SSH client (paramiko): the key stays in this process's memory (never\n"
        "on disk, in an agent or on a command line). On a terminal: a pty. Exit status: CMD's.\n"
        "A local node (local: true): root's login shell on this terminal, or CMD, as root (sudo -n).\n\n"
        "example: sando ssh -s prod node1        sando ssh -s prod node1 -- systemctl status makenotwork"))
    p.add_argument("-s", "--stack", required=True, metavar="STACK", help="the stack")
    p.add_argument("node", metavar="NODE", help="the node")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD", help="a command instead of a shell")
    p.set_defaults(run=cmd_ssh)

    p = sub.add_parser("restart", help="restart the service on a node (or every node, one at a time)", **common,
                       description=(
                           "Restart the service on NODE (default: every node, one at a time, stopping at the\n"
                           "first that fails), each with the restart warning when the stack has one\n"
                           "(sando:restartWarningSeconds; --now skips it), then its health check. Recorded in\n"
                           "the node's history (`sando restart` by you). Asks first (or --yes).\n\n"
                           "example: sando restart -s prod node1        sando restart -s prod --now --yes"))
    p.add_argument("-s", "--stack", required=True, metavar="STACK", help="the stack")
    p.add_argument("node", nargs="?", metavar="NODE", help="one node (default: every node)")
    p.add_argument("--yes", "-y", action="store_true", help="restart without asking (needed without a terminal)")
    now(p)
    cwd(p)
    p.set_defaults(run=cmd_restart)
    return parser


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None,
         stdin: TextIO | None = None, project: Callable[[str], Project] = Project) -> int:
    """Run one sando command; returns its exit code (nothing here calls sys.exit)."""
    out, err, stdin = out or sys.stdout, err or sys.stderr, stdin or sys.stdin
    debug = os.environ.get("SANDO_DEBUG", "") not in ("", "0", "false")
    try:
        args = build_parser(out).parse_args(sys.argv[1:] if argv is None else argv)
        return args.run(args, Context(out, err, stdin, project))
    except _Exit as exc:
        return exc.code
    except Usage as exc:
        err.write(f"sando: {exc}\n")
        return 2
    except (Refused, KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - one line, no traceback
        if debug:
            traceback.print_exc(file=err)
        text = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc).strip() or type(exc).__name__
        if not isinstance(exc, Refused):
            text = one_line(text)
        err.write(f"sando: {text}\n")
        return 1
    finally:
        fleet.disconnect()


if __name__ == "__main__":
    sys.exit(main())
