# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test mutants install clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml tests/pip-build-constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=tests/pip-build-constraints.txt $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python -m tuner.search --widths 1,4,10

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Plausible science bugs, one at a time in a copy of the checkout: the fast tests must fail on each.
mutants: $(INSTALLED)
	$(BIN)/python tests/mutants.py

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache
