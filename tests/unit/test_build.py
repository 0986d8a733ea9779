"""sando_components/build.py with small local git repos: ref resolution, tree checks, and the
incremental build in one shared worktree per repo, at exactly the pinned commit, cached per commit,
every artifact filed in the object store by sha256. The cache root is SANDO_CACHE_DIR (conftest
points it into tmp_path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sando_components import build
from sando_components.build import BuildError
from sando_components.config import ConfigError
from sando_components.errors import OperatorError

from fakenode import sha
from unit_helpers import commit_all, git, init_repo

REPO = Path(__file__).resolve().parents[2]
BINS = ["makenotwork", "mnw-admin"]
# Builds into out/bin (binDir; out/ is the build output dir kept between builds). Logs one line per
# build to $LOG: the build tree, whether out/ still held the previous build's state file, whether
# the stray file a build leaves outside out/ was still there, and the README it saw.
BUILD = ("mkdir -p out/bin && "
         "{ printf '%s ' \"$PWD\"; [ -f out/state ] && printf 'incremental ' || printf 'clean '; "
         "[ -f stray ] && printf 'stray ' || printf 'no-stray '; cat README; } >> {log} && "
         "echo built > out/state && touch stray && echo scribble >> README && "
         "cp README out/bin/makenotwork && printf b > out/bin/mnw-admin")


@pytest.fixture
def repo(tmp_path) -> dict:
    """Commits c1 (tag v1, annotated tag v1-annotated) and c2 (main) of a server repo."""
    path = init_repo(tmp_path / "server repo")  # a space in the path on purpose
    pages = path / "deploy" / "error-pages"
    (pages / "sub").mkdir(parents=True)
    (pages / "404.html").write_text("<h1>404</h1>")
    (pages / "sub" / "502.html").write_text("<h1>502</h1>")
    (path / "README").write_text("server 1\n")
    c1 = commit_all(path, "one")
    git(path, "tag", "v1")
    git(path, "tag", "-a", "-m", "annotated", "v1-annotated")
    (path / "README").write_text("server 2\n")
    c2 = commit_all(path, "two")
    return {"path": path, "c1": c1, "c2": c2}


@pytest.fixture
def log(tmp_path) -> Path:
    return tmp_path / "build-log"


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def built(repo, commit, log, bins=BINS, command=None, bin_dir="out/bin"):
    return build.ensure_built(str(repo["path"]), commit, command or BUILD.replace("{log}", str(log)), bin_dir,
                              "deploy/error-pages", list(bins))


# --- resolve_commit / check_tree / read_tree -----------------------------------------------------


def test_resolve_commit_tag_sha(repo):
    p = str(repo["path"])
    assert build.resolve_commit(p, "v1") == repo["c1"]
    assert build.resolve_commit(p, "v1-annotated") == repo["c1"]  # peeled to the commit, not the tag object
    assert build.resolve_commit(p, repo["c1"]) == repo["c1"]
    assert build.resolve_commit(p, repo["c1"][:10]) == repo["c1"]


def test_a_branch_is_refused_with_the_commit_to_pin_instead(repo):
    """A release is immutable: a branch moves, so it would name another release next time."""
    p = str(repo["path"])
    with pytest.raises(ConfigError) as exc:
        build.resolve_commit(p, "main")
    assert str(exc.value) == (
        f"sando:version: 'main' is a branch of {p}; a release is immutable, so pin a tag or a commit (the branch "
        f"is at {repo['c2'][:12]}: `pulumi config set sando:version {repo['c2'][:12]}`, or tag it)")
    git(repo["path"], "tag", "main-tag", repo["c2"])
    assert build.resolve_commit(p, "main-tag") == repo["c2"]


@pytest.mark.parametrize("ref", ["nope", "v2", "0" * 40])
def test_resolve_commit_unknown_ref(repo, ref):
    with pytest.raises(ConfigError) as exc:
        build.resolve_commit(str(repo["path"]), ref)
    assert str(exc.value) == f"sando:version: {ref!r} is not a tag or commit of {repo['path']}"


def test_resolve_commit_tree_object_is_not_a_commit(repo):
    tree = git(repo["path"], "rev-parse", "v1^{tree}")
    with pytest.raises(ConfigError, match=r"^sando:version: "):
        build.resolve_commit(str(repo["path"]), tree)


def test_resolve_commit_not_a_repo_or_missing(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"^sando:source\.repo: .*not a git repository"):
        build.resolve_commit(str(plain), "v1")
    with pytest.raises(ConfigError, match=r"^sando:source\.repo: .*not a directory"):
        build.resolve_commit(str(tmp_path / "nowhere"), "v1")


def test_check_tree(repo):
    p = str(repo["path"])
    build.check_tree(p, repo["c1"], "deploy/error-pages", "source.errorPagesDir")  # no error
    with pytest.raises(ConfigError, match=r"^sando:source\.errorPagesDir: 'missing' is not a directory at commit "
                                          + repo["c1"][:12] + "$"):
        build.check_tree(p, repo["c1"], "missing", "source.errorPagesDir")
    with pytest.raises(ConfigError, match=r"^sando:source\.errorPagesDir: 'README'"):
        build.check_tree(p, repo["c1"], "README", "source.errorPagesDir")  # a file, not a dir


def test_check_tree_is_per_commit(repo):
    (repo["path"] / "later").mkdir()
    (repo["path"] / "later" / "x").write_text("x")
    c3 = commit_all(repo["path"], "three")
    build.check_tree(str(repo["path"]), c3, "later", "k")
    with pytest.raises(ConfigError, match=r"^sando:k: "):
        build.check_tree(str(repo["path"]), repo["c1"], "later", "k")


def test_list_tree_and_read_blobs(repo):
    p = str(repo["path"])
    names = build.list_tree(p, repo["c1"], "deploy/error-pages")
    assert set(names) == {"404.html"}  # files only, not the sub dir
    (repo["path"] / "deploy" / "error-pages" / "404.html").write_text("not committed")
    assert build.read_blobs(p, list(names.values())) == {names["404.html"]: "<h1>404</h1>"}
    assert build.list_tree(p, repo["c1"], "nope") == {} and build.read_blobs(p, []) == {}


# --- ensure_built ----------------------------------------------------------------------------------


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SANDO_CACHE_DIR", str(tmp_path / "env"))
    assert build.cache_root() == tmp_path / "env"
    monkeypatch.delenv("SANDO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "sando"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.cache_root() == tmp_path / "home" / ".cache" / "sando"


def test_files_digests_modes_and_object_store(repo, log):
    art = built(repo, repo["c1"], log)
    made = b"server 1\nscribble\n"
    assert art.files == (
        ("makenotwork", sha(made), 0o755),
        ("mnw-admin", sha(b"b"), 0o755),
        ("error-pages/404.html", sha(b"<h1>404</h1>"), 0o644),
        ("error-pages/sub/502.html", sha(b"<h1>502</h1>"), 0o644),
    )
    root = Path(art.root)
    assert root == build.cache_root() / "builds" / repo["c1"] / "artifacts"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(r for r, _, _ in art.files)
    for rel, digest, mode in art.files:
        data = (root / rel).read_bytes()
        assert sha(data) == digest and (root / rel).stat().st_mode & 0o777 == mode, rel
        assert build.object_path(digest).read_bytes() == data, rel  # filed by sha256
    assert art.sums() == "".join(f"{d}  {rel}\n" for rel, d, _ in art.files)
    assert art.size("makenotwork") == len(made)


def test_builds_are_incremental_in_one_shared_tree(repo, log):
    built(repo, repo["c1"], log)
    built(repo, repo["c2"], log)
    (first, second) = lines(log)
    tree1, tree2 = first.split()[0], second.split()[0]
    assert tree1 == tree2 and tree1.startswith(str(build.cache_root() / "trees"))
    assert first.split()[1:] == ["clean", "no-stray", "server", "1"]
    # out/ (the output dir, parent of binDir) survived; the stray file outside it and the
    # scribble on a tracked file did not: the tree is exactly commit c2
    assert second.split()[1:] == ["incremental", "no-stray", "server", "2"]


def test_build_is_of_the_pinned_commit_never_the_working_tree(repo, log):
    (repo["path"] / "README").write_text("uncommitted edit\n")
    (repo["path"] / "untracked.txt").write_text("operator's file")
    art = built(repo, repo["c1"], log)
    assert Path(art.root, "makenotwork").read_text() == "server 1\nscribble\n"
    assert not (repo["path"] / "out").exists()  # the operator's working tree is untouched
    assert (repo["path"] / "README").read_text() == "uncommitted edit\n"
    assert (repo["path"] / "untracked.txt").exists()


def test_each_commit_is_built_once(repo, log):
    first = built(repo, repo["c1"], log)
    assert built(repo, repo["c1"], log) == first
    built(repo, repo["c2"], log)
    built(repo, repo["c1"], log)
    built(repo, repo["c2"], log)
    assert len(lines(log)) == 2


def test_changed_build_settings_rebuild(repo, log):
    built(repo, repo["c1"], log)
    art = built(repo, repo["c1"], log, bins=["makenotwork"])
    assert len(lines(log)) == 2
    assert [rel for rel, _, _ in art.files] == ["makenotwork", "error-pages/404.html", "error-pages/sub/502.html"]


def test_lost_artifacts_are_rebuilt(repo, log):
    art = built(repo, repo["c1"], log)
    shutil.rmtree(art.root)
    again = built(repo, repo["c1"], log)
    assert len(lines(log)) == 2 and os.path.isfile(os.path.join(again.root, "makenotwork"))


def test_two_threads_build_two_commits_of_one_repo(repo, log):
    """They take turns in the shared tree; each gets its own commit's bytes."""
    cmd = BUILD.replace("{log}", str(log)).replace("cp README", "sleep 0.3 && cp README")
    results, errors = {}, []

    def one(commit):
        try:
            results[commit] = build.ensure_built(str(repo["path"]), commit, cmd, "out/bin", "deploy/error-pages", BINS)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in (repo["c1"], repo["c2"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Path(results[repo["c1"]].root, "makenotwork").read_text() == "server 1\nscribble\n"
    assert Path(results[repo["c2"]].root, "makenotwork").read_text() == "server 2\nscribble\n"
    assert len(lines(log)) == 2


def _blocked_on_flock(pid: int) -> bool:
    """The process waits for a flock (the kernel lists it in /proc/locks as a "->" waiter)."""
    return any(f[1] == "->" and f[2] == "FLOCK" and f[5] == str(pid)
               for f in (line.split() for line in Path("/proc/locks").read_text().splitlines()) if len(f) > 5)


def test_two_processes_take_turns_in_the_shared_tree(repo, log, tmp_path):
    """Two stacks building at once are two provider processes: the second one's build waits on the
    tree's flock until the first one's build ended (a lock of threads would not stop it)."""
    go = tmp_path / "go"
    cmd = (f'echo "start $TAG" >> {log}; until [ -e {go} ]; do sleep 0.05; done; echo "end $TAG" >> {log}; '
           "mkdir -p out/bin && cp README out/bin/makenotwork && printf b > out/bin/mnw-admin")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sando_components import build; "
            "build.ensure_built(sys.argv[2], sys.argv[3], sys.argv[4], 'out/bin', 'deploy/error-pages', "
            "['makenotwork', 'mnw-admin'])")

    def start(tag: str, commit: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code, str(REPO), str(repo["path"]), commit, cmd],
                                env={**os.environ, "TAG": tag})

    def until(fn, what: str):
        deadline = time.monotonic() + 30
        while not fn():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    a = start("a", repo["c1"])
    b = None
    try:
        until(lambda: lines(log) == ["start a"], "the first build started")
        b = start("b", repo["c2"])
        until(lambda: _blocked_on_flock(b.pid) or len(lines(log)) > 1, "the second process got to the lock")
        assert lines(log) == ["start a"]  # the second build did not begin while the first runs
        go.touch()
        assert a.wait(30) == 0 and b.wait(30) == 0
    finally:
        go.touch()
        for p in (a, b):
            if p and p.poll() is None:
                p.kill()
    assert lines(log) == ["start a", "end a", "start b", "end b"]
    assert (build.cache_root() / "builds" / repo["c2"] / "artifacts" / "makenotwork").read_text() == "server 2\n"


