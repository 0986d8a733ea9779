"""Local side of a release: resolve the pinned ref, build natively, collect artifacts.

Builds happen in a clean git worktree of the pinned commit inside a cache keyed
by commit (default ~/.cache/sando/builds, env SANDO_CACHE_DIR), so each commit
is built once however many nodes or runs ask for it. They are lazy: only a
release upload that actually has to send bytes triggers one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .config import ConfigError

BIN_MODE = 0o755
FILE_MODE = 0o644


def default_cache_dir() -> str:
    base = os.environ.get("SANDO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sando"
    )
    return os.path.join(base, "builds")


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)


def resolve_commit(repo: str, ref: str) -> str:
    """The commit a ref names, or ConfigError naming sando:version / sando:source.repo."""
    if not os.path.isdir(repo):
        raise ConfigError(f"sando:source.repo: {repo!r} is not a directory")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise ConfigError(f"sando:source.repo: {repo!r} is not a git repository")
    res = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if res.returncode != 0:
        raise ConfigError(f"sando:version: {ref!r} is not a branch, tag or commit of {repo}")
    return res.stdout.strip()


def check_tree(repo: str, commit: str, path: str, key: str) -> None:
    res = _git(repo, "cat-file", "-t", f"{commit}:{path}")
    if res.returncode != 0 or res.stdout.strip() != "tree":
        raise ConfigError(f"sando:{key}: {path!r} is not a directory at commit {commit[:12]}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifacts:
    root: str  # local dir laid out exactly like the release dir
    files: tuple[tuple[str, str, int], ...]  # (relative path, sha256, mode)

    def sums(self) -> str:
        return "".join(f"{digest}  {rel}\n" for rel, digest, _ in self.files)

    def bin_sha256(self, bin_names: list[str]) -> dict[str, str]:
        by = {rel: digest for rel, digest, _ in self.files}
        return {b: by[b] for b in bin_names}


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def ensure_built(repo: str, commit: str, build_command: str, bin_dir: str, error_pages_dir: str,
                 bin_names: list[str], cache_dir: str | None = None) -> Artifacts:
    """Build `commit` once (cached by commit) and return the release's artifact layout."""
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    with _locks_guard:
        tlock = _locks.setdefault(commit, threading.Lock())
    with tlock, open(cache / f"{commit}.lock", "w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)  # one build per commit across processes too
        return _build_locked(Path(repo).resolve(), commit, build_command, bin_dir, error_pages_dir,
                             bin_names, cache / commit)


def _build_locked(repo: Path, commit: str, build_command: str, bin_dir: str, error_pages_dir: str,
                  bin_names: list[str], work: Path) -> Artifacts:
    src, out = work / "src", work / "artifacts"
    index = work / "artifacts.json"
    wanted = {"bins": bin_names, "binDir": bin_dir, "errorPagesDir": error_pages_dir, "command": build_command}
    if index.exists():
        recorded = json.loads(index.read_text())
        if recorded.get("wanted") == wanted and out.is_dir():
            return Artifacts(str(out), tuple(tuple(f) for f in recorded["files"]))
    if not (src / ".git").exists():
        if src.exists():
            shutil.rmtree(src)
        _git(str(repo), "worktree", "prune")
        res = _git(str(repo), "worktree", "add", "--detach", "--force", str(src), commit)
        if res.returncode != 0:
            raise RuntimeError(f"git worktree add of {commit[:12]} failed: {res.stderr.strip()}")
    log = work / "build.log"
    with open(log, "w") as fh:
        proc = subprocess.run(build_command, shell=True, cwd=src, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"build of {commit[:12]} failed (sando:source.buildCommand exited "
                           f"{proc.returncode}); last lines of {log}:\n{tail}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files: list[tuple[str, str, int]] = []
    for b in bin_names:
        built = src / bin_dir / b
        if not built.is_file():
            raise RuntimeError(f"sando:binNames: {b!r} was not built: {built} does not exist after the build")
        shutil.copyfile(built, out / b)
        files.append((b, sha256_file(str(out / b)), BIN_MODE))
    pages = src / error_pages_dir
    for p in sorted(pages.rglob("*")):
        if p.is_file():
            rel = os.path.join(paths.ERROR_PAGES, str(p.relative_to(pages)))
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, out / rel)
            files.append((rel, sha256_file(str(out / rel)), FILE_MODE))
    index.write_text(json.dumps({"wanted": wanted, "files": files}))
    return Artifacts(str(out), tuple(files))
