"""Keras Tuner sweeps: the search space as a HyperModel, tracked trials, and the sweep around them."""

# Where a sweep's chief listens for its workers unless told (kept here, free of TensorFlow, for `petloc --help`).
DEFAULT_CHIEF_ADDRESS = "127.0.0.1:8470"
