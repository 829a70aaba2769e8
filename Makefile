# The two commands of README.rst: `make demo` and `make test`.
# Each creates the virtualenv and installs Consul (into .tools/) if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: services venv consul demo test test-all chaos lint typecheck docs bench bench-quick clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,docs,bench]'
	touch $(STAMP)

venv: $(STAMP)

consul:
	@scripts/install-consul >/dev/null

demo: venv consul
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/consul-leader demo

# Redis (for the Celery beat tests) comes from Debian's packages when missing.
services:
	@if [ -x scripts/install-redis ]; then scripts/install-redis >/dev/null; fi

test: venv consul services lint
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m pytest $(PYTEST_ARGS)

chaos: venv consul
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m pytest -m chaos -s tests/chaos $(PYTEST_ARGS)

bench: venv consul
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m benchmarks.run

bench-quick: venv consul
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m benchmarks.run --quick

lint: venv
	$(BIN)/ruff check consul_leader tests benchmarks
	$(BIN)/mypy

docs: venv
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .tools docs/_build .pytest_cache .mypy_cache
