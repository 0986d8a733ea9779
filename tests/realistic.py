"""The realistic makenotwork fixture (examples/realistic) as a git repo, for the bench.

    repo = make_realistic_repo(tmp / "mnw")   # server/ (tokio, axum, sqlx) + the stand-in's
                                              # server/deploy/, committed and tagged v1
    bump(repo, "v2")                          # one-line change (server/src/lib.rs LABEL),
                                              # committed and tagged v2 -> its commit

Every version builds with sando's default build command
`cargo build --release --manifest-path server/Cargo.toml` into server/target/release/
(makenotwork, mnw-admin). A cold build takes about two minutes on 2 cores: bench only,
never on the tests' fast path. stdlib only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REALISTIC = REPO / "examples" / "realistic" / "server"
STAND_IN_DEPLOY = REPO / "examples" / "makenotwork" / "server" / "deploy"
LABEL_FILE = Path("server") / "src" / "lib.rs"
LABEL_LINE = re.compile(r'^pub const LABEL: &str = ".*";$', re.M)
TAG_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
BUILD_COMMAND = ["cargo", "build", "--release", "--manifest-path", "server/Cargo.toml"]
BIN_NAMES = ["makenotwork", "mnw-admin"]


def git(repo: Path, *args: str) -> str:
    p = subprocess.run(["git", "-c", "user.name=sando-test", "-c", "user.email=test@sando.local",
                        "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-C", str(repo), *args],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _commit_tag(repo: Path, tag: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", tag)
    git(repo, "tag", tag)
    return git(repo, "rev-parse", f"{tag}^{{commit}}").strip()


def make_realistic_repo(path: str | Path) -> Path:
    """Assemble a git repo at `path` (must not exist or be empty): examples/realistic/server
    (without target/) plus the stand-in's server/deploy/ (Caddyfile, unit, error pages, ...),
    copied now rather than duplicated in the fixture; commit it and tag v1. Returns the path."""
    repo = Path(path).resolve()
    if repo.exists() and any(repo.iterdir()):
        raise FileExistsError(f"{repo} exists and is not empty")
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REALISTIC, repo / "server", ignore=shutil.ignore_patterns("target"))
    shutil.copytree(STAND_IN_DEPLOY, repo / "server" / "deploy")
    (repo / ".gitignore").write_text("server/target/\n")
    git(repo, "init", "-q", "-b", "main")
    _commit_tag(repo, "v1")
    return repo


def bump(repo: str | Path, tag: str) -> str:
    """Make a new version: change the one line `pub const LABEL: &str = "...";` in
    server/src/lib.rs to `tag` (served by GET / as "label"), commit, tag `tag`.
    Returns the new commit."""
    if not TAG_OK.match(tag):
        raise ValueError(f"bad tag {tag!r}: letters, digits, '.', '_', '+', '-' (max 64)")
    repo = Path(repo)
    src = repo / LABEL_FILE
    text = src.read_text()
    new, n = LABEL_LINE.subn(f'pub const LABEL: &str = "{tag}";', text)
    if n != 1:
        raise RuntimeError(f"{src}: expected exactly one LABEL line, found {n}")
    if new == text:
        raise RuntimeError(f"{src}: LABEL is already {tag!r}")
    src.write_text(new)
    return _commit_tag(repo, tag)


def build(repo: str | Path, env: dict[str, str] | None = None, timeout: float = 1800) -> list[Path]:
    """Run sando's default build command in `repo`; returns the two binaries' paths."""
    repo = Path(repo)
    p = subprocess.run(BUILD_COMMAND, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(BUILD_COMMAND)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return [repo / "server" / "target" / "release" / b for b in BIN_NAMES]
