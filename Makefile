# Two commands on a fresh machine with Python 3.11 and make:
#   make run    sets up .venv, makes the synthetic data, runs the quick sweep
#   make test   sets up .venv and runs the fast tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(BIN)/petloc sweep experiments/quick.yaml

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) data/synthetic data/.cache mlruns/mlflow.db mlruns/artifacts mlruns/tuner
