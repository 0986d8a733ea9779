"""`make test` runs pytest-xdist workers side by side: each worker's test-node sets start in a share
of the subnets of its own (tests/support.first_offset), so that workers do not all try the same
subnets first (a collision is still safe: testnodes refuses a busy subnet and TestNodes shifts)."""

from tests import support
from tests.support import first_offset


def test_one_process_starts_at_the_configured_offset():
    assert first_offset(250, {}) == 10
    assert first_offset(250, {"SANDO_TESTNODES_OFFSET": "40"}) == 40
    assert first_offset(250, {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"}) == 10


def test_each_worker_starts_in_a_share_of_its_own():
    for count in (2, 3, 4, 8):
        env = {"PYTEST_XDIST_WORKER_COUNT": str(count)}
        starts = [first_offset(250, {**env, "PYTEST_XDIST_WORKER": f"gw{k}"}) for k in range(count)]
        share = (250 - 10) // count
        assert starts == [10 + k * share for k in range(count)]
        assert share >= 16  # a 16-node scenario fits in one share
        assert starts[-1] + 16 <= support.TestNodes.MAX_N
