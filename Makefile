# Every target creates or refreshes .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per extra: `make run` installs only what the API and the worker need
# (.[train]); test and lint add the test and lint tools (.[dev]); bench adds .[bench].
RUN_STAMP := $(VENV)/.installed-train
DEV_STAMP := $(VENV)/.installed-dev
# mypy's scope: every package (the API, the worker, the training code, core, the client).
MYPY_PATHS := app worker models core hetserve

.PHONY: test test-deploy run lint bench clean

$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

# The static checks (make lint) run first, so CI (.ci/run calls make test) enforces them.
test: $(DEV_STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The deployment checks (docs/deploy.md): the compose stack on a real Docker engine
# (tests/deploy_engine) and the API image's dependency set in a fresh venv;
# installs Debian's docker.io and debootstrap when missing, needs root.
test-deploy: $(DEV_STAMP)
	command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap)
	$(BIN)/python -m pytest -m deploy_engine --timeout=5400 tests/deploy_engine \
	  tests/deploy/test_api_image_venv.py $(PYTEST_ARGS)

run: $(RUN_STAMP)
	$(BIN)/hetserve up

# Lint, format, the import contracts (.importlinter) and the types (pyproject's [tool.mypy]).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy $(MYPY_PATHS)

# .[bench] adds cleanlab (AGPL-3.0: a benchmark reference only, never a service dependency).
# head_speed.py installs its edward2 anchor (TensorFlow 2.18) into var/bench-venvs/edward2 on
# first use: bench only, nothing in `make test` needs it.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/head_speed.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/export_speed.py
	$(BIN)/python bench/noise_free_speed.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .import_linter_cache
