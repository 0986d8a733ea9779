"""sando_components/build.py with a tiny local git repo: ref resolution, tree checks, the cached build."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sando_components import build
from sando_components.config import ConfigError

from unit_helpers import commit_all, git, init_repo

BUILD = "mkdir -p out && printf a > out/makenotwork && printf b > out/mnw-admin && echo run >> {counter}"
BINS = ["makenotwork", "mnw-admin"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def repo(tmp_path) -> dict:
    """A repo with two commits: tag v1 (lightweight), tag v1-annotated, branch main ahead at v2."""
    path = init_repo(tmp_path / "server repo")  # a space in the path on purpose
    pages = path / "deploy" / "error-pages"
    pages.mkdir(parents=True)
    (pages / "404.html").write_text("<h1>404</h1>")
    (pages / "502.html").write_text("<h1>502</h1>")
    (path / "README").write_text("server\n")
    c1 = commit_all(path, "one")
    git(path, "tag", "v1")
    git(path, "tag", "-a", "-m", "annotated", "v1-annotated")
    (path / "README").write_text("server 2\n")
    c2 = commit_all(path, "two")
    return {"path": path, "c1": c1, "c2": c2}


@pytest.fixture
def counter(tmp_path) -> Path:
    return tmp_path / "build-runs"


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def built(repo, commit, counter, tmp_path, bins=BINS, command=None, cache="cache"):
    return build.ensure_built(str(repo["path"]), commit, command or BUILD.format(counter=counter), "out",
                              "deploy/error-pages", list(bins), str(tmp_path / cache))


# --- resolve_commit / check_tree ----------------------------------------------------------------


def test_resolve_commit_tag_branch_sha(repo):
    p = str(repo["path"])
    assert build.resolve_commit(p, "v1") == repo["c1"]
    assert build.resolve_commit(p, "v1-annotated") == repo["c1"]  # peeled to the commit, not the tag object
    assert build.resolve_commit(p, "main") == repo["c2"]
    assert build.resolve_commit(p, repo["c1"]) == repo["c1"]
    assert build.resolve_commit(p, repo["c1"][:10]) == repo["c1"]


@pytest.mark.parametrize("ref", ["nope", "v2", "0" * 40])
def test_resolve_commit_unknown_ref(repo, ref):
    with pytest.raises(ConfigError) as exc:
        build.resolve_commit(str(repo["path"]), ref)
    assert str(exc.value).startswith("sando:version: ")
    assert ref in str(exc.value)


def test_resolve_commit_tree_object_is_not_a_commit(repo):
    tree = git(repo["path"], "rev-parse", "v1^{tree}")
    with pytest.raises(ConfigError, match=r"^sando:version: "):
        build.resolve_commit(str(repo["path"]), tree)


def test_resolve_commit_not_a_repo(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"^sando:source\.repo: .*not a git repository"):
        build.resolve_commit(str(plain), "v1")


def test_resolve_commit_missing_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"^sando:source\.repo: .*not a directory"):
        build.resolve_commit(str(tmp_path / "nowhere"), "v1")


def test_check_tree(repo):
    p = str(repo["path"])
    build.check_tree(p, repo["c1"], "deploy/error-pages", "source.errorPagesDir")  # no error
    with pytest.raises(ConfigError, match=r"^sando:source\.errorPagesDir: 'missing' is not a directory"):
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


# --- ensure_built ------------------------------------------------------------------------------


def test_ensure_built_files_digests_and_modes(repo, counter, tmp_path):
    art = built(repo, repo["c1"], counter, tmp_path)
    assert runs(counter) == 1
    assert art.files == (
        ("makenotwork", sha(b"a"), 0o755),
        ("mnw-admin", sha(b"b"), 0o755),
        ("error-pages/404.html", sha(b"<h1>404</h1>"), 0o644),
        ("error-pages/502.html", sha(b"<h1>502</h1>"), 0o644),
    )
    root = Path(art.root)
    assert (root / "makenotwork").read_bytes() == b"a"
    assert (root / "mnw-admin").read_bytes() == b"b"
    assert (root / "error-pages" / "502.html").read_text() == "<h1>502</h1>"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        rel for rel, _, _ in art.files)
    assert art.sums() == "".join(f"{d}  {rel}\n" for rel, d, _ in art.files)
    assert art.bin_sha256(BINS) == {"makenotwork": sha(b"a"), "mnw-admin": sha(b"b")}


def test_build_runs_in_a_worktree_of_the_commit(repo, counter, tmp_path):
    cmd = BUILD.format(counter=counter) + " && cp README out/makenotwork"
    art = built(repo, repo["c1"], counter, tmp_path, command=cmd)
    assert Path(art.root, "makenotwork").read_text() == "server\n"  # v1's README, not the working tree's
    assert not (repo["path"] / "out").exists()  # the developer's working tree is untouched


def test_second_call_reuses_the_cache(repo, counter, tmp_path):
    first = built(repo, repo["c1"], counter, tmp_path)
    second = built(repo, repo["c1"], counter, tmp_path)
    assert runs(counter) == 1
    assert second == first


def test_each_commit_is_built_once(repo, counter, tmp_path):
    built(repo, repo["c1"], counter, tmp_path)
    built(repo, repo["c2"], counter, tmp_path)
    built(repo, repo["c1"], counter, tmp_path)
    built(repo, repo["c2"], counter, tmp_path)
    assert runs(counter) == 2


def test_cache_dir_from_env(repo, counter, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDO_CACHE_DIR", str(tmp_path / "envcache"))
    assert build.default_cache_dir() == str(tmp_path / "envcache" / "builds")
    art = build.ensure_built(str(repo["path"]), repo["c1"], BUILD.format(counter=counter), "out",
                             "deploy/error-pages", BINS)
    assert art.root.startswith(str(tmp_path / "envcache" / "builds" / repo["c1"]))


def test_missing_binary_names_bin_names(repo, counter, tmp_path):
    with pytest.raises(RuntimeError) as exc:
        built(repo, repo["c1"], counter, tmp_path, bins=["makenotwork", "nope"])
    assert "sando:binNames" in str(exc.value) and "'nope'" in str(exc.value)


def test_failing_build_reports_log_tail(repo, counter, tmp_path):
    cmd = "for i in $(seq 1 30); do echo line-$i; done; echo boom-on-stderr >&2; exit 3"
    with pytest.raises(RuntimeError) as exc:
        built(repo, repo["c1"], counter, tmp_path, command=cmd)
    msg = str(exc.value)
    assert "exited 3" in msg and "sando:source.buildCommand" in msg
    assert "boom-on-stderr" in msg and "line-30" in msg
    assert "line-5\n" not in msg  # only the tail
    # nothing was cached: a fixed command builds now
    art = built(repo, repo["c1"], counter, tmp_path)
    assert runs(counter) == 1 and art.files[0][0] == "makenotwork"


def test_changed_build_settings_rebuild(repo, counter, tmp_path):
    built(repo, repo["c1"], counter, tmp_path)
    art = built(repo, repo["c1"], counter, tmp_path, bins=["makenotwork"])
    assert runs(counter) == 2
    assert [rel for rel, _, _ in art.files] == ["makenotwork", "error-pages/404.html", "error-pages/502.html"]


def test_lost_artifacts_are_rebuilt(repo, counter, tmp_path):
    import shutil

    art = built(repo, repo["c1"], counter, tmp_path)
    shutil.rmtree(art.root)
    again = built(repo, repo["c1"], counter, tmp_path)
    assert runs(counter) == 2 and os.path.isfile(os.path.join(again.root, "makenotwork"))
