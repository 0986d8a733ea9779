import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # sando_components, tests.support


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long scenario (16 nodes); `make test` and CI run it, "
                                       "`make quick` leaves it out")
    if not hasattr(config, "workerinput"):
        # this session's own connection keeper and provider zygote (each is named after its setting),
        # so that another test session of this user (a CI run beside a developer's) neither shares
        # them nor ends them; the xdist workers and every engine run inherit these
        import os

        os.environ.setdefault("SANDO_SSH_PERSIST", str(600 + os.getpid() % 3000))
        os.environ.setdefault("SANDO_KEEP_WARM", str(600 + os.getpid() % 3000))


def pytest_unconfigure(config):
    """The whole run is over (the controller, not an xdist worker): end the connection keepers and
    the provider zygotes the tests' runs started (sando_components/keeper.py,
    engine/bin/sando-provider-host.py), instead of leaving them to idle out after SANDO_SSH_PERSIST
    and SANDO_KEEP_WARM seconds: a CI job is then done when its tests are."""
    if hasattr(config, "workerinput"):
        return
    from sando_components import keeper
    from tests.support import provider_host

    host = provider_host()
    keeper.stop_all(persist=keeper.persist_seconds())
    host.stop_all(warm=host.zy.warm_seconds())
