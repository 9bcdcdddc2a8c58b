# Every target creates or refreshes .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per extra: `make run` installs only what the API and the worker need
# (.[train]); test, lint and bench add the test and lint tools (.[dev]).
RUN_STAMP := $(VENV)/.installed-train
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: test test-deploy run lint bench clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The compose deployment on a real Docker engine (tests/deploy_engine, docs/deploy.md):
# installs Debian's docker.io and debootstrap when missing, needs root.
test-deploy: $(DEV_STAMP)
	command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap)
	$(BIN)/python -m pytest -m deploy_engine --timeout=5400 tests/deploy_engine $(PYTEST_ARGS)

run: $(RUN_STAMP)
	$(BIN)/hetserve up

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

bench: $(DEV_STAMP)
	$(BIN)/python bench/head_speed.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/export_speed.py

clean:
	rm -rf $(VENV) var .pytest_cache
