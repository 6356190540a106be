# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/optical-jax demo --workdir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q -m "not slow"

clean:
	rm -rf $(VENV) runs
