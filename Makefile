# Two commands on a fresh machine with Python 3.11 and make:
#   make run    sets up .venv, makes the synthetic data, runs the quick sweep
#   make test   sets up .venv and runs the fast tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow setup clean bench bench-search

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
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
	rm -rf $(VENV) data/synthetic data/.cache mlruns/mlflow.db mlruns/artifacts mlruns/tuner
