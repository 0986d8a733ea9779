# sando: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup test quick unit e2e demo bench clean
setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

quick: setup  # all but the slow scenarios (16 nodes); CI runs `make test`
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/app

e2e: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) scripts/bench.py

clean:
	-scripts/testnodes stop
	rm -rf .tools .venv .pulumi-state .cache
