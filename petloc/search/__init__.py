"""Keras Tuner sweeps: the search space as a HyperModel, tracked trials, and the sweep around them."""

# The chief's line when every trial has ended: the launcher of `--workers N` then waits for
# the end steps (final run, ensemble, promotion) instead of watching for gone workers.
SEARCH_OVER = "search over:"

# Where a sweep's chief listens for its workers unless told (kept here, free of TensorFlow, for `petloc --help`).
DEFAULT_CHIEF_ADDRESS = "127.0.0.1:8470"
