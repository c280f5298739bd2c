# `make train`: set up what is missing (venv, install, MNIST) and run the default experiment.
# `make test`:  set up what is missing and run the whole test suite (what CI runs).
# `make test-fast`: the same without the tests marked slow (end-to-end runs, long iterations), about a minute.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: train test test-fast data install clean-venv

$(BIN)/lifted: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/lifted

install: $(BIN)/lifted

data: $(BIN)/lifted
	$(BIN)/lifted data

train: data
	$(BIN)/lifted train $(ARGS)

test: $(BIN)/lifted
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(BIN)/lifted
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

clean-venv:
	rm -rf $(VENV)
