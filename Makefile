# `make train`: set up what is missing (venv, install, MNIST) and run the default experiment.
# `make test`:  set up what is missing and run the whole test suite (what CI runs).
# `make test-fast`: the same without the tests marked slow (whole runs, subprocesses, multi-process jobs, long iterations).
# `make docs`: build the documentation site into site/ (mkdocs build --strict); `make docs-serve`: serve it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: train test test-fast data install docs docs-serve clean-venv

# setuptools prints a notice for every editable install of a package with mapped folders (configs/ is
# shipped as lifted_cli.configs); it is not a warning about this package, so it is filtered here
$(BIN)/lifted: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
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

docs: $(BIN)/lifted
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(BIN)/lifted
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean-venv:
	rm -rf $(VENV)