def test_failing_build_names_the_key_and_shows_the_log_tail(repo, log):
    cmd = "for i in $(seq 1 30); do echo line-$i; done; echo boom-on-stderr >&2; exit 3"
    with pytest.raises(BuildError) as exc:
        built(repo, repo["c1"], log, command=cmd)
    msg = str(exc.value)
    assert isinstance(exc.value, OperatorError)
    assert msg.startswith(f"sando:source.buildCommand exited 3 building {repo['c1'][:12]} (full log: ")
    assert msg.endswith("last lines:\nline-29\nline-30\nboom-on-stderr")
    log_path = build.cache_root() / "builds" / repo["c1"] / "build.log"
    assert str(log_path) in msg and "line-1\n" in log_path.read_text()
    # nothing was cached: a fixed command builds now
    art = built(repo, repo["c1"], log)
    assert len(lines(log)) == 1 and art.files[0][0] == "makenotwork"


def test_missing_binary_names_bin_names(repo, log):
    with pytest.raises(BuildError) as exc:
        built(repo, repo["c1"], log, bins=["makenotwork", "nope", "nada"])
    assert str(exc.value) == ("sando:binNames: nope, nada not built: no such file in out/bin/ after "
                              "sando:source.buildCommand (check the names)")


def test_the_server_repo_is_only_read(repo, log):
    """No worktree of sando's is registered in the operator's repo, and its config is untouched."""
    config = (repo["path"] / ".git" / "config").read_bytes()
    built(repo, repo["c1"], log)
    built(repo, repo["c2"], log)
    listed = git(repo["path"], "worktree", "list", "--porcelain")
    assert [line for line in listed.splitlines() if line.startswith("worktree ")] == [f"worktree {repo['path']}"]
    assert (repo["path"] / ".git" / "config").read_bytes() == config
    assert not (repo["path"] / ".git" / "worktrees").exists()


