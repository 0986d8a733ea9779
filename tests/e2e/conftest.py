"""Fixtures of the end-to-end tests: real sshd test nodes, the stand-in app at real
commits, and uuid-named sando stacks driven through the real pulumi engine."""

from __future__ import annotations

import io
import os

import pytest

from tests.support import TOOLS, AppRepo, Deploy, TestNodes, engine_env


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    return engine_env(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    """The stand-in at v1 (more versions are made by the tests that need them)."""
    return AppRepo(tmp_path_factory.mktemp("app") / "makenotwork")


@pytest.fixture
def make_nodes(tmp_path):
    started = []

    def make(count: int = 1, token: str | None = None):
        nodes = TestNodes(count, tmp_path / f"nodes{len(started)}", token)
        started.append(nodes)
        nodes.share_key()
        return nodes.nodes

    yield make
    for n in started:
        n.stop()


@pytest.fixture
def make_deploy(tmp_path, engine, app):
    made = []

    def make(nodes, repo: AppRepo | None = None, project=None, **config) -> Deploy:
        d = Deploy(tmp_path, engine, nodes, repo or app, project=project)
        if config:
            d.set(**config)
        made.append(d)
        return d

    yield make
    failures = []
    for d in made:
        try:
            d.destroy()
        except Exception as exc:  # every stack is tried; then the test fails loudly
            failures.append(f"{d.name}: {exc}")
    if failures:
        pytest.fail("stack teardown failed (a stack or its state leaked):\n" + "\n".join(failures))


class Tty(io.StringIO):
    """A stderr that says it is a terminal (sando's countdown, promote's question)."""

    def isatty(self):
        return True


@pytest.fixture
def sando(monkeypatch, engine):
    """`sando ...` as an operator runs it: the engine's environment, the project dir as cwd.
    run.out, run.err: stdout alone (--json), stderr alone."""
    from sando_components import cli

    for k, v in engine.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{TOOLS / 'bin'}:{os.environ['PATH']}")

    def run(project, *argv, tty: bool = False) -> tuple[int, str]:
        out, err = io.StringIO(), (Tty() if tty else io.StringIO())
        code = cli.main(["--cwd", str(project), *argv], out=out, err=err, stdin=io.StringIO())
        run.out, run.err = out.getvalue(), err.getvalue()
        return code, out.getvalue() + err.getvalue()
    return run
