"""Fixtures of the end-to-end tests: real sshd test nodes, the stand-in app at real
commits, and uuid-named sando stacks driven through the real pulumi engine."""

from __future__ import annotations

import pytest

from tests.support import AppRepo, Deploy, TestNodes, engine_env


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
