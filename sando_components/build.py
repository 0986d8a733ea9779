"""Local side of a release: resolve the pinned ref, build natively, collect artifacts.

Builds are incremental: every commit of one source repo is built in the same tree
(`<cache>/trees/<repo id>/src`), a git repository of sando's own into which the pinned
commit is fetched from the server repo (the server repo is only read: no worktree is
registered there and its config is never changed), checked out at exactly that commit and
cleaned of everything untracked except the build's output directory (e.g. `server/target`),
so consecutive versions reuse cargo's target directory (a one-line change rebuilds in
seconds, not minutes). The tree is locked while it builds (flock): two stacks building at
once take turns and each gets its own commit. Never the operator's working tree, never
uncommitted changes.

The artifacts of each commit are kept (`<cache>/builds/<commit>`), so a commit is built
once however many nodes or runs ask for it, and every file is also filed by its sha256
(`<cache>/objects/`): the bytes a node already holds are found there when a delta is
computed. The cache is bounded: the newest SANDO_KEEP_BUILDS (default 10) builds of each
source repo are kept, plus any used in the last hour (another run may be sending it), and
objects no kept build holds go with them. Cache root: env SANDO_CACHE_DIR, else
~/.cache/sando.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import ConfigError, OperatorError

BIN_MODE = 0o755
FILE_MODE = 0o644
KEEP_BUILDS = 10  # per source repo; env SANDO_KEEP_BUILDS
RECENT_SECONDS = 3600  # a build used this recently is never pruned (a run may still be sending it)


def cache_root() -> Path:
    base = os.environ.get("SANDO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sando")
    return Path(base)


def _git(repo: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def resolve_commit(repo: str, ref: str) -> str:
    """The commit a ref names, or ConfigError naming sando:version / sando:source.repo."""
    if not os.path.isdir(repo):
        raise ConfigError(f"sando:source.repo: {repo!r} is not a directory")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise ConfigError(f"sando:source.repo: {repo!r} is not a git repository")
    res = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if res.returncode != 0:
        raise ConfigError(f"sando:version: {ref!r} is not a tag or commit of {repo}")
    commit = res.stdout.strip()
    if _is_branch(repo, ref, commit):
        raise ConfigError(
            f"sando:version: {ref!r} is a branch of {repo}; a release is immutable, so pin a tag or a commit "
            f"(the branch is at {commit[:12]}: `pulumi config set sando:version {commit[:12]}`, or tag it)")
    return commit


def _is_branch(repo: str, ref: str, commit: str) -> bool:
    """Whether `ref` names a branch rather than a tag or a commit id (a remote-tracking branch has a
    '/' in its name, which sando:version refuses anyway)."""
    if _git(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{ref}").returncode == 0:
        return False
    if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref.lower()) and commit.startswith(ref.lower()):
        return False
    return _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{ref}").returncode == 0


def check_tree(repo: str, commit: str, path: str, key: str) -> None:
    res = _git(repo, "cat-file", "-t", f"{commit}:{path}")
    if res.returncode != 0 or res.stdout.strip() != "tree":
        raise ConfigError(f"sando:{key}: {path!r} is not a directory at commit {commit[:12]}")


def list_tree(repo: str, commit: str, path: str) -> dict[str, str]:
    """{file name: blob id} of the files directly in `path` at `commit` ({} when there is none)."""
    res = _git(repo, "ls-tree", "-z", f"{commit}:{path}")
    if res.returncode != 0:
        return {}
    entries = (e.split("\t", 1) for e in res.stdout.split("\0") if e)
    return {name: meta.split()[2] for meta, name in entries if meta.split()[1] == "blob"}


def read_blobs(repo: str, blobs: list[str]) -> dict[str, str]:
    """{blob id: text}, read by one `git cat-file --batch`."""
    if not blobs:
        return {}
    out = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], input=("\n".join(blobs) + "\n").encode(),
                         capture_output=True, check=True).stdout
    texts, pos = {}, 0
    for blob in blobs:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        texts[blob] = out[header_end + 1:header_end + 1 + size].decode(errors="replace")
        pos = header_end + 1 + size + 1
    return texts


def sha256_file(path: str | Path) -> str:
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

    def size(self, rel: str) -> int:
        return os.stat(os.path.join(self.root, rel)).st_size


def object_path(digest: str) -> Path:
    """Where the bytes with this sha256 are kept locally (if they ever were built here)."""
    return cache_root() / "objects" / digest[:2] / digest


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class _Flock:
    """An exclusive flock on a lock file, plus a lock for the threads of this process."""

    def __init__(self, path: Path):
        self.path, self.thread = path, _thread_lock(str(path))

    def __enter__(self):
        self.thread.acquire()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.thread.release()


def ensure_built(repo: str, commit: str, build_command: str, bin_dir: str, error_pages_dir: str,
                 bin_names: list[str], progress: Callable[[str], None] | None = None) -> Artifacts:
    """The release artifacts of `commit` (built once, cached by commit). `progress` hears the
    build's own progress (cargo's `Compiling x (n/N)`), for the console."""
    work = cache_root() / "builds" / commit
    wanted = {"bins": sorted(bin_names), "binDir": bin_dir, "errorPagesDir": error_pages_dir,
              "command": build_command}
    repo_path = Path(repo).resolve()
    repo_id = hashlib.sha256(str(repo_path).encode()).hexdigest()[:16]
    with _Flock(work.with_suffix(".lock")):
        index = work / "artifacts.json"
        if index.exists():
            recorded = json.loads(index.read_text())
            if recorded.get("wanted") == wanted and (work / "artifacts").is_dir():
                os.utime(index)  # used now: the newest builds are the ones kept
                return Artifacts(str(work / "artifacts"), tuple(tuple(f) for f in recorded["files"]))
        tree = cache_root() / "trees" / repo_id
        with _Flock(tree.with_suffix(".lock")):
            src = _checkout(repo_path, tree / "src", commit, bin_dir)
            _run_build(src, build_command, commit, work, progress)
            art = _collect(src, work / "artifacts", bin_dir, error_pages_dir, bin_names)
        index.write_text(json.dumps({"wanted": wanted, "files": art.files, "repo": repo_id}))
    prune_builds(repo_id, keep_also=commit)
    return art


def cached_files(commit: str) -> dict[str, str] | None:
    """{release-relative path: sha256} of this machine's cached build of `commit`, or None."""
    try:
        recorded = json.loads((cache_root() / "builds" / commit / "artifacts.json").read_text())
        return {rel: digest for rel, digest, _ in recorded["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def from_objects(commit: str, files: dict[str, str], bin_names: list[str]) -> Artifacts | None:
    """The release of `commit` made of given bytes (release-relative path -> sha256) taken from the
    object store, laid out like a build's artifacts (binaries 0755, the rest 0644); None when the
    store lacks any of them. `sando promote` fetches the source's bytes there (issue 22.1)."""
    if not all(object_path(d).is_file() for d in files.values()):
        return None
    key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    out = cache_root() / "verified" / f"{commit}-{key}"
    with _Flock(out.with_suffix(".lock")):
        out.mkdir(parents=True, exist_ok=True)
        listed = []
        for rel, digest in sorted(files.items(), key=lambda kv: (kv[0] not in bin_names, kv[0])):
            mode = BIN_MODE if rel in bin_names else FILE_MODE
            dest = out / rel
            if not dest.is_file() or sha256_file(dest) != digest:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
                os.link(object_path(digest), tmp)  # a link: the store keeps the object while this holds it
                os.chmod(tmp, mode)
                os.replace(tmp, dest)
            listed.append((rel, digest, mode))
    os.utime(out)  # newest = last used, as a build's index
    prune_verified(keep_also=out.name)
    return Artifacts(str(out), tuple(listed))


def keep_builds() -> int:
    raw = os.environ.get("SANDO_KEEP_BUILDS", "")
    if not raw:
        return KEEP_BUILDS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"SANDO_KEEP_BUILDS: must be a whole number of builds, 1 or more, not {raw!r}")
    return int(raw)


def prune_builds(repo_id: str, keep_also: str = "", now: float | None = None) -> list[str]:
    """Remove all but the newest keep_builds() builds of one source repo (newest = last used),
    never one used in the last RECENT_SECONDS nor one another process holds locked; then the
    objects that no remaining build holds (an object is a hard link of a build's file: a link
    count of 1 means only the store has it). Returns the commits removed."""
    builds, now = cache_root() / "builds", time.time() if now is None else now
    mine = []
    for index in builds.glob("*/artifacts.json"):
        try:
            if json.loads(index.read_text()).get("repo") == repo_id:
                mine.append((index.stat().st_mtime, index.parent))
        except (OSError, ValueError):
            continue
    return _prune(mine, keep_also, now)


def prune_verified(keep_also: str = "", now: float | None = None) -> list[str]:
    """The promoted bytes (`<cache>/verified/`, from_objects) bounded as builds are: the newest
    keep_builds() of them, never one used in the last RECENT_SECONDS nor one locked; then the
    objects nothing holds. Returns the directory names removed."""
    now = time.time() if now is None else now
    held = [(d.stat().st_mtime, d) for d in (cache_root() / "verified").glob("*") if d.is_dir()]
    return _prune(held, keep_also, now)


def _prune(dirs: list[tuple[float, Path]], keep_also: str, now: float) -> list[str]:
    dirs.sort(reverse=True)
    removed = []
    for mtime, work in dirs[keep_builds():]:
        if work.name == keep_also or now - mtime < RECENT_SECONDS:
            continue
        lock = work.with_suffix(".lock")
        with open(lock, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built or read right now
            shutil.rmtree(work, ignore_errors=True)
        lock.unlink(missing_ok=True)
        removed.append(work.name)
    if removed:
        for obj in (cache_root() / "objects").glob("*/*"):
            try:
                if obj.stat().st_nlink == 1:
                    obj.unlink()
            except OSError:
                pass
    return removed


def _checkout(repo: Path, src: Path, commit: str, bin_dir: str) -> Path:
    """The shared build tree at exactly `commit`: tracked files as committed, untracked files gone
    except the build output directory (the parent of bin_dir, e.g. server/target). The tree is a
    repository of sando's own; the commit is fetched into it from the server repo, which is only
    read."""
    if (src / ".git").is_file():  # a worktree of the server repo (sando before 2026-12): unregister it
        (src / ".git").unlink()
        _git(repo, "worktree", "prune")
    if not (src / ".git").is_dir():
        src.mkdir(parents=True, exist_ok=True)
        res = _git(src, "init", "--quiet")
        if res.returncode != 0:
            raise BuildError(f"cannot make the build tree {src}: {res.stderr.strip()}")
    # the commit, and the server repo's tags as they are now (a build may run `git describe`)
    res = _git(src, "fetch", "--quiet", "--prune", "--no-write-fetch-head", str(repo), "+refs/tags/*:refs/tags/*",
               commit)
    if res.returncode != 0:
        raise BuildError(f"sando:source.repo: cannot fetch {commit[:12]} from {repo} into the build tree: "
                         f"{res.stderr.strip()}")
    res = _git(src, "checkout", "--force", "--detach", commit)
    if res.returncode != 0:
        raise BuildError(f"sando:source.repo: cannot check out {commit[:12]}: {res.stderr.strip()}")
    keep = os.path.dirname(bin_dir.rstrip("/"))
    clean = ["clean", "-ffdxq"] + (["-e", f"/{keep}/"] if keep else [])
    res = _git(src, *clean)
    if res.returncode != 0:  # leftover files must never end up in a release
        raise BuildError(f"cannot clean the build tree {src} before building {commit[:12]} "
                         f"(git clean: {res.stderr.strip()[-300:]}); remove {src} and run again")
    head = _git(src, "rev-parse", "HEAD").stdout.strip()
    if head != commit or _git(src, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise BuildError(f"the build tree {src} is not a clean checkout of {commit[:12]}")
    return src


class BuildError(OperatorError):
    pass


# cargo's progress bar (`Building [==>  ] 12/57: serde, tokio`), drawn also without a terminal when
# CARGO_TERM_PROGRESS_WHEN=always; and its plain `Compiling x v1.2.3` lines
_CARGO_BAR = re.compile(r"^\s*Building \[[^\]]*\]\s+(\d+)/(\d+): ([^,\s]+)")
_CARGO_LINE = re.compile(r"^\s*Compiling (\S+) v")


def build_progress(segment: str) -> str | None:
    """What the console says for one piece of the build's output: `Compiling x (n/N)`, else None."""
    bar = _CARGO_BAR.match(segment)
    if bar:
        return f"Compiling {bar.group(3)} ({bar.group(1)}/{bar.group(2)})"
    line = _CARGO_LINE.match(segment)
    return f"Compiling {line.group(1)}" if line else None


def _run_build(src: Path, build_command: str, commit: str, work: Path,
               progress: Callable[[str], None] | None = None) -> None:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    env = {**os.environ, "CARGO_TERM_PROGRESS_WHEN": "always", "CARGO_TERM_PROGRESS_WIDTH": "100"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(build_command, shell=True, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        pending = b""
        for data in iter(lambda: proc.stdout.read1(65536), b""):
            pending += data
            *segments, pending = re.split(rb"[\r\n]", pending)
            for raw in segments:
                segment = raw.decode(errors="replace")
                said = build_progress(segment)
                if said and progress is not None:
                    try:
                        progress(said)
                    except Exception:  # noqa: BLE001 - progress only
                        pass
                if segment.strip() and not _CARGO_BAR.match(segment):  # the log without the progress bar
                    fh.write(segment + "\n")
        if pending.strip():
            fh.write(pending.decode(errors="replace") + "\n")
        proc.wait()
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-3:]).strip()
        raise BuildError(f"sando:source.buildCommand exited {proc.returncode} building {commit[:12]} "
                         f"(full log: {log}); last lines:\n{tail}")


def _collect(src: Path, out: Path, bin_dir: str, error_pages_dir: str, bin_names: list[str]) -> Artifacts:
    missing = [b for b in bin_names if not (src / bin_dir / b).is_file()]
    if missing:
        raise BuildError(f"sando:binNames: {', '.join(missing)} not built: no such file in "
                         f"{bin_dir}/ after sando:source.buildCommand (check the names)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files: list[tuple[str, str, int]] = []

    def add(source: Path, rel: str, mode: int) -> None:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / rel)
        os.chmod(out / rel, mode)
        digest = sha256_file(out / rel)
        files.append((rel, digest, mode))
        obj = object_path(digest)
        if not obj.exists():
            obj.parent.mkdir(parents=True, exist_ok=True)
            tmp = obj.with_name(obj.name + f".tmp{os.getpid()}")
            os.link(out / rel, tmp)
            os.replace(tmp, obj)

    for b in bin_names:
        add(src / bin_dir / b, b, BIN_MODE)
    pages = src / error_pages_dir
    for p in sorted(pages.rglob("*")):
        if p.is_file():
            add(p, os.path.join(paths.ERROR_PAGES, str(p.relative_to(pages))), FILE_MODE)
    return Artifacts(str(out), tuple(files))