def test_a_build_tree_made_as_a_worktree_by_an_older_sando_is_taken_over(repo, log):
    tree = build.cache_root() / "trees" / build.hashlib.sha256(str(repo["path"].resolve()).encode()).hexdigest()[:16]
    tree.mkdir(parents=True)
    git(repo["path"], "worktree", "add", "--detach", str(tree / "src"), repo["c1"])
    (tree / "src" / "out").mkdir()
    (tree / "src" / "out" / "state").write_text("built")  # the kept build output of the old tree
    built(repo, repo["c2"], log)
    assert lines(log)[0].split()[1:] == ["incremental", "no-stray", "server", "2"]
    assert len(git(repo["path"], "worktree", "list", "--porcelain").split("worktree ")) == 2  # only the repo's own


def _commits(repo, n):
    out = []
    for i in range(n):
        (repo["path"] / "README").write_text(f"server extra {i}\n")
        out.append(commit_all(repo["path"], f"extra {i}"))
    return out


def test_the_cache_keeps_the_newest_builds_of_each_repo(repo, log, monkeypatch):
    monkeypatch.setenv("SANDO_KEEP_BUILDS", "2")
    monkeypatch.setattr(build, "RECENT_SECONDS", 0)
    commits = [repo["c1"], repo["c2"], *_commits(repo, 2)]
    arts = []
    for i, c in enumerate(commits):
        arts.append(built(repo, c, log))
        index = build.cache_root() / "builds" / c / "artifacts.json"
        os.utime(index, (1000 + i, 1000 + i))  # distinct "last used" times, oldest first
    left = sorted(p.name for p in (build.cache_root() / "builds").iterdir() if p.is_dir())
    assert left == sorted(commits[-2:])
    # objects of removed builds are gone; those of kept builds stay
    kept_digests = {d for a in arts[-2:] for _, d, _ in a.files}
    gone_digests = {d for a in arts[:2] for _, d, _ in a.files} - kept_digests
    assert gone_digests and all(not build.object_path(d).exists() for d in gone_digests)
    assert all(build.object_path(d).exists() for d in kept_digests)
    # a removed build is built again when asked for
    again = built(repo, commits[0], log)
    assert Path(again.root, "makenotwork").is_file() and len(lines(log)) == 5


