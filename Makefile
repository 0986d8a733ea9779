# sando: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
# make test/quick/e2e run the tests in parallel pytest-xdist workers (most of an e2e test's time is
# spent waiting on real-systemd test nodes and the engine, so two workers keep 2 cores busy).
# Each worker has its own --basetemp subdir (engine state, build cache, node state dirs) and its
# own share of test-node subnets (tests/support.first_offset). WORKERS=0 runs in one process.
# --dist load --maxschedchunk 1: each worker holds at most two queued tests and takes the next
# in collection order as it gets free, so the slow e2e tests (collected first) are shared out
# rather than sent in one first chunk to one worker, and a worker's tests of one module keep
# their order (tests/harness/test_testnodes.py stops its module's nodes in its last test;
# worksteal could hand that worker an earlier test of the module afterwards).
WORKERS ?= 2
XDIST := -n $(WORKERS) --dist load --maxschedchunk 1

.PHONY: setup test quick unit e2e demo bench clean
setup:
	@bash scripts/setup.sh

test: setup  # --durations: the slowest tests, for keeping `make test` under ~25 min
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) --durations=15 tests

quick: setup  # all but the slow scenarios (16 nodes); CI runs `make test`
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow" tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/app

e2e: setup
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) tests/e2e

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) scripts/bench.py

clean:
	-scripts/testnodes stop
	rm -rf .tools .venv .pulumi-state .cache
