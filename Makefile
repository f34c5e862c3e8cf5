# Two commands on a fresh machine with Python 3.11 and make:
#   make run    sets up .venv, makes the synthetic data, runs the quick sweep
#   make test   sets up .venv and runs the fast tests
#   make lint   the house rules: ruff's lint and format, mypy on petloc
#   make docs   the documentation site (docs/, mkdocs.yml) into site/, strict: a broken link fails
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow lint docs setup clean bench bench-search

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,lint,postgres,docs,onnx]"
	touch $@

run: setup
	$(BIN)/petloc sweep experiments/quick.yaml

# Two test processes (pytest-xdist): much of a test's time is a subprocess importing
# TensorFlow, a server starting or a trial's tracking, which one core does while the other trains.
# A file's tests stay in one process in the fast tier (their module fixtures are sweeps).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-slow: setup
	$(BIN)/python -m pytest -m slow -n 2 --dist load

# petloc, tests and benchmarks at zero findings; what is checked is set in pyproject.toml.
# `ruff format .` then `ruff check --fix .` repair most of what this reports.
# All three run, so one look shows every finding.
lint: setup
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

# The site under docs/ into site/ (git-ignored). --strict: a broken link, a missing page or a
# warning fails it (docs/hooks.py adds the files outside docs/ that the pages link to).
docs: setup
	$(BIN)/mkdocs build --strict --quiet

# Speed figures, each a ratio measured side by side, written to benchmarks/RESULTS.md (about 12 minutes)
bench: setup
	$(BIN)/python benchmarks/startup_speed.py
	$(BIN)/python benchmarks/predict_speed.py
	$(BIN)/python benchmarks/precision_speed.py
	$(BIN)/python benchmarks/dilated_conv_speed.py
	$(BIN)/python benchmarks/pipeline_speed.py
	$(BIN)/python benchmarks/tracking_speed.py
	$(BIN)/python benchmarks/tracking_overlap.py
	$(BIN)/python benchmarks/tracking_load.py

# Longer: sweeps on the real photos (../shared/datasets/cats_dogs/train), Hyperband against
# random search (about 20 minutes), and sweep throughput with workers (about 8)
bench-search: setup
	$(BIN)/python benchmarks/search_speed.py
	$(BIN)/python benchmarks/sweep_workers.py

clean:
	rm -rf $(VENV) site data/synthetic data/.cache mlruns/mlflow.db mlruns/artifacts mlruns/tuner .ruff_cache .mypy_cache