def test_a_recently_used_build_is_never_pruned(repo, log, monkeypatch):
    monkeypatch.setenv("SANDO_KEEP_BUILDS", "1")
    for c in [repo["c1"], repo["c2"], *_commits(repo, 1)]:
        built(repo, c, log)
    assert len([p for p in (build.cache_root() / "builds").iterdir() if p.is_dir()]) == 3


def test_promoted_bytes_are_bounded_like_builds(monkeypatch):
    """`<cache>/verified/` (the source's bytes sando promote fetched) keeps the newest
    SANDO_KEEP_BUILDS too, and the objects only a removed one held go with it (issue 22.4)."""
    import hashlib

    monkeypatch.setenv("SANDO_KEEP_BUILDS", "2")
    monkeypatch.setattr(build, "RECENT_SECONDS", 0)
    made = []
    for i in range(3):
        files = {}
        for name in ("makenotwork", "error-pages/500.html"):
            data = f"{name} of promote {i}".encode()
            digest = hashlib.sha256(data).hexdigest()
            build.object_path(digest).parent.mkdir(parents=True, exist_ok=True)
            build.object_path(digest).write_bytes(data)
            files[name] = digest
        made.append((f"{i:040d}", files, build.from_objects(f"{i:040d}", files, ["makenotwork"])))
    left = sorted(p.name.split("-")[0] for p in (build.cache_root() / "verified").iterdir() if p.is_dir())
    assert left == [made[1][0], made[2][0]]
    assert not any(build.object_path(d).exists() for d in made[0][1].values())
    assert all(build.object_path(d).exists() for _, files, _ in made[1:] for d in files.values())
    assert Path(made[2][2].root, "makenotwork").read_bytes() == b"makenotwork of promote 2"


