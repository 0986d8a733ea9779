"""Several operators sharing one Pulumi backend, for tests (stdlib only).

Each Operator is what one person has on their own machine: a git clone of the
project (their checkout), their own PULUMI_HOME and HOME (so their own
`pulumi login` or PULUMI_BACKEND_URL, ~/.pgpass and git identity), the stack
passphrase, and sando's engine from .tools/bin. Nothing of the caller's
PULUMI_*/PG*/GIT_* environment leaks in.

    origin = make_origin(tmp / "origin.git", {"Pulumi.yaml": "...", "__main__.py": Path(...)})
    alice = Operator.clone("alice", origin, tmp, backend_url=pg.url, passphrase="...")
    alice.pulumi("stack", "init", "team")
    alice.commit_push("team stack")
    bob = Operator.clone("bob", origin, tmp, backend_url=pg.url_for(pg.user, None, pg.database),
                         pgpass=pg.pgpass_line(), login=False, passphrase="...")
    bob.up("-s", "team", message="deploy")   # history message "bob: deploy"
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_BIN = REPO / ".tools" / "bin"
VENV = REPO / ".venv"
TIMEOUT = 180


def engine_base_env() -> dict[str, str]:
    """The caller's environment without PULUMI_*/PG*/GIT_* (a developer's PULUMI_BACKEND_URL from
    scripts/env.sh must not leak into an operator), with sando's engine first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "PG", "GIT_"))}
    env.update({
        "PATH": f"{ENGINE_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "GIT_CONFIG_NOSYSTEM": "1",
    })
    return env


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_origin(dest: Path, files: dict[str, str | Path], author: str = "setup") -> Path:
    """A bare git repo holding `files` (relative path -> text, or a file/dir to copy) in one commit."""
    work = dest.with_name(dest.name + ".init")
    work.mkdir(parents=True)
    for rel, src in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
        else:
            target.write_text(src)
    ident = ["-c", f"user.name={author}", "-c", f"user.email={author}@sando.test"]
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, *ident, "commit", "-q", "-m", "project")
    git(work.parent, "clone", "-q", "--bare", str(work), str(dest))
    shutil.rmtree(work)
    return dest


class Operator:
    """One operator: a checkout, a PULUMI_HOME, a HOME, a git identity and the stack passphrase."""

    def __init__(self, name: str, checkout: Path, base: Path, passphrase: str, backend_url: str | None = None,
                 login: bool = True, pgpass: str | None = None, pgpassword: str | None = None,
                 extra_env: dict[str, str] | None = None):
        self.name = name
        self.checkout = checkout
        self.base = base
        self.home = base / "home"
        self.pulumi_home = base / "pulumi-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.pulumi_home.mkdir(parents=True, exist_ok=True)
        self.env = engine_base_env()
        self.env.update({
            "HOME": str(self.home),
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "SANDO_VENV": str(VENV),
        })
        if pgpass is not None:  # a line host:port:db:user:password of this operator's ~/.pgpass
            (self.home / ".pgpass").write_text(pgpass + "\n")
            (self.home / ".pgpass").chmod(0o600)
        if pgpassword is not None:
            self.env["PGPASSWORD"] = pgpassword
        self.env.update(extra_env or {})
        git(checkout, "config", "user.name", name.capitalize())
        git(checkout, "config", "user.email", f"{name}@sando.test")
        if backend_url:
            if login:  # `pulumi login URL`: remembered in this operator's PULUMI_HOME/credentials.json
                self.pulumi("login", backend_url)
            else:  # the other way: the URL in the environment, nothing stored
                self.env["PULUMI_BACKEND_URL"] = backend_url

    @classmethod
    def clone(cls, name: str, origin: Path, work: Path, **kw) -> "Operator":
        base = work / f"op-{name}"
        checkout = base / "checkout"
        base.mkdir(parents=True)
        git(base, "clone", "-q", str(origin), str(checkout))
        return cls(name, checkout, base, **kw)

    # --- pulumi ------------------------------------------------------------------------
    def pulumi(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
               timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        res = subprocess.run(["pulumi", "--non-interactive", "--color", "never", *args], cwd=self.checkout,
                             env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name}: pulumi {' '.join(args)} failed ({res.returncode})\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def up(self, *args: str, message: str | None = None, **kw) -> subprocess.CompletedProcess:
        """`pulumi up --yes`; the message (`-m`) starts with the operator's name: the DIY backends record
        no user of their own, the message and the HEAD commit's author are what history shows."""
        msg = ["-m", f"{self.name}: {message}"] if message else []
        return self.pulumi("up", "--yes", "--skip-preview", *msg, *args, **kw)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run pulumi in the background; stop() ends it and its plugins."""
        return subprocess.Popen(["pulumi", "--non-interactive", "--color", "never", *args], cwd=self.checkout,
                                env={**self.env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)

    @staticmethod
    def stop(proc: subprocess.Popen) -> set[int]:
        """SIGKILL a start()ed pulumi and every process under it, as a crash or a power cut would: no
        unlock, no cleanup. Pulumi starts each plugin in a process group of its own, so the tree is
        frozen (SIGSTOP, top down, until no new process appears) and then killed pid by pid.
        Returns the pids killed."""
        frozen: set[int] = set()
        todo = {proc.pid}
        while todo:
            for pid in todo:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= todo
            todo = _descendants(proc.pid) - frozen
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        return frozen

    # --- git -----------------------------------------------------------------------------
    def git(self, *args: str) -> str:
        return git(self.checkout, *args, env=self.env)

    def commit_push(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        self.git("push", "-q", "origin", "HEAD")

    def pull(self) -> None:
        self.git("pull", "-q", "--ff-only")


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
