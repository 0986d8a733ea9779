"""`sando`: three operator commands over Pulumi's Automation API. Plain `pulumi up -s STACK`
stays the primary interface; these only save typing and refuse what is plainly wrong.

    sando promote --from testnot --to prod [--yes]
    sando status [STACK ...]
    sando rollback -s STACK [--to VERSION] [--yes]

Decisions are pure functions of stack outputs (check_promotable, moved_tag, rollback_target,
deployed_problems, status_rows, render_status); `Project` is the thin layer that talks to the
engine; `main(argv, out=, err=, stdin=, project=) -> exit code` is the entry (`python -m
sando_components.cli`, or .venv/bin/sando from `make setup`); nothing here calls sys.exit.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import re
import socket
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

EXIT_CODES = ("Exit codes: 0 ok; 1 refused (stack state) or failed; 2 bad arguments (unknown flag or\n"
              "stack, --to not retained, no --yes without a terminal).")
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


def short(commit: str | None, n: int = 12) -> str:
    return commit[:n] if commit else "-"


def nodes_of(outputs: dict) -> dict[str, dict]:
    """The `nodes` output, in rollout order (batch, then name)."""
    nodes = outputs.get("nodes")
    if not isinstance(nodes, dict):
        return {}
    return dict(sorted(nodes.items(), key=lambda kv: (kv[1].get("batch") or 0, kv[0])))


def check_promotable(outputs: dict, last: dict | None = None) -> list[str]:
    """Why the source stack does not run one healthy version on every node ([] = promotable).
    `last` is its last update ({result, when, ...}): one that failed means the source is not clean."""
    version, commit, nodes = outputs.get("version"), outputs.get("commit"), nodes_of(outputs)
    if not (version and commit and nodes):
        return ["it has no version, commit or nodes in its outputs (never deployed?)"]
    problems = []
    if last and last.get("result") != "succeeded":
        problems.append(f"its last update ({last.get('when') or '?'}) {last.get('result') or 'did not finish'} "
                        "(a failed switch or a half-finished rollout?)")
    for name, node in nodes.items():
        if node.get("health") != "ok":
            problems.append(f"{name}'s health is {node.get('health') or 'unknown'}")
        if node.get("liveVersion") != version:
            problems.append(f"{name} runs {node.get('liveVersion') or 'nothing'} but the stack pins {version} "
                            "(a half-finished rollout)")
        elif node.get("liveCommit") != commit:
            problems.append(f"{name} runs commit {short(node.get('liveCommit'))}, the stack's is {short(commit)}")
    return problems


def moved_tag(version: str, commit: str, resolved: str | None, where: str, runs: str = "the source runs") -> str | None:
    """None when `version` still names `commit` in the target's repo (`where`), else why not."""
    if resolved == commit:
        return None
    if resolved is None:
        return f"{version} is not a tag, branch or commit in {where}"
    return (f"{version} names commit {short(resolved)} in {where}, but {runs} {short(commit)}: "
            "the name moved; deploy that commit under a new version name")


def _retained(node: dict) -> dict[str, dict]:
    return {r.get("version"): r for r in node.get("releases") or [] if isinstance(r, dict)}


def _listing(held: dict[str, dict]) -> str:
    return ", ".join(f"{v} (failed)" if r.get("failed") else str(v) for v, r in held.items()) or "none"


def rollback_target(outputs: dict, to: str | None = None) -> tuple[str, str]:
    """(version, commit) to pin: `to`, or the nodes' common previous version; it must be retained
    on every node (so nothing is sent) and built from one commit."""
    nodes, given = nodes_of(outputs), to is not None
    if not nodes:
        raise Refused("the stack has no nodes in its outputs (never deployed?)")
    if not given:
        previous = {name: n.get("previousVersion") for name, n in nodes.items()}
        if len(set(previous.values())) > 1:
            listed = ", ".join(f"{k}: {v or 'none'}" for k, v in previous.items())
            raise Refused(f"the nodes disagree on the previous version ({listed}); choose one with --to")
        to = next(iter(previous.values()))
        if not to:
            first = next(iter(nodes.values()))
            raise Refused(f"no previous version is recorded on the nodes; choose a retained one with --to "
                          f"(retained: {_listing(_retained(first))})")
    commits = {}
    for name, node in nodes.items():
        held = _retained(node)
        if to not in held:
            message = f"{to} is not retained on {name} (retained: {_listing(held)})"
            raise Usage("--to", message) if given else Refused(f"the previous version {message}")
        commits[name] = held[to].get("commit")
    if len(set(commits.values())) != 1 or not next(iter(commits.values())):
        listed = ", ".join(f"{k}: {short(v)}" for k, v in commits.items())
        raise Refused(f"{to} is not one commit on every node ({listed})")
    return to, next(iter(commits.values()))