def test_keep_builds_is_checked(monkeypatch):
    monkeypatch.setenv("SANDO_KEEP_BUILDS", "zero")
    with pytest.raises(ConfigError, match="SANDO_KEEP_BUILDS: must be a whole number"):
        build.keep_builds()


def test_a_build_sees_the_server_repos_tags_as_they_are_now(repo, log):
    """Builds may embed `git describe` (the stand-in does): the build tree has the repo's tags."""
    cmd = "mkdir -p out/bin && git describe --tags --exact-match > out/bin/makenotwork && printf b > out/bin/mnw-admin"
    art = built(repo, repo["c1"], log, command=cmd)
    assert Path(art.root, "makenotwork").read_text().strip() in ("v1", "v1-annotated")
    git(repo["path"], "tag", "-d", "v1", "v1-annotated")
    git(repo["path"], "tag", "v1-moved", repo["c2"])
    art = built(repo, repo["c2"], log, command=cmd)
    assert Path(art.root, "makenotwork").read_text().strip() == "v1-moved"


FAILING_CLEAN = """#!/bin/sh
for a in "$@"; do
  if [ "$a" = clean ]; then echo "warning: failed to remove stray: Device or resource busy" >&2; exit 1; fi
done
exec {git} "$@"
"""


def test_a_failed_git_clean_stops_the_build(repo, log, tmp_path, monkeypatch):
    """A build tree git could not clean would build with leftover files: no build, a clear error."""
    built(repo, repo["c1"], log)  # the shared build tree exists, with a stray file in it
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "git").write_text(FAILING_CLEAN.replace("{git}", shutil.which("git")))
    (tools / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    with pytest.raises(BuildError, match=r"^cannot clean the build tree .* before building "
                                         + repo["c2"][:12] + r" \(git clean: warning: failed to remove stray"):
        built(repo, repo["c2"], log)
    assert len(lines(log)) == 1  # the second build never ran
