"""Keras Tuner searches, tracked: `TrackedTuner` for any HyperModel (tracked.py), and petloc's
own sweep on it (its space as a HyperModel, its trials, its chief and workers)."""

# The chief's line when every trial has ended: the launcher of `--workers N` then waits for
# the end steps (final run, ensemble, promotion) instead of watching for gone workers.
SEARCH_OVER = "search over:"

# Where a sweep's chief listens for its workers unless told (kept here, free of TensorFlow, for `petloc --help`).
DEFAULT_CHIEF_ADDRESS = "127.0.0.1:8470"
