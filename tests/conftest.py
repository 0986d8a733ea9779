import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # sando_components, tests.support


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long scenario (16 nodes); `make test` and CI run it, "
                                       "`make quick` leaves it out")