def deployed_problems(outputs: dict, version: str, commit: str) -> list[str]:
    """What differs, after an up, from `version` at `commit` live and healthy on every node."""
    problems = []
    if outputs.get("version") != version:
        problems.append(f"the stack's version output is {outputs.get('version') or 'missing'}, not {version}")
    if outputs.get("commit") != commit:
        problems.append(f"the stack's commit is {short(outputs.get('commit'))}, not {short(commit)}")
    nodes = nodes_of(outputs)
    if not nodes:
        problems.append("no nodes in the outputs")
    for name, node in nodes.items():
        if (node.get("liveVersion"), node.get("liveCommit")) != (version, commit):
            problems.append(f"{name} runs {node.get('liveVersion') or 'nothing'} "
                            f"(commit {short(node.get('liveCommit'))})")
        elif node.get("health") != "ok":
            problems.append(f"{name}'s health is {node.get('health') or 'unknown'}")
    return problems


def when(value: str | datetime | None) -> str | None:
    """A time as `YYYY-MM-DD HH:MMZ` (UTC); ISO strings and naive datetimes are taken as UTC."""
    if not value:
        return None
    try:
        t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%MZ")


def describe_update(last: dict | None) -> str | None:
    """One line for a history entry: when, what, result, message (-m), git.author of the checkout."""
    if not last:
        return None
    text = " ".join(str(x) for x in (last.get("when"), last.get("kind"), last.get("result")) if x)
    if last.get("message"):
        text += f' "{last["message"]}"'
    if last.get("author"):
        text += f" (git.author {last['author']})"
    return text


def _cut(text, width: int = 32) -> str | None:
    return None if text is None else str(text) if len(str(text)) <= width else str(text)[:width - 1] + "…"


def _migrations(m) -> str | None:
    if not isinstance(m, dict):
        return None
    pending, destructive = m.get("pending") or [], m.get("destructive") or []
    text = _cut(", ".join(pending) or "none")
    return f"{text} ({len(destructive)} destructive)" if destructive else text


def status_rows(stack: str, outputs: dict, last: dict | None = None, error: str | None = None) -> list[dict]:
    """One row per node of a stack; the stack's last update is shown on its first row."""
    nodes, pinned = nodes_of(outputs), outputs.get("version")
    last_text = f"error: {error}" if error else describe_update(last) or "never updated"
    if not nodes:
        return [{"stack": stack, "last": last_text}]
    rows = []
    for i, (name, n) in enumerate(nodes.items()):
        live = n.get("liveVersion")
        rows.append({
            "stack": stack, "node": name,
            "live": f"{live} (pin {pinned})" if live and pinned and live != pinned else live,
            "previous": n.get("previousVersion"), "commit": short(n.get("liveCommit"), 7),
            "health": _cut(n.get("health")), "switched": when(n.get("switchedAt")),
            "migrations": _migrations(n.get("migrations")),
            "last": last_text if i == 0 else "",
        })
    return rows


COLUMNS = (("stack", "STACK"), ("node", "NODE"), ("live", "LIVE"), ("previous", "PREVIOUS"), ("commit", "COMMIT"),
           ("health", "HEALTH"), ("switched", "SWITCHED"), ("migrations", "PENDING MIGRATIONS"),
           ("last", "LAST UPDATE"))


