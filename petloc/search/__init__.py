"""Keras Tuner sweeps: the search space as a HyperModel, tracked trials, and the sweep around them."""
