# The two commands of README.rst: `make demo` and `make test`.
# Each creates the virtualenv and installs Consul (into .tools/) if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
# pip's output goes to this file; a failed install prints it.
PIPLOG := $(VENV)/pip.log

# The version matrix (tox.ini). `make test` runs lint, mypy and the full suite
# in .venv, then the tox environments of the other Pythons and `lowest`.
# pyenv's interpreters join PATH so that tox finds python3.10 ... python3.13.
# `make test MATRIX=` skips the matrix; `make matrix MATRIX=py313` runs one.
empty :=
space := $(empty) $(empty)
comma := ,
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.1[0-9]*/bin)
MATRIX_PATH := $(subst $(space),:,$(strip $(PYENV_BINS) $$PATH))
VENV_ENV := $(shell $(PYTHON) -c 'import sys; print("py%d%d" % sys.version_info[:2])' 2>/dev/null)
CONSUL_CASES := consul-python-consul consul-python-consul2 consul-py-consul \
	consul-python-consul2-over-py-consul consul-py-consul-over-python-consul2
MATRIX ?= $(filter-out $(VENV_ENV),py310 py311 py312 py313) lowest django-newest $(CONSUL_CASES)

.PHONY: services venv consul demo test matrix test-all chaos findings simulate lint typecheck docs bench bench-quick clean

# The contributors' tools are in requirements/ (dev.txt: test, docs, bench
# and tox), not among the package's extras.
$(STAMP): setup.cfg setup.py pyproject.toml $(wildcard requirements/*.txt)
	@echo "installing consul-leader and requirements/dev.txt (tests, docs, benchmarks, tox) into $(VENV) (log: $(PIPLOG))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check -e . -r requirements/dev.txt >$(PIPLOG) 2>&1 \
		|| { cat $(PIPLOG); exit 1; }
	@touch $(STAMP) $(DEMO_STAMP)

# The demo needs the package alone (no requirements file): one line of setup output.
$(DEMO_STAMP): setup.cfg setup.py pyproject.toml
	@echo "installing consul-leader into $(VENV) (log: $(PIPLOG))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check -e . >$(PIPLOG) 2>&1 || { cat $(PIPLOG); exit 1; }
	@touch $(DEMO_STAMP)

venv: $(STAMP)

consul:
	@scripts/install-consul >/dev/null

demo: $(DEMO_STAMP)
	@if [ -z "$${CONSUL_BIN:-}" ] && ! command -v consul >/dev/null && [ ! -x .tools/bin/consul ]; then \
		echo "fetching Consul 1.8.7 (Debian's package) into .tools/"; fi
	@consul=$$(scripts/install-consul 2>$(VENV)/install-consul.log) || { cat $(VENV)/install-consul.log; exit 1; }; \
		CONSUL_BIN=$$consul $(BIN)/consul-leader demo

# Redis (for the Celery beat tests) comes from Debian's packages when missing.
services:
	@if [ -x scripts/install-redis ]; then scripts/install-redis >/dev/null; fi
	@if [ -x scripts/install-postgresql ]; then scripts/install-postgresql >/dev/null; fi

test: venv consul services lint
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(if $(strip $(MATRIX)),@$(MAKE) --no-print-directory matrix)

matrix: venv consul services
	PATH="$(MATRIX_PATH)" CONSUL_BIN=$$(scripts/install-consul) $(BIN)/tox run-parallel --parallel-no-spinner -p 2 -e $(subst $(space),$(comma),$(strip $(MATRIX)))

# The long chaos run: CHAOS_DURATION seconds of faults (CHAOS_SEED replays a
# run's faults). As root on Linux the agents run on hosts of their own and
# network partitions are among the faults; elsewhere the run says it left
# them out. CHAOS_KEEP=1 keeps the processes' logs of a run that passed.
CHAOS_DURATION ?= 600
chaos: venv consul
	CHAOS_DURATION=$(CHAOS_DURATION) CONSUL_BIN=$$(scripts/install-consul) \
		$(BIN)/python -m pytest -m chaos -s tests/chaos/test_chaos.py $(PYTEST_ARGS)

# Open findings: tests that show a problem not fixed yet; each fails until it is.
findings: venv consul services
	CONSUL_BIN=$$(scripts/install-consul) $(BIN)/python -m pytest -m open_finding tests/findings $(PYTEST_ARGS)

# Deterministic simulation (docs/simulation.rst): SEEDS fault schedules of
# a few simulated minutes each, from random seed SEED_START on, on two
# processes; ends with its rate, "N schedules per minute". SIM_ARGS adds
# options (e.g. --mutation NAME; --seed N replays one schedule).
SEEDS ?= 1000
SEED_START ?= 0
simulate: venv
	$(BIN)/python -m consul_leader.testing.sim --seeds $(SEEDS) --start $(SEED_START) --jobs 2 $(SIM_ARGS)

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
	rm -rf $(VENV) .tox .tools docs/_build .pytest_cache .mypy_cache build dist