def render_status(rows: list[dict]) -> str:
    """A plain-text table; a missing value shows as '-'."""
    cells = [[title for _, title in COLUMNS]]
    cells += [["-" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells) + "\n"


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


def repo_path(project: Path, source: str | None) -> Path | None:
    """The repo of a `sando:source` value: an object (`config set --path sando:source.repo ...`) or
    the same as a JSON string; both are JSON text to `pulumi config get`."""
    try:
        repo = json.loads(source or "null")
    except ValueError:
        return None
    repo = repo.get("repo") if isinstance(repo, dict) else None
    return (project / repo).resolve() if isinstance(repo, str) and repo else None


def git_commit(repo: Path, ref: str) -> str | None:
    res = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


class Project:
    """The Pulumi project in a directory, driven through the Automation API. Stacks are named by
    strings; the operator's selected stack (`pulumi stack select`) is never changed."""

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
        self.ws = Workspace(work_dir=str(self.dir), pulumi_command=command, env_vars=env)
        self._names: list[str] | None = None

    def stack_names(self) -> list[str]:
        if self._names is None:
            self._names = [s.name for s in self.ws.list_stacks()]
        return self._names

    def stack(self, name: str, flag: str) -> str:
        """The stack's full name, or Usage naming the flag."""
        names = self.stack_names()
        full = next((n for n in names if name in (n, n.split("/")[-1])), None)
        if full is None:
            raise Usage(flag, f"no stack {name!r} in {self.dir} (stacks: {', '.join(names) or 'none'})")
        return full

    def _stack(self, name: str):
        return self.auto.Stack.select(name, self.ws)

    def outputs(self, name: str) -> dict:
        """`pulumi stack output --json`: sando's outputs hold no secrets, so no passphrase is needed
        (the Automation API's stack.outputs() also asks for --show-secrets)."""
        res = self.ws.pulumi_command.run(["stack", "output", "--json", "--stack", name], str(self.dir),
                                         self.ws.env_vars)
        return json.loads(res.stdout or "{}")

    def last_update(self, name: str, kinds: tuple[str, ...] = ()) -> dict | None:
        """The newest history entry (of one of `kinds`, if given) as {when, kind, result, message, author}."""
        for h in self._stack(name).history(page_size=20, show_secrets=False):
            if not kinds or h.kind in kinds:
                env = h.environment or {}
                return {"when": when(h.end_time or h.start_time), "kind": h.kind, "result": h.result,
                        "message": (h.message or "").strip() or None, "author": env.get("git.author")}
        return None

    def config(self, name: str, key: str) -> str | None:
        try:
            return self._stack(name).get_config(key).value
        except self.auto.errors.CommandError:  # `pulumi config get` fails for a key that is not set
            return None

    def source_repo(self, name: str) -> Path | None:
        """sando:source.repo of the stack (relative to the project dir, as the program reads it)."""
        return repo_path(self.dir, self.config(name, "sando:source"))

    def host_ref(self, name: str) -> str | None:
        """sando:bootstrap.ref of the stack (host config), or None."""
        try:
            return self._stack(name).get_config("sando:bootstrap.ref", path=True).value
        except self.auto.errors.CommandError:
            return None

    def pin_host(self, name: str, ref: str | None) -> None:
        """Set (or with None remove) sando:bootstrap.ref: promote carries the host config commit."""
        if ref is None:
            self._stack(name).remove_config("sando:bootstrap.ref", path=True)
        else:
            self._stack(name).set_config("sando:bootstrap.ref", self.auto.ConfigValue(ref), path=True)

    def pin(self, name: str, version: str | None) -> None:
        if version is None:
            self._stack(name).remove_config("sando:version")
        else:
            self._stack(name).set_config("sando:version", self.auto.ConfigValue(version))

    def preview(self, name: str, out: TextIO, err: TextIO) -> None:
        self._run(name, "preview", out, err)

    def up(self, name: str, out: TextIO, err: TextIO, message: str) -> dict:
        result = self._run(name, "up", out, err, message=message)
        return {k: v.value for k, v in result.outputs.items()}

    def _run(self, name: str, op: str, out: TextIO, err: TextIO, **kw):
        """`pulumi preview` / `pulumi up`, pulumi's own output on out/err; Refused on failure."""
        try:
            return getattr(self._stack(name), op)(color="never", suppress_outputs=True, suppress_progress=True,
                                                   on_output=_printer(out), on_error=_printer(err), **kw)
        except self.auto.errors.ConcurrentUpdateError:
            raise Refused(f"{name} is locked by another update (`pulumi cancel -s {name}` clears a stale lock)") \
                from None
        except self.auto.errors.CommandError as exc:
            raise Refused(f"{name}: pulumi {op} failed: {engine_error(str(exc)) or 'see the output above'}") \
                from None


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


def _who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "unknown"


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


def _live(outputs: dict) -> str:
    return ", ".join(sorted({str(n.get("liveVersion")) for n in nodes_of(outputs).values()})) or "nothing"


def _deploy(project: Project, stack: str, version: str, commit: str, message: str, yes: bool, ctx: Context,
            host: str | None = None) -> int:
    """Pin `version` (and with `host` the host config commit, sando:bootstrap.ref), preview, confirm,
    up, then check that `version` at `commit` is live on every node. The pins are put back if the
    preview fails or the operator says no."""
    before = project.config(stack, "sando:version")
    host_before = project.host_ref(stack) if host else None
    project.pin(stack, version)
    if host:
        project.pin_host(stack, host)
    try:
        ctx.out.write(f"sando: preview of {stack} with sando:version {version}:\n")
        project.preview(stack, ctx.out, ctx.err)
        if not yes and not _confirm(f"Deploy {version} ({short(commit)}) to {stack}?", ctx):
            raise Refused(f"not deployed; {stack}'s sando:version is back to {before or '(unset)'}")
    except BaseException:
        project.pin(stack, before)
        if host:
            project.pin_host(stack, host_before)
        raise
    try:
        outputs = project.up(stack, ctx.out, ctx.err, message)
    except Refused as exc:
        raise Refused(f"{exc}\n{stack}'s sando:version stays {version} (was {before or '(unset)'}); "
                      f"see `sando status {stack}`") from None
    problems = deployed_problems(outputs, version, commit)
    if host and (outputs.get("hostConfig") or {}).get("commit") != host:
        problems.append(f"host config is at {short(str((outputs.get('hostConfig') or {}).get('commit')))}, "
                        f"not {short(host)}")
    if problems:
        raise Refused(f"{stack} does NOT run {version} at {short(commit)} after the up: " + "; ".join(problems))
    sent = sum(int((n.get("lastTransfer") or {}).get("bytesSent") or 0) for n in nodes_of(outputs).values())
    ctx.out.write(f"sando: {stack} runs {version} ({short(commit)}) on every node ({', '.join(nodes_of(outputs))}); "
                  f"{sent} bytes sent. Commit Pulumi.{stack.split('/')[-1]}.yaml to record the pin.\n")
    return 0


def _same_commit(project: Project, stack: str, version: str, commit: str, runs: str) -> None:
    """The program resolves the pin in the stack's sando:source.repo: it must name `commit` there."""
    repo = project.source_repo(stack)
    if repo is None or not repo.is_dir():
        raise Refused(f"{stack}'s sando:source.repo {'is not set' if repo is None else f'{repo} is not a directory'}")
    moved = moved_tag(version, commit, git_commit(repo, version), f"{stack}'s source repo {repo}", runs)
    if moved:
        raise Refused(moved)


def cmd_promote(args, ctx: Context) -> int:
    _need_terminal(args, ctx)
    if args.source == args.target:
        raise Usage("--to", "is the same stack as --from")
    project = ctx.project(args.cwd)
    source, target = project.stack(args.source, "--from"), project.stack(args.target, "--to")
    outputs = project.outputs(source)
    problems = check_promotable(outputs, project.last_update(source, ("update", "destroy")))
    if problems:
        raise Refused(f"{source} is not promotable: " + "; ".join(problems))
    version, commit = outputs["version"], outputs["commit"]
    host = (outputs.get("hostConfig") or {}).get("commit")  # the host config commit the source runs
    _same_commit(project, target, version, commit, "the source runs")
    ctx.out.write(f"sando: promote {source} -> {target}: {version} ({short(commit)}); "
                  f"{target} runs {_live(project.outputs(target))} now\n")
    message = f"sando promote {source} -> {target}: {version} ({short(commit)}) by {_who()}"
    if host:
        ctx.out.write(f"sando: and the host config {source} runs: sando:bootstrap.ref {short(host)}\n")
    return _deploy(project, target, version, commit, message, args.yes, ctx, host)


def cmd_rollback(args, ctx: Context) -> int:
    _need_terminal(args, ctx)
    project = ctx.project(args.cwd)
    stack = project.stack(args.stack, "-s")
    outputs = project.outputs(stack)
    version, commit = rollback_target(outputs, args.to)
    _same_commit(project, stack, version, commit, "the retained release is")
    live = _live(outputs)
    if live == version:
        ctx.out.write(f"sando: {stack} already runs {version} ({short(commit)}) everywhere; deploying it again\n")
    else:
        ctx.out.write(f"sando: roll {stack} back from {live} to {version} ({short(commit)}), retained on every "
                      "node: nothing to send\n")
    message = f"sando rollback {stack}: {live} -> {version} ({short(commit)}) by {_who()}"
    return _deploy(project, stack, version, commit, message, args.yes, ctx)


def cmd_status(args, ctx: Context) -> int:
    project = ctx.project(args.cwd)
    stacks = [project.stack(name, "STACK") for name in args.stacks] or project.stack_names()
    if not stacks:
        ctx.out.write(f"sando: no stacks in {project.dir} (pulumi stack init NAME)\n")
        return 0

    def one(stack: str) -> list[dict]:
        try:
            return status_rows(stack, project.outputs(stack), project.last_update(stack))
        except Exception as exc:  # noqa: BLE001 - one unreadable stack must not hide the others
            return status_rows(stack, {}, error=one_line(str(exc)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for rows in pool.map(one, stacks) for row in rows]
    ctx.out.write(render_status(rows))
    failed = [r["stack"] for r in rows if str(r.get("last", "")).startswith("error: ")]
    if failed:
        ctx.err.write(f"sando: could not read {', '.join(failed)}\n")
    return 1 if failed else 0


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
        "Operator commands for sando's Pulumi stacks. Thin wrappers over the Automation API:\n"
        "`pulumi up -s STACK` keeps working and stays the primary interface."),
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

    p = sub.add_parser("promote", help="deploy the version live on one stack to another", **common, description=(
        "Deploy to --to exactly the version and commit live on --from:\n"
        "  1. refuse unless every --from node is healthy and on the stack's pinned version and its\n"
        "     last update succeeded (no half-finished rollout);\n"
        "  2. refuse if that version name resolves to another commit in --to's sando:source.repo;\n"
        "  3. set --to's sando:version, show its preview, ask (or --yes), run its up;\n"
        "  4. check that every --to node now runs that commit, and fail loudly if not.\n"
        "The pin is put back if the preview fails or you answer no.\n\n"
        "example: sando promote --from testnot --to prod"))
    p.add_argument("--from", dest="source", required=True, metavar="STACK", help="stack to copy the version from")
    p.add_argument("--to", dest="target", required=True, metavar="STACK", help="stack to deploy it to")
    yes(p)
    cwd(p)
    p.set_defaults(run=cmd_promote)

    p = sub.add_parser("status", help="one table: per node its live and previous version, health, ...", **common,
                       description=(
                           "One table over the given stacks (default: all of the project): per node the live and\n"
                           "previous version, commit, health, when it switched (UTC), the migrations its last switch\n"
                           "found pending (from the stack outputs), and the stack's last update from `pulumi stack\n"
                           "history`: when, result, the -m message (sando's names who ran it) and git.author of\n"
                           "the checkout. LIVE shows '(pin V)' when a node is not on the stack's pinned version.\n"
                           "Outputs say what each node serves after the last up, also a failed one (a switch that\n"
                           "failed, a rollout that stopped); an up that broke off (Ctrl-C, no SSH) may leave them old.\n\n"
                           "example: sando status            sando status prod"))
    p.add_argument("stacks", nargs="*", metavar="STACK", help="stacks to show (default: all)")
    cwd(p)
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("rollback", help="pin the previous retained version (or --to one) and deploy it", **common,
                       description=(
                           "Pin the nodes' previous version (refused if they disagree: choose with --to) or\n"
                           "--to VERSION (refused unless every node retains it), then preview, ask (or --yes),\n"
                           "run the up and check every node runs it. A retained release sends no bytes.\n"
                           "The pin is put back if the preview fails or you answer no.\n\n"
                           "example: sando rollback -s prod            sando rollback -s prod --to v41"))
    p.add_argument("-s", "--stack", required=True, metavar="STACK", help="stack to roll back")
    p.add_argument("--to", metavar="VERSION", help="a version every node retains (default: previous)")
    yes(p)
    cwd(p)
    p.set_defaults(run=cmd_rollback)
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


if __name__ == "__main__":
    sys.exit(main())
